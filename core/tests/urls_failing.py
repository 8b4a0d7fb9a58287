from django.urls import path

from agentsflow.urls import urlpatterns as platform_urlpatterns


def boom(request):
    raise RuntimeError("deliberate failure for the test")


urlpatterns = [path("api/boom", boom), *platform_urlpatterns]
