"""The release control plane: registry, intake, bus, controller, gates, promotion, router, CLI."""
