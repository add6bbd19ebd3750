from lmdeploy.pytorch.paging.hooks import KVCacheHooks, get_kv_hooks, set_kv_hooks
import pytest

from sagellm.engines.lmdeploy.kv_hook_chain import KVHookChain, add_kv_hooks, find_kv_hooks


class RecordingHooks(KVCacheHooks):
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def attach(self, engine):
        self.calls.append((self.name, "attach", engine))

    def after_prefix_match(self, scheduler, seq):
        self.calls.append((self.name, "match", seq))

    def before_sequence_free(self, scheduler, seq):
        self.calls.append((self.name, "free", seq))

    def before_trie_evict(self, trie, node):
        self.calls.append((self.name, "evict", node))


@pytest.fixture(autouse=True)
def restore_slot():
    previous = get_kv_hooks()
    set_kv_hooks(None)
    yield
    set_kv_hooks(previous)


def test_chain_calls_members_in_order_at_every_seam():
    calls = []
    first, second = RecordingHooks("a", calls), RecordingHooks("b", calls)
    add_kv_hooks(first)
    add_kv_hooks(second)
    add_kv_hooks(first)  # idempotent
    chain = get_kv_hooks()
    assert isinstance(chain, KVHookChain) and chain.members == [first, second]
    chain.attach("engine")
    chain.after_prefix_match(None, "seq")
    chain.before_sequence_free(None, "seq")
    chain.before_trie_evict(None, "node")
    assert calls == [
        ("a", "attach", "engine"), ("b", "attach", "engine"),
        ("a", "match", "seq"), ("b", "match", "seq"),
        ("a", "free", "seq"), ("b", "free", "seq"),
        ("a", "evict", "node"), ("b", "evict", "node"),
    ]
    assert find_kv_hooks(RecordingHooks) is first


def test_directly_installed_hooks_are_kept_as_first_member():
    calls = []
    direct = RecordingHooks("direct", calls)
    set_kv_hooks(direct)
    assert find_kv_hooks(RecordingHooks) is direct
    add_kv_hooks(RecordingHooks("added", calls))
    get_kv_hooks().before_trie_evict(None, 7)
    assert calls == [("direct", "evict", 7), ("added", "evict", 7)]


def test_find_returns_none_when_nothing_of_that_kind_is_installed():
    assert find_kv_hooks(RecordingHooks) is None
