"""The model registry (the guide's ModelManager): which models exist, who may use
them, and how each is reached.

Rows live in the database (editable in the admin); settings seed the defaults.
Reads are served from the two-tier cache and dropped whenever a model changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from chat.models import LanguageModel
from core.cache import two_tier

CACHE_FAMILY = "models"
CACHE_TTL = 300  # the guide caches the model list for five minutes
_ALL = "all"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the chat engine needs to know about a model, cache-friendly and immutable."""

    name: str
    provider: str
    upstream_model: str
    description: str
    context_window: int
    max_output_tokens: int
    default_temperature: float
    enabled: bool
    allowed_tiers: tuple[str, ...]
    fallback: str | None

    def allows_tier(self, tier: str | None) -> bool:
        return tier in self.allowed_tiers


def _info(model: LanguageModel) -> ModelInfo:
    return ModelInfo(
        name=model.name,
        provider=model.provider,
        upstream_model=model.upstream_model,
        description=model.description,
        context_window=model.context_window,
        max_output_tokens=model.max_output_tokens,
        default_temperature=model.default_temperature,
        enabled=model.enabled,
        allowed_tiers=tuple(model.allowed_tiers or ()),
        fallback=model.fallback.name if model.fallback_id else None,
    )


def _load_all() -> tuple[ModelInfo, ...]:
    return tuple(_info(m) for m in LanguageModel.objects.select_related("fallback").order_by("name"))


def all_models() -> tuple[ModelInfo, ...]:
    """Every registered model (enabled or not), cached."""
    return two_tier.get_or_compute(CACHE_FAMILY, _ALL, _load_all, ttl=CACHE_TTL)


def enabled_models() -> list[ModelInfo]:
    return [m for m in all_models() if m.enabled]


def find_model(name: str) -> ModelInfo | None:
    return next((m for m in all_models() if m.name == name), None)


def invalidate() -> None:
    two_tier.delete(CACHE_FAMILY, _ALL)


@receiver([post_save, post_delete], sender=LanguageModel)
def _model_changed(sender, **kwargs) -> None:
    invalidate()
    transaction.on_commit(invalidate)


def sync_from_settings(*, update: bool = False) -> list[str]:
    """Create the models named in settings.CHAT_MODELS that do not exist yet
    (and, with ``update``, overwrite the ones that do). Returns the names touched.

    Admin edits survive a plain sync: settings only seed.
    """
    touched = []
    for spec in settings.CHAT_MODELS:
        fields = {k: v for k, v in spec.items() if k not in {"name", "fallback"}}
        model = LanguageModel.objects.filter(name=spec["name"]).first()
        if model is None:
            LanguageModel.objects.create(name=spec["name"], **fields)
            touched.append(spec["name"])
        elif update:
            for key, value in fields.items():
                setattr(model, key, value)
            model.save()
            touched.append(spec["name"])
    for spec in settings.CHAT_MODELS:  # second pass: fallbacks may point at models created above
        if spec.get("fallback") and spec["name"] in touched:
            LanguageModel.objects.filter(name=spec["name"]).update(
                fallback=LanguageModel.objects.filter(name=spec["fallback"]).first()
            )
    if touched:
        invalidate()
    return touched


def usable_model(name: str | None, *, tier: str | None) -> ModelInfo:
    """The enabled model ``name`` (or the default) if the caller's tier may use it.

    Unknown or disabled: 400 listing the valid names. Not for this tier: 403.
    """
    from rest_framework.exceptions import PermissionDenied, ValidationError

    name = name or settings.CHAT_DEFAULT_MODEL
    model = find_model(name)
    if model is None or not model.enabled:
        valid = ", ".join(m.name for m in enabled_models() if m.allows_tier(tier)) or "none"
        raise ValidationError({"model": [f"Unknown or disabled model {name!r}. Valid models: {valid}."]})
    if not model.allows_tier(tier):
        raise PermissionDenied(f"The model {name!r} is available to the {', '.join(model.allowed_tiers)} tier only.")
    return model
