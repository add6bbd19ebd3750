"""Transport backends (see ``sagellm.comm_backend.engine.TRANSPORTS``)."""
