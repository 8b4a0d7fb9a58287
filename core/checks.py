"""Let Django's deploy checks see our middleware.

core.middleware wraps Django's security, clickjacking, CSRF and session
middleware to run inline under ASGI. Django's checks look for the exact dotted
paths, so they would warn that the middleware is missing and then skip every
check that depends on it (HSTS, SSL redirect, secure cookies…). Teaching the
checks that a subclass counts keeps all of them running, unchanged.
"""

from django.conf import settings
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.checks.security import base, csrf, sessions
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.module_loading import import_string


def _installed(middleware_class) -> bool:
    for path in settings.MIDDLEWARE:
        try:
            if issubclass(import_string(path), middleware_class):
                return True
        except ImportError:
            continue
    return False


def install() -> None:
    base._security_middleware = lambda: _installed(SecurityMiddleware)
    base._xframe_middleware = lambda: _installed(XFrameOptionsMiddleware)
    csrf._csrf_middleware = lambda: _installed(CsrfViewMiddleware)
    sessions._session_middleware = lambda: _installed(SessionMiddleware)
