"""``PDConfig``: an engine's part in prefill/decode (PD) disaggregation (file < ``SAGELLM_*`` env < flag).

``role``:

- ``both`` (default): an ordinary engine; prefills and decodes its own requests.
- ``prefill``: keeps the KV of every finished sequence's full blocks in a transfer buffer
  (``pd_buffer_gib``, shared memory) and serves it on ``pd_listen`` to decode engines.
- ``decode``: before prefilling a request, asks the prefill engines in ``pd_peers`` for the
  KV of its prompt's full blocks (by chained content hash, tokens verified, every chunk
  checksummed) and computes only the rest; waits up to ``pd_wait_s`` for KV a peer is still
  computing.

The server hands it to the engine process through these variables (:func:`to_environment`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PD_ROLES: tuple[str, ...] = ("both", "prefill", "decode")
DEFAULT_LISTEN = "127.0.0.1:0"


@dataclass(frozen=True)
class PDConfig:
    role: str = field(default="both", metadata={"help": "prefill/decode disaggregation role: both (colocated), prefill, decode"})
    pd_listen: str = field(
        default=DEFAULT_LISTEN,
        metadata={"help": "prefill role: HOST:PORT of the KV transfer server decode engines pull from (port 0: a free one, logged)"},
    )
    pd_peers: tuple[str, ...] = field(
        default=(), metadata={"help": "decode role: HOST:PORT of the prefill engines' KV transfer servers (comma-separated)"}
    )
    pd_buffer_gib: float = field(default=1.0, metadata={"help": "prefill role: GiB of shared memory holding exported KV blocks"})
    pd_wait_s: float = field(
        default=2.0, metadata={"help": "decode role: seconds a KV lookup may wait for blocks a prefill engine is still computing"}
    )

    def __post_init__(self) -> None:
        from sagellm.comm_backend.protocol import parse_address

        owner = type(self).__name__
        if self.role not in PD_ROLES:
            raise ValueError(f"{owner}.role: got {self.role!r}; accepted: one of {', '.join(PD_ROLES)}")
        object.__setattr__(self, "pd_peers", tuple(p.strip() for p in self.pd_peers if p.strip()))
        try:
            parse_address(self.pd_listen)
        except ValueError:
            # port 0 is allowed here (a free port)
            host, sep, port = str(self.pd_listen).rpartition(":")
            if not (sep and host and port == "0"):
                raise ValueError(f"{owner}.pd_listen: got {self.pd_listen!r}; accepted: HOST:PORT (port 0: a free one)") from None
        for peer in self.pd_peers:
            try:
                parse_address(peer)
            except ValueError:
                raise ValueError(f"{owner}.pd_peers: got {peer!r}; accepted: HOST:PORT of a prefill engine's KV transfer server") from None
        if self.role == "decode" and not self.pd_peers:
            raise ValueError(f"{owner}.pd_peers: the decode role needs at least one prefill engine (--pd-peers HOST:PORT)")
        if isinstance(self.pd_buffer_gib, bool) or not isinstance(self.pd_buffer_gib, (int, float)) or not self.pd_buffer_gib > 0:
            raise ValueError(f"{owner}.pd_buffer_gib: got {self.pd_buffer_gib!r}; accepted: a number of GiB > 0")
        if isinstance(self.pd_wait_s, bool) or not isinstance(self.pd_wait_s, (int, float)) or not 0 <= self.pd_wait_s <= 60:
            raise ValueError(f"{owner}.pd_wait_s: got {self.pd_wait_s!r}; accepted: seconds in [0, 60]")


def to_environment(config: PDConfig) -> dict[str, str]:
    """The ``SAGELLM_*`` variables that hand ``config`` to the engine process (the ``pd`` plugin reads them)."""
    from sagellm.core.config import env_name

    return {
        env_name("role"): config.role,
        env_name("pd_listen"): config.pd_listen,
        env_name("pd_peers"): ",".join(config.pd_peers),
        env_name("pd_buffer_gib"): repr(float(config.pd_buffer_gib)),
        env_name("pd_wait_s"): repr(float(config.pd_wait_s)),
    }
