"""Adapters: one module per concrete backend of a port. Cloud SDKs are imported here and nowhere else."""
