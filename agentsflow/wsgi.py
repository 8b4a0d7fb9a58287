"""WSGI entry point: ordinary API traffic in production (see README, "Serving")."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentsflow.settings")
application = get_wsgi_application()
