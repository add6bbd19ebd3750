"""Hooks that adjust LMDeploy's OpenAI server app (registered through patch 0001's app-hook seam)."""

from __future__ import annotations

from lmdeploy.pytorch.plugins import register_app_hook

from sagellm.engines.lmdeploy.api_guard import ApiGuard


def _served_session_len() -> int | None:
    from lmdeploy.serve.openai.api_server import VariableInterface

    engine = VariableInterface.async_engine
    return getattr(engine, "session_len", None)


def add_api_guard(app) -> None:
    app.add_middleware(ApiGuard, session_len=_served_session_len)


def register_api_guard() -> None:
    register_app_hook(add_api_guard)
