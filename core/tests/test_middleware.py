"""The middleware's cheap paths: what API requests skip must still work for pages."""

import pytest
from django.contrib import messages
from django.http import HttpResponse
from django.test import RequestFactory
from django.utils.functional import empty

from core.middleware import MessageMiddleware

pytestmark = pytest.mark.django_db


def _through_messages(view):
    from django.contrib.sessions.middleware import SessionMiddleware

    request = RequestFactory().get("/")
    SessionMiddleware(lambda r: None).process_request(request)
    return request, MessageMiddleware(view)(request)


def test_message_storage_is_built_only_when_used():
    request, response = _through_messages(lambda r: HttpResponse("ok"))
    assert request._messages._wrapped is empty
    assert "messages" not in response.cookies

    def adds_one(request):
        messages.success(request, "Saved.")
        return HttpResponse("ok")

    _, response = _through_messages(adds_one)
    assert "messages" in response.cookies  # stored for the next page, as Django does


def test_json_is_chosen_without_negotiating_and_other_formats_still_get_406(api):
    for accept in ("", "*/*", "application/json", "application/json; indent=2", "text/html, */*;q=0.8"):
        response = api.get("/api/me", HTTP_ACCEPT=accept)
        assert response.status_code == 200 and response["Content-Type"] == "application/json", accept
    refused = api.get("/api/me", HTTP_ACCEPT="text/csv")
    assert refused.status_code == 406 and refused.json()["code"]
