"""Let several sagellm plugins share LMDeploy's single KV-hook slot (patches 0002/0003).

LMDeploy holds one :class:`KVCacheHooks` instance. :func:`add_kv_hooks` installs a
:class:`KVHookChain` there (once) and appends a plugin's hooks to it; every seam then calls the
plugins in the order they were added. ``after_prefix_match`` runs them in order too, so a later
plugin sees the prefix an earlier one restored (``seq.num_history_ids`` already moved).
"""

from __future__ import annotations

from typing import TypeVar

from lmdeploy.pytorch.paging.hooks import KVCacheHooks, get_kv_hooks, set_kv_hooks

HooksT = TypeVar("HooksT", bound=KVCacheHooks)


class KVHookChain(KVCacheHooks):
    """Calls each member's hook in turn."""

    def __init__(self) -> None:
        self.members: list[KVCacheHooks] = []

    def attach(self, engine) -> None:
        for hooks in self.members:
            hooks.attach(engine)

    def after_prefix_match(self, scheduler, seq) -> None:
        for hooks in self.members:
            hooks.after_prefix_match(scheduler, seq)

    def before_sequence_free(self, scheduler, seq) -> None:
        for hooks in self.members:
            hooks.before_sequence_free(scheduler, seq)

    def before_trie_evict(self, trie, node) -> None:
        for hooks in self.members:
            hooks.before_trie_evict(trie, node)


def installed_chain() -> KVHookChain:
    """The chain in LMDeploy's hook slot, installing an empty one if the slot holds none."""
    current = get_kv_hooks()
    if isinstance(current, KVHookChain):
        return current
    chain = KVHookChain()
    if type(current) is not KVCacheHooks:
        # Someone installed hooks directly (e.g. a test); keep them as the first member.
        chain.members.append(current)
    set_kv_hooks(chain)
    return chain


def add_kv_hooks(hooks: KVCacheHooks) -> None:
    """Append ``hooks`` to the installed chain (idempotent for the same object)."""
    chain = installed_chain()
    if hooks not in chain.members:
        chain.members.append(hooks)


def find_kv_hooks(kind: type[HooksT]) -> HooksT | None:
    """The first installed hooks of ``kind`` (directly in the slot or in the chain), or ``None``."""
    current = get_kv_hooks()
    members = current.members if isinstance(current, KVHookChain) else [current]
    return next((hooks for hooks in members if isinstance(hooks, kind)), None)
