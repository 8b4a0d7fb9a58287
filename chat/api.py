"""Chat REST API (reads and plain writes). Sending messages lives in api_send.py."""

from __future__ import annotations

from django.http import Http404, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import exports, registry, selectors, services, sweeper
from chat.serializers import (
    ConversationCreateSerializer,
    ConversationSerializer,
    ConversationUpdateSerializer,
    FeedbackSerializer,
    MessageSerializer,
    ModelSerializer,
)
from core.models import APIKey
from core.openapi import error_responses
from core.pagination import keyset_page
from core.serializers import iso_datetime

READ = (APIKey.Scope.CONVERSATIONS_READ,)
WRITE = (APIKey.Scope.CHAT,)

PAGE_PARAMETERS = [
    OpenApiParameter("cursor", str, description="The `next` value of the previous page."),
    OpenApiParameter("page_size", int, description="Items per page (larger values are clamped)."),
]


def _page(serializer_class, items, next_cursor) -> dict:
    return {"results": serializer_class(items, many=True).data, "next": next_cursor}


def _conversation_json(row: dict, zone) -> dict:
    """A ``selectors.conversation_list`` row as ConversationSerializer writes it."""
    return {
        **row,
        "created_at": iso_datetime(row["created_at"], zone),
        "updated_at": iso_datetime(row["updated_at"], zone),
    }


def _model_data(model: registry.ModelInfo, tier: str | None) -> dict:
    return {
        "name": model.name,
        "description": model.description,
        "provider": model.provider,
        "context_window": model.context_window,
        "max_output_tokens": model.max_output_tokens,
        "default_temperature": model.default_temperature,
        "allowed_tiers": list(model.allowed_tiers),
        "fallback": model.fallback,
        "available": model.allows_tier(tier),
    }


def _tier(request) -> str | None:
    return request.user.tier if request.user.is_authenticated else None


class ModelListView(APIView):
    """The enabled models (public, cached); `available` says whether the caller may use each."""

    permission_classes = [AllowAny]

    @extend_schema(responses={200: ModelSerializer(many=True), **error_responses(401)})
    def get(self, request):
        tier = _tier(request)
        return Response([_model_data(m, tier) for m in registry.enabled_models()])


class ModelDetailView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses={200: ModelSerializer, **error_responses(401, 404)})
    def get(self, request, name: str):
        model = registry.find_model(name)
        if model is None or not model.enabled:
            raise Http404(f"No model named {name!r}.")
        return Response(_model_data(model, _tier(request)))


class ConversationListView(APIView):
    required_scopes = {"GET": READ, "POST": WRITE}

    @extend_schema(
        operation_id="conversations_list",
        parameters=[*PAGE_PARAMETERS, OpenApiParameter("q", str, description="Case-insensitive title search.")],
        responses={
            200: inline_serializer(
                "ConversationPage",
                {"results": ConversationSerializer(many=True), "next": serializers.CharField(allow_null=True)},
            ),
            **error_responses(400, 401, 403),
        },
        description="Your conversations, newest updated first (50 a page by default).",
    )
    def get(self, request):
        def page() -> dict:
            conversations = selectors.conversation_list(user=request.user)
            query = request.query_params.get("q", "").strip()
            if query:
                conversations = conversations.filter(title__icontains=query[:200])
            rows, next_cursor = keyset_page(
                conversations, request, field="updated_at", descending=True, default=50, maximum=100
            )
            zone = timezone.get_current_timezone()
            return {"results": [_conversation_json(row, zone) for row in rows], "next": next_cursor}

        if not request.query_params:  # the default first page: cached
            return Response(selectors.recent_conversations_page(user=request.user, compute=page))
        return Response(page())

    @extend_schema(
        request=ConversationCreateSerializer,
        responses={201: ConversationSerializer, **error_responses(400, 401, 403)},
    )
    def post(self, request):
        data = ConversationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        model = registry.usable_model(data.validated_data.get("model"), tier=request.user.tier)
        conversation = services.conversation_create(
            user=request.user, model_name=model.name, title=data.validated_data["title"]
        )
        return Response(ConversationSerializer(conversation).data, status=status.HTTP_201_CREATED)


class ConversationDetailView(APIView):
    required_scopes = {"GET": READ, "PATCH": WRITE, "DELETE": WRITE}

    @extend_schema(responses={200: ConversationSerializer, **error_responses(401, 403, 404)})
    def get(self, request, conversation_id: int):
        return Response(
            ConversationSerializer(selectors.conversation_get(user=request.user, conversation_id=conversation_id)).data
        )

    @extend_schema(
        request=ConversationUpdateSerializer,
        responses={200: ConversationSerializer, **error_responses(400, 401, 403, 404)},
        description="Rename a conversation.",
    )
    def patch(self, request, conversation_id: int):
        conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
        data = ConversationUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = services.conversation_rename(conversation=conversation, title=data.validated_data["title"])
        return Response(ConversationSerializer(conversation).data)

    @extend_schema(responses={204: None, **error_responses(401, 403, 404)})
    def delete(self, request, conversation_id: int):
        services.conversation_delete(
            conversation=selectors.conversation_get(user=request.user, conversation_id=conversation_id)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class ConversationExportView(APIView):
    required_scopes = READ

    @extend_schema(
        parameters=[OpenApiParameter("format", str, enum=["json", "md"], description="Default json.")],
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "text/markdown"): OpenApiTypes.STR,
            **error_responses(400, 401, 403, 404),
        },
    )
    def get(self, request, conversation_id: int):
        conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
        kind = request.query_params.get("format", "json")
        if kind not in exports.FORMATS:
            raise serializers.ValidationError({"format": [f"Choose one of: {', '.join(exports.FORMATS)}."]})
        content_type, extension, render = exports.FORMATS[kind]
        response = StreamingHttpResponse(render(conversation), content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="conversation-{conversation.pk}.{extension}"'
        return response


class MessageListView(APIView):
    required_scopes = READ

    @extend_schema(
        operation_id="messages_list",
        parameters=PAGE_PARAMETERS,
        responses={
            200: inline_serializer(
                "MessagePage",
                {"results": MessageSerializer(many=True), "next": serializers.CharField(allow_null=True)},
            ),
            **error_responses(400, 401, 403, 404),
        },
        description="A conversation's messages, oldest first (100 a page by default).",
    )
    def get(self, request, conversation_id: int):
        conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
        items, next_cursor = keyset_page(
            selectors.message_list(conversation=conversation),
            request,
            field="created_at",
            descending=False,
            default=100,
            maximum=500,
        )
        sweeper.settle(items)
        return Response(_page(MessageSerializer, items, next_cursor))


class MessageDetailView(APIView):
    required_scopes = READ

    @extend_schema(responses={200: MessageSerializer, **error_responses(401, 403, 404)})
    def get(self, request, message_id: int):
        message = selectors.message_get(user=request.user, message_id=message_id)
        sweeper.settle([message])
        return Response(MessageSerializer(message).data)


class MessageFeedbackView(APIView):
    required_scopes = WRITE

    @extend_schema(
        request=FeedbackSerializer,
        responses={200: FeedbackSerializer, **error_responses(400, 401, 403, 404)},
        description="Rate a reply up or down, with an optional comment (sending again replaces it).",
    )
    def post(self, request, message_id: int):
        message = selectors.message_get(user=request.user, message_id=message_id)
        data = FeedbackSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if message.role != "assistant":
            raise serializers.ValidationError({"message_id": ["Only an assistant reply can be rated."]})
        feedback = services.feedback_set(message=message, user=request.user, **data.validated_data)
        return Response(FeedbackSerializer(feedback).data)
