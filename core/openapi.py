"""OpenAPI helpers: the shared error schema and the API-key security scheme."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "status": serializers.IntegerField(),
        "code": serializers.CharField(),
        "message": serializers.CharField(),
        "details": serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False),
    },
)

_DESCRIPTIONS = {
    400: "Invalid input; `details` names each field.",
    401: "Missing or invalid credentials.",
    403: "Authenticated, but not allowed (missing scope, tier or CSRF token).",
    404: "No such object (or not yours).",
    405: "Method not allowed.",
    409: "Conflict with the current state.",
    413: "Request body too large.",
    415: "Unsupported media type.",
    422: "The Idempotency-Key was already used with a different request.",
    429: "Rate limit or quota exceeded; see Retry-After.",
    500: "Internal error.",
    502: "The model provider failed.",
    503: "A dependency (database, cache, model) is unavailable; retry.",
    504: "Timed out.",
}


def error_responses(*codes: int) -> dict:
    return {code: OpenApiResponse(ErrorSerializer, description=_DESCRIPTIONS[code]) for code in codes}


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "core.authentication.APIKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer afk_…` (or `X-API-Key: afk_…`).",
        }
