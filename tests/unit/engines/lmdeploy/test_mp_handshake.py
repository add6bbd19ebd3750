import pytest
from lmdeploy.pytorch.engine.mp_engine.zmq_engine import ZMQMPEngine

from sagellm.engines.lmdeploy import mp_handshake


class ManagerGoneCondition:
    """Stands in for a manager Condition proxy whose release reply never arrives."""

    def __init__(self, error):
        self.error, self.entered, self.notified = error, False, False

    def __enter__(self):
        self.entered = True
        return True

    def __exit__(self, *exc_info):
        raise self.error

    def notify(self):
        self.notified = True


def test_release_after_the_manager_shut_down_is_tolerated():
    condition = ManagerGoneCondition(EOFError())
    with mp_handshake._TolerantCondition(condition) as acquired:
        acquired_value = acquired
        mp_handshake._TolerantCondition(condition).notify()
    assert condition.entered and condition.notified and acquired_value is True


def test_other_release_errors_still_raise():
    with pytest.raises(RuntimeError):
        with mp_handshake._TolerantCondition(ManagerGoneCondition(RuntimeError("lock not held"))):
            pass


def test_engine_process_target_is_wrapped_once_and_calls_lmdeploys(monkeypatch):
    original = ZMQMPEngine.__dict__["_mp_proc"]
    calls = []

    def recording_target(shared_dict, condition, **kwargs):
        calls.append((shared_dict, type(condition).__name__, kwargs))

    monkeypatch.setattr(ZMQMPEngine, "_mp_proc", staticmethod(recording_target))
    monkeypatch.delattr(mp_handshake.run_engine_process, "__sagellm_original__", raising=False)
    mp_handshake.register_mp_handshake()
    mp_handshake.register_mp_handshake()
    assert ZMQMPEngine._mp_proc is mp_handshake.run_engine_process
    assert ZMQMPEngine._mp_proc.__module__ == "sagellm.engines.lmdeploy.mp_handshake"  # what spawn pickles
    ZMQMPEngine._mp_proc({"k": 1}, object(), model_path="m")
    assert calls == [({"k": 1}, "_TolerantCondition", {"model_path": "m"})]
    monkeypatch.setattr(ZMQMPEngine, "_mp_proc", original)
