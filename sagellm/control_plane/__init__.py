"""Control plane: engine registry, routing across engines, ports."""
