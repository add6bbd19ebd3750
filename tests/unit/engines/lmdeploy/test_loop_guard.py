from types import SimpleNamespace

from lmdeploy.messages import ResponseType

from sagellm.engines.lmdeploy.loop_guard import ENGINE_STOPPED, fail_in_flight, guard_engine_loop


class RecordingEngine(SimpleNamespace):
    """Stand-in for lmdeploy's Engine: sessions of sequences, recorded responses and cleanups."""

    def __init__(self, resp_types):
        seqs = {i: SimpleNamespace(resp=SimpleNamespace(type=t, name=f"resp-{i}")) for i, t in enumerate(resp_types)}
        seqs[len(seqs)] = SimpleNamespace(resp=None)  # never answered by the engine either
        super().__init__(scheduler=SimpleNamespace(sessions={7: SimpleNamespace(sequences=seqs)}),
                         responses=[], cleanups=0)

    def _response(self, resp, resp_type, data=None, err_msg=""):
        self.responses.append((resp.name, resp_type, err_msg))

    def _loop_finally(self):
        self.cleanups += 1


def test_every_unfinished_request_is_answered_with_an_engine_error():
    engine = RecordingEngine([ResponseType.SUCCESS, ResponseType.FINISH, ResponseType.SUCCESS])
    assert fail_in_flight(engine) == 2
    assert engine.responses == [("resp-0", ResponseType.INTERNAL_ENGINE_ERROR, ENGINE_STOPPED),
                                ("resp-2", ResponseType.INTERNAL_ENGINE_ERROR, ENGINE_STOPPED)]


def test_the_guard_answers_first_then_cleans_up_once_wrapped_once():
    engine = RecordingEngine([ResponseType.SUCCESS])
    guard_engine_loop(engine)
    guarded = engine._loop_finally
    guard_engine_loop(engine)
    assert engine._loop_finally is guarded
    engine._loop_finally()
    assert [r[0] for r in engine.responses] == ["resp-0"] and engine.cleanups == 1


def test_the_cleanup_runs_when_answering_fails():
    engine = RecordingEngine([ResponseType.SUCCESS])
    engine.scheduler = None  # no sessions to walk
    guard_engine_loop(engine)
    engine._loop_finally()
    assert engine.cleanups == 1


def test_an_object_without_an_engine_loop_is_left_alone():
    stand_in = SimpleNamespace()
    guard_engine_loop(stand_in)
    assert not hasattr(stand_in, "_loop_finally")
