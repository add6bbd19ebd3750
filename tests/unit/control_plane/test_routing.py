"""Routing policies are pure functions of a snapshot; prefix hashing is chained and chunked."""

from __future__ import annotations

import pytest

from sagellm.control_plane.routing import (
    ROUTING_POLICIES,
    EngineView,
    PrefixIndex,
    RouteRequest,
    RoutingSnapshot,
    least_loaded,
    prefix_affinity,
    prefix_chunk_hashes,
    render_prompt_text,
    round_robin,
)
from sagellm.core.engine_info import EngineInfo
from sagellm.core.registry import UnknownNameError


def view(engine_id, *, model="m", state="healthy", in_flight=0, capacity=2, last=0, device="cpu", labels=None):
    info = EngineInfo(
        engine_id=engine_id, kind="openai", model=model, device=device, base_url=f"http://{engine_id}",
        capacity=capacity, state=state, labels=labels or {},
    )
    return EngineView(info=info, models=(model,), in_flight=in_flight, last_routed=last)


def snap(*engines, model="m", owners=(), slo="standard", device=None, exclude=()):
    hashes = tuple(f"h{i}" for i in range(len(owners)))
    request = RouteRequest(model=model, prefix_hashes=hashes, slo_class=slo, device=device, exclude=frozenset(exclude))
    return RoutingSnapshot(request=request, engines=tuple(engines), prefix_owners=tuple(owners))


def test_registry_is_strict():
    assert ROUTING_POLICIES.names() == ("least_loaded", "prefix_affinity", "round_robin")
    with pytest.raises(UnknownNameError, match=r"unknown routing policy 'random'; valid names: \['least_loaded', 'prefix_affinity', 'round_robin'\]"):
        ROUTING_POLICIES.get("random")


def test_least_loaded_uses_load_then_recency():
    s = snap(view("a", in_flight=1, capacity=4), view("b", in_flight=1, capacity=2))
    assert least_loaded(s).engine_id == "a"  # 0.25 < 0.5
    s = snap(view("a", last=5), view("b", last=3))
    assert least_loaded(s).engine_id == "b"  # tie on load: routed to longest ago
    assert least_loaded(s).reason == "least_loaded"


def test_round_robin():
    assert round_robin(snap(view("a", last=2), view("b", last=1), view("c", last=3))).engine_id == "b"


def test_unknown_model_is_404_listing_served_models():
    d = least_loaded(snap(view("a", model="x"), view("b", model="y"), model="z"))
    assert (d.engine_id, d.reason, d.status) == (None, "no_model", 404)
    assert "served models: ['x', 'y']" in d.detail


def test_no_healthy_engine_is_503_naming_states():
    d = prefix_affinity(snap(view("a", state="unhealthy"), view("b", state="starting")))
    assert (d.engine_id, d.reason, d.status) == (None, "no_engine", 503)
    assert "a=unhealthy@cpu" in d.detail and "b=starting@cpu" in d.detail


def test_exclusion_device_and_slo_class_filters():
    a, b = view("a", device="cuda:0"), view("b", labels={"slo_classes": "batch"})
    assert least_loaded(snap(a, b, exclude={"a"}, slo="batch")).engine_id == "b"
    assert least_loaded(snap(a, b, device="cuda")).engine_id == "a"
    assert least_loaded(snap(a, b, slo="interactive")).engine_id == "a"
    d = least_loaded(snap(a, b, device="ascend"))
    assert d.status == 503 and "on device 'ascend'" in d.detail


def test_prefix_affinity_prefers_the_deepest_eligible_owner():
    a, b = view("a", last=1), view("b", last=2)
    d = prefix_affinity(snap(a, b, owners=("b", "b", "a")))
    assert (d.engine_id, d.reason, d.matched_chunks) == ("a", "prefix_affinity", 3)
    d = prefix_affinity(snap(a, b, owners=("b", "b", "a"), exclude={"a"}))
    assert (d.engine_id, d.matched_chunks) == ("b", 2)
    d = prefix_affinity(snap(a, b, owners=(None, None)))
    assert (d.engine_id, d.reason, d.matched_chunks) == ("a", "least_loaded", 0)


@pytest.mark.parametrize(
    "slo, holder_in_flight, expected",
    [
        ("interactive", 1, "a"),   # load 0.5 < 1
        ("interactive", 2, "b"),   # load 1.0: at capacity, b is idle
        ("standard", 3, "a"),      # load 1.5 < 2
        ("standard", 4, "b"),
        ("batch", 40, "a"),        # batch always follows the prefix
    ],
)
def test_prefix_affinity_yields_to_load_by_slo_class(slo, holder_in_flight, expected):
    a, b = view("a", in_flight=holder_in_flight, capacity=2), view("b", capacity=2)
    assert prefix_affinity(snap(a, b, owners=("a",), slo=slo)).engine_id == expected


def test_saturated_holder_kept_when_nobody_has_more_room():
    a, b = view("a", in_flight=4, capacity=2), view("b", in_flight=4, capacity=2)
    assert prefix_affinity(snap(a, b, owners=("a",), slo="interactive")).engine_id == "a"


def test_route_request_validates():
    with pytest.raises(ValueError, match="RouteRequest.slo_class: got 'urgent'"):
        RouteRequest(model="m", slo_class="urgent")
    with pytest.raises(ValueError, match="RouteRequest.device: got 'gpu'"):
        RouteRequest(model="m", device="gpu")


def test_prefix_hashes_are_chained_full_chunks():
    text = "a" * 10 + "b" * 10 + "c" * 5
    hashes = prefix_chunk_hashes(text, chunk_chars=10, max_chunks=8)
    assert len(hashes) == 2 and len(set(hashes)) == 2
    assert prefix_chunk_hashes("a" * 10 + "b" * 10 + "zzz", 10) == hashes
    assert prefix_chunk_hashes("x" * 10 + "b" * 10, 10)[1] != hashes[1]  # chained: chunk 1 depends on chunk 0
    assert prefix_chunk_hashes("short", 10) == ()
    assert len(prefix_chunk_hashes("a" * 100, 10, max_chunks=3)) == 3


def test_render_prompt_text():
    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert render_prompt_text("/v1/chat/completions", chat) == "system\x1fS\x1euser\x1fhi\x1e"
    assert render_prompt_text("/v1/completions", {"prompt": "abc"}) == "abc"
    assert render_prompt_text("/v1/completions", {"prompt": ["abc", "d"]}) == "abc"
    assert render_prompt_text("/v1/completions", {"prompt": [1, 2, 3]}) == "1,2,3"
    assert render_prompt_text("/v1/completions", {}) == ""


def test_prefix_index_lru_and_forget():
    index = PrefixIndex(capacity=3)
    index.insert(["h1", "h2"], "a")
    index.insert(["h3"], "b")
    index.insert(["h1"], "b")  # h1 now held by b and most recent
    index.insert(["h4"], "a")  # evicts h2 (least recent)
    assert index.owners(["h1", "h2", "h3", "h4"]) == ("b", None, "b", "a")
    assert index.forget_engine("b") == 2
    assert index.owners(["h1", "h3", "h4"]) == (None, None, "a")
