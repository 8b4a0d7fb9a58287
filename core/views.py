from django.conf import settings
from django.contrib.auth import views as auth_views
from django_ratelimit.decorators import ratelimit

from core.net import ip_key


@ratelimit(key=ip_key, rate=settings.AUTH_RATE_LIMIT, method="POST", block=False, group="auth")
def login(request, *args, **kwargs):
    """Django's sign-in, behind the guide's auth zone: too many attempts from one
    address get the form back with a 429 instead of a password check."""
    if getattr(request, "limited", False):
        response = auth_views.LoginView.as_view(extra_context={"throttled": True})(request, *args, **kwargs)
        if hasattr(response, "render"):
            response.render()
        response.status_code = 429
        response["Retry-After"] = "1"
        return response
    return auth_views.LoginView.as_view()(request, *args, **kwargs)
