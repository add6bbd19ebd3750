"""SagePorts: free ports chosen at run time, recorded so engines and gateways can find each other."""

from __future__ import annotations

import socket


class SagePorts:
    """Hands out ports the OS reports free on ``host``; nothing in sagellm hard-codes a port."""

    @staticmethod
    def allocate(host: str = "127.0.0.1") -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
            return sock.getsockname()[1]

    @staticmethod
    def resolve(port: int, host: str = "127.0.0.1") -> int:
        """``port`` itself, or a free one when it is 0."""
        if port < 0 or port > 65535:
            raise ValueError(f"port must be 0 (choose a free one) or 1..65535, got {port}")
        return port or SagePorts.allocate(host)
