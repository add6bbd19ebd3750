"""Requests in flight get an error when LMDeploy's engine loop stops, instead of waiting forever.

When a task of LMDeploy 0.11's engine loop raises, ``Engine.async_loop`` logs the exception,
cancels its sibling tasks and cleans up in ``_loop_finally``. The requests it was serving are
never answered: their streams stay open until the client gives up. Requests that arrive later
fail at once (``HANDLER_NOT_EXIST``). One such failure was the prefix-trie eviction fixed by
``trie_leaves``; this guard covers whatever else might fail.

``guard_engine_loop`` wraps the engine's ``_loop_finally``. It first answers every sequence the
scheduler still holds with ``INTERNAL_ENGINE_ERROR`` and a message that says what happened, and
then runs LMDeploy's own cleanup. A normal shutdown reaches the same code with nothing in flight.
"""

from __future__ import annotations

import logging

from lmdeploy.messages import ResponseType

logger = logging.getLogger("sagellm.loop_guard")

ENGINE_STOPPED = "the engine loop stopped on an internal error (see the engine log); the request was not completed"
_MARKER = "__sagellm_loop_guard__"


def fail_in_flight(engine, message: str = ENGINE_STOPPED) -> int:
    """Answer every request the scheduler holds with an engine error; returns how many were answered."""
    answered = 0
    for session in list(engine.scheduler.sessions.values()):
        for seq in list(session.sequences.values()):
            resp = getattr(seq, "resp", None)
            if resp is None or resp.type == ResponseType.FINISH:
                continue
            engine._response(resp, ResponseType.INTERNAL_ENGINE_ERROR, err_msg=message)
            answered += 1
    return answered


def guard_engine_loop(engine) -> None:
    """Wrap ``engine._loop_finally`` once so that requests in flight are answered first."""
    cleanup = getattr(engine, "_loop_finally", None)
    if cleanup is None or getattr(cleanup, _MARKER, False):
        return  # not an LMDeploy engine (a test stand-in), or guarded already

    def loop_finally():
        try:
            answered = fail_in_flight(engine)
            if answered:
                logger.error("engine loop stopped: %d request(s) in flight answered with an error", answered)
        except Exception:  # the cleanup below must run whatever the scheduler's state
            logger.exception("engine loop stopped: answering the requests in flight failed")
        finally:
            cleanup()

    setattr(loop_finally, _MARKER, True)
    engine._loop_finally = loop_finally
