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


def test_json_is_chosen_without_negotiating_and_other_formats_still_get_406(api, monkeypatch):
    from rest_framework.negotiation import DefaultContentNegotiation

    negotiated = []
    drf_select = DefaultContentNegotiation.select_renderer

    def counted(self, request, renderers, format_suffix=None):
        negotiated.append(request.META.get("HTTP_ACCEPT", ""))
        return drf_select(self, request, renderers, format_suffix)

    monkeypatch.setattr(DefaultContentNegotiation, "select_renderer", counted)
    for accept in ("", "*/*", "application/json", "application/json; indent=2", "text/html, */*;q=0.8"):
        response = api.get("/api/me", HTTP_ACCEPT=accept)
        assert response.status_code == 200 and response["Content-Type"] == "application/json", accept
    assert negotiated == ["application/json; indent=2", "text/html, */*;q=0.8"]  # the rest skipped DRF's parse
    refused = api.get("/api/me", HTTP_ACCEPT="text/csv")
    assert refused.status_code == 406 and refused.json()["code"]


def _csp_headers(middleware_class, request, response):
    middleware_class(lambda r: response).process_request(request)
    if getattr(request, "use_nonce", False):
        str(request.csp_nonce)
    out = middleware_class(lambda r: response).process_response(request, response)
    nonce = getattr(request, "_csp_nonce", None) or "no nonce"
    headers = ("Content-Security-Policy", "Content-Security-Policy-Report-Only")
    return {h: out[h].replace(nonce, "NONCE") if h in out else None for h in headers}


@pytest.mark.parametrize("path", ["/api/me", "/excluded/page"])
@pytest.mark.parametrize("use_nonce", [False, True])
def test_csp_headers_are_django_csps_own(settings, path, use_nonce):
    """Plain responses get policies built once per process; they must equal what
    django-csp writes, also after the settings change."""
    from csp.middleware import CSPMiddleware as DjangoCSPMiddleware

    from core.middleware import CSPMiddleware

    for policy in (settings.CONTENT_SECURITY_POLICY, {"DIRECTIVES": {"default-src": ["'none'"]}}):
        settings.CONTENT_SECURITY_POLICY = {**policy, "EXCLUDE_URL_PREFIXES": ["/excluded"]}
        settings.CONTENT_SECURITY_POLICY_REPORT_ONLY = {"DIRECTIVES": {"img-src": ["'self'"]}}
        ours, theirs = RequestFactory().get(path), RequestFactory().get(path)
        ours.use_nonce = theirs.use_nonce = use_nonce
        expected = _csp_headers(DjangoCSPMiddleware, theirs, HttpResponse("{}"))
        assert _csp_headers(CSPMiddleware, ours, HttpResponse("{}")) == expected
    assert expected["Content-Security-Policy-Report-Only"] is not None


def test_a_nonce_asked_for_after_the_header_is_an_error():
    from csp.exceptions import CSPNonceError

    from core.middleware import CSPMiddleware

    request = RequestFactory().get("/api/me")
    _csp_headers(CSPMiddleware, request, HttpResponse("{}"))
    with pytest.raises(CSPNonceError):
        str(request.csp_nonce)
