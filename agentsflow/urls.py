from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_from_finders
from django.urls import include, path, re_path
from django.views.static import serve as serve_static
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from analytics.dashboard import DashboardHistoryView, DashboardLiveView, dashboard_page
from chat.views import chat_page
from core import health, metrics_view
from core import views as core_views
from core.exceptions import api_not_found

urlpatterns = [
    # The API first: Django tries the patterns in order, and nearly every request is
    # an API call (the busiest app first). No pattern below overlaps these.
    path("api/", include("chat.urls")),
    path("api/", include("core.urls")),
    path("api/", include("analytics.urls")),
    path("v1/", include("chat.openai_urls")),
    path("", chat_page, name="chat"),
    path("health", health.live, name="health"),
    path("ready", health.ready, name="ready"),
    path("metrics", metrics_view.metrics, name="metrics"),
    path("dashboard/", dashboard_page, name="dashboard"),
    path("api/dashboard/live", DashboardLiveView.as_view(), name="dashboard-live"),
    path("api/dashboard/history", DashboardHistoryView.as_view(), name="dashboard-history"),
    path("admin/", admin.site.urls),
    path("accounts/login/", core_views.login, name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # GET only: DRF's OPTIONS answer has no template to render here (it was a 500).
    path(
        "docs", SpectacularSwaggerSplitView.as_view(url_name="schema", http_method_names=["get", "head"]), name="docs"
    ),
    path("redoc", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    # Anything else under /api/ or /v1/ is a JSON 404, never Django's HTML page.
    re_path(r"^api/", api_not_found),
    re_path(r"^v1/", api_not_found),
]

if settings.SERVE_STATIC:
    urlpatterns.append(
        re_path(r"^static/(?P<path>.*)$", serve_static, {"document_root": settings.STATIC_ROOT})
        if settings.PRODUCTION
        else re_path(r"^static/(?P<path>.*)$", serve_from_finders)
    )

handler400 = "core.exceptions.handler400"
handler403 = "core.exceptions.handler403"
handler404 = "core.exceptions.handler404"
handler500 = "core.exceptions.handler500"
