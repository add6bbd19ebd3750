"""Make LMDeploy 0.11's multi-process engine start reliably.

``ZMQMPEngine._start_mp_proc`` (the engine process of ``lmdeploy serve api_server``) learns the
engine's RPC port through a ``multiprocessing.Manager`` condition and shuts the manager down as
soon as it has read the port. The engine process leaves ``with condition:`` right after its
``notify``; when that final ``release`` call loses the race against the shutdown, its reply never
comes, the engine process dies with ``EOFError`` and the server waits forever for an engine
that is gone (seen in about one start in three on a loaded 2-core machine).

Once the port is published and the parent notified, the release is only bookkeeping for a
manager that is going away, so the engine process may ignore a closed connection there. This
plugin hands the engine process a condition wrapper that does exactly that, by wrapping the
process target; LMDeploy's own target then runs unchanged.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("sagellm.mp_handshake")

# the manager's connection is gone: the parent already has the port and shut the manager down
_CLOSED_CONNECTION = (EOFError, BrokenPipeError, ConnectionResetError)


class _TolerantCondition:
    """A manager ``Condition`` proxy whose release may find the manager already shut down."""

    def __init__(self, condition):
        self._condition = condition

    def __enter__(self):
        return self._condition.__enter__()

    def __exit__(self, *exc_info):
        try:
            return self._condition.__exit__(*exc_info)
        except _CLOSED_CONNECTION:
            logger.debug("engine startup: the port was handed over; the manager closed before our release reply")
            return False

    def __getattr__(self, name):
        return getattr(self._condition, name)


def run_engine_process(shared_dict, condition, **kwargs):
    """Process target: LMDeploy's ``ZMQMPEngine._mp_proc`` with a tolerant condition."""
    from lmdeploy.pytorch.engine.mp_engine.zmq_engine import ZMQMPEngine

    original = getattr(ZMQMPEngine._mp_proc, "__sagellm_original__", ZMQMPEngine._mp_proc)
    return original(shared_dict, _TolerantCondition(condition), **kwargs)


def register_mp_handshake() -> None:
    """Plugin entry: route ``ZMQMPEngine``'s process target through :func:`run_engine_process`."""
    from lmdeploy.pytorch.engine.mp_engine.zmq_engine import ZMQMPEngine

    if ZMQMPEngine._mp_proc is run_engine_process:
        return
    # The spawned process unpickles the target by name, so it imports this module and calls
    # run_engine_process, which looks LMDeploy's target up again there.
    run_engine_process.__sagellm_original__ = ZMQMPEngine._mp_proc
    ZMQMPEngine._mp_proc = staticmethod(run_engine_process)
