"""``UnifiedInferenceClient``: an OpenAI client pointed at the sagellm gateway.

::

    from sagellm.control_plane import UnifiedInferenceClient

    client = UnifiedInferenceClient.create()          # finds the gateway (discovery.gateway_url)
    client.chat.completions.create(model="tiny", messages=[...])

The API key is the ``api_key`` argument, else ``SAGELLM_API_KEY``, else the first of
``SAGELLM_API_KEYS``; without any the client sends a placeholder (fine for a gateway
without auth).
"""

from __future__ import annotations

import os
from typing import Any

from sagellm.control_plane.discovery import gateway_url

API_KEY_ENV = "SAGELLM_API_KEY"
NO_KEY = "sagellm-no-key"


class UnifiedInferenceClient:
    """Factory for ``openai.OpenAI`` clients bound to the gateway."""

    @staticmethod
    def discover() -> str:
        """The gateway's base URL (raises ``LookupError`` when there is none)."""
        return gateway_url()

    @staticmethod
    def api_key(explicit: str | None = None) -> str:
        if explicit:
            return explicit
        key = os.environ.get(API_KEY_ENV, "").strip()
        if key:
            return key
        keys = [k.strip() for k in os.environ.get("SAGELLM_API_KEYS", "").split(",") if k.strip()]
        return keys[0] if keys else NO_KEY

    @classmethod
    def create(
        cls,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 0,
        **kwargs: Any,
    ) -> Any:
        """An ``openai.OpenAI`` for ``base_url`` (default: the discovered gateway) + ``/v1``."""
        from openai import OpenAI

        root = (base_url or cls.discover()).rstrip("/").removesuffix("/v1")
        return OpenAI(
            base_url=f"{root}/v1", api_key=cls.api_key(api_key), timeout=timeout, max_retries=max_retries, **kwargs
        )
