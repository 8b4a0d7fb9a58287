from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import Throttled
from rest_framework.response import Response
from rest_framework.views import APIView

from core import quotas, ratelimit, selectors, services
from core.models import APIKey
from core.net import client_ip
from core.openapi import error_responses
from core.serializers import (
    APIKeyCreatedSerializer,
    APIKeyCreateSerializer,
    APIKeySerializer,
    MeSerializer,
    MeUpdateSerializer,
)
from core.views import auth_zone_exceeded


class MeView(APIView):
    required_scopes = {"PATCH": (APIKey.Scope.ADMIN,)}

    @extend_schema(responses={200: MeSerializer, **error_responses(401)})
    def get(self, request):
        return Response(MeSerializer(request.user).data)

    @extend_schema(
        request=MeUpdateSerializer,
        responses={200: MeSerializer, **error_responses(400, 401, 403)},
        description="Only `display_name` can change; other fields (tier, staff, timestamps) are ignored.",
    )
    def patch(self, request):
        serializer = MeUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        user = request.user
        if "display_name" in serializer.validated_data:
            user = services.user_update_profile(user=user, display_name=serializer.validated_data["display_name"])
        return Response(MeSerializer(user).data)


class QuotaView(APIView):
    required_scopes = ()

    @extend_schema(
        responses={
            200: inline_serializer(
                "Quota",
                {
                    "tier": serializers.CharField(),
                    "requests": inline_serializer(
                        "RequestQuota",
                        {
                            "limit": serializers.IntegerField(help_text="Requests per minute."),
                            "remaining": serializers.IntegerField(),
                            "reset": serializers.IntegerField(help_text="Seconds until the window moves on."),
                        },
                    ),
                    "tokens": inline_serializer(
                        "TokenQuota",
                        {
                            "limit": serializers.IntegerField(help_text="Tokens per day."),
                            "used": serializers.IntegerField(),
                            "remaining": serializers.IntegerField(),
                            "reset": serializers.IntegerField(help_text="Seconds until the day ends."),
                        },
                    ),
                },
            ),
            **error_responses(401),
        },
        description="Your remaining requests this minute and tokens today.",
    )
    def get(self, request):
        caller = ratelimit.caller_for(request.user, request.auth, client_ip(request.META))
        requests = ratelimit.hit(caller, increment=0)
        tokens = quotas.usage(request.user)
        return Response(
            {
                "tier": request.user.tier,
                "requests": {"limit": requests.limit, "remaining": requests.remaining, "reset": requests.reset},
                "tokens": {
                    "limit": tokens.limit,
                    "used": tokens.used,
                    "remaining": tokens.remaining,
                    "reset": tokens.reset,
                },
            }
        )


class KeyListCreateView(APIView):
    required_scopes = (APIKey.Scope.ADMIN,)

    @extend_schema(responses={200: APIKeySerializer(many=True), **error_responses(401, 403)})
    def get(self, request):
        return Response(APIKeySerializer(selectors.api_key_list(user=request.user), many=True).data)

    @extend_schema(
        request=APIKeyCreateSerializer,
        responses={201: APIKeyCreatedSerializer, **error_responses(400, 401, 403, 429)},
        description="Issue a key. The plaintext `key` is in this response only.",
    )
    def post(self, request):
        if auth_zone_exceeded(request._request, "key-creation"):
            raise Throttled(wait=1, detail="Too many keys created from this address; retry shortly.")
        serializer = APIKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, plaintext = services.api_key_issue(
            user=request.user,
            name=serializer.validated_data["name"],
            scopes=serializer.validated_data.get("scopes"),
            expires_at=serializer.validated_expiry(),
        )
        data = APIKeySerializer(key).data
        data["key"] = plaintext
        return Response(data, status=status.HTTP_201_CREATED)


class KeyDetailView(APIView):
    required_scopes = (APIKey.Scope.ADMIN,)

    @extend_schema(responses={200: APIKeySerializer, **error_responses(401, 403, 404)})
    def get(self, request, key_id: int):
        return Response(APIKeySerializer(selectors.api_key_get(user=request.user, key_id=key_id)).data)

    @extend_schema(responses={204: None, **error_responses(401, 403, 404)}, description="Revoke the key.")
    def delete(self, request, key_id: int):
        services.api_key_revoke(key=selectors.api_key_get(user=request.user, key_id=key_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
