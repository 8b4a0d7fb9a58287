from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _seed_models(sender, using="default", **kwargs) -> None:
    """A fresh database gets the models named in settings (the bundled one at least)."""
    from chat.registry import sync_from_settings

    sync_from_settings()


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self) -> None:
        from chat import registry, signals  # noqa: F401  (connect cache invalidation)

        post_migrate.connect(_seed_models, sender=self)
