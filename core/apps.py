from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Accounts and access"

    def ready(self) -> None:
        from core import checks, metrics, middleware, openapi, signals  # noqa: F401  (middleware: DB timing hook)

        checks.install()
        metrics.install_listeners()
