from django.conf import settings
from django.contrib.auth import views as auth_views
from django_ratelimit.core import is_ratelimited

from core.net import ip_key


def auth_zone_exceeded(request, scope: str) -> bool:
    """The guide's auth zone (django-ratelimit): every rate in AUTH_RATE_LIMITS, per client IP.

    Each call counts once against each rate, so a refused attempt still counts.
    """
    exceeded = False
    for rate in settings.AUTH_RATE_LIMITS:
        exceeded |= is_ratelimited(request, group=f"{scope}:{rate}", key=ip_key, rate=rate, increment=True)
    return exceeded


def login(request, *args, **kwargs):
    """Django's sign-in behind the auth zone: too many attempts from one address get
    the form back with a 429 instead of a password check."""
    if request.method == "POST" and auth_zone_exceeded(request, "sign-in"):
        response = auth_views.LoginView.as_view(extra_context={"throttled": True})(request, *args, **kwargs)
        response.render()
        response.status_code = 429
        response["Retry-After"] = "1"
        return response
    return auth_views.LoginView.as_view()(request, *args, **kwargs)
