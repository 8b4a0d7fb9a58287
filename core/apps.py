from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Accounts and access"

    def ready(self) -> None:
        from core import openapi, signals  # noqa: F401
