"""Model providers: one module per kind, all keeping the contract in ``base``.

    provider = get_provider(language_model.provider)
    async for chunk in provider.stream(request):
        ...

Providers come from ``settings.MODEL_PROVIDERS``; each is created once per
process, on first use, and shared by every request and event loop.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from chat.providers.base import Provider, ProviderUnavailable
from chat.providers.local import LocalProvider
from chat.providers.openai import OpenAIProvider

_providers: dict[str, Provider] = {}
_providers_lock = threading.Lock()


def get_provider(name: str) -> Provider:
    """The process's provider configured as ``name``; ProviderUnavailable if there is none."""
    provider = _providers.get(name)
    if provider is None:
        with _providers_lock:
            provider = _providers.get(name)
            if provider is None:
                provider = _providers[name] = _build(name, settings.MODEL_PROVIDERS.get(name))
    return provider


def _build(name: str, config: dict[str, Any] | None) -> Provider:
    if config is None:
        configured = ", ".join(sorted(settings.MODEL_PROVIDERS)) or "none"
        raise ProviderUnavailable(f"no model provider is called {name!r} (configured: {configured})")
    kind = config.get("kind")
    if kind == "local":
        return LocalProvider(
            name,
            model_path=config.get("model_path") or None,
            n_ctx=config["context"],
            n_threads=config["threads"],
            concurrency=config["concurrency"],
            queue_size=config["queue"],
        )
    if kind == "openai":
        return OpenAIProvider(
            name,
            config["base_url"],
            config.get("api_key", ""),
            connect_timeout=config["connect_timeout"],
            read_timeout=config["read_timeout"],
            retries=config["retries"],
        )
    raise ImproperlyConfigured(f"MODEL_PROVIDERS[{name!r}] has kind {kind!r}; expected 'local' or 'openai'")


@receiver(setting_changed)
def _forget_providers(*, setting: str, **kwargs: Any) -> None:
    """Tests that override MODEL_PROVIDERS get providers built from the override."""
    if setting == "MODEL_PROVIDERS":
        with _providers_lock:
            _providers.clear()
