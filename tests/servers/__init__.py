"""Local servers that speak the protocols we integrate with, for tests and benchmarks."""
