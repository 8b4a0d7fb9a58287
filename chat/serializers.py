from django.conf import settings
from rest_framework import serializers

from chat.models import Conversation, Message, MessageFeedback


class ModelSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    provider = serializers.CharField()
    context_window = serializers.IntegerField()
    max_output_tokens = serializers.IntegerField()
    default_temperature = serializers.FloatField()
    allowed_tiers = serializers.ListField(child=serializers.CharField())
    fallback = serializers.CharField(allow_null=True)
    available = serializers.BooleanField(help_text="Whether the caller's tier may use it.")


class ConversationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Conversation
        fields = ["id", "title", "model_name", "created_at", "updated_at"]
        read_only_fields = fields


class ConversationCreateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    model = serializers.CharField(max_length=64, required=False, help_text="Defaults to the platform's default model.")


class ConversationUpdateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200, allow_blank=True)


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = [
            "id",
            "conversation_id",
            "role",
            "content",
            "status",
            "model_name",
            "reply_to_id",
            "prompt_tokens",
            "completion_tokens",
            "latency_ms",
            "ttft_ms",
            "error",
            "created_at",
        ]
        read_only_fields = fields


class _MessageContentField(serializers.CharField):
    """Message text: empty is a 400, over the limit is a 413 (raised by the view)."""

    def __init__(self, **kwargs):
        super().__init__(allow_blank=False, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not value.strip():
            raise serializers.ValidationError("The message is empty.", code="blank")
        return value


class SendSerializer(serializers.Serializer):
    content = _MessageContentField()
    model = serializers.CharField(max_length=64, required=False)
    stream = serializers.BooleanField(required=False, default=False)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    max_tokens = serializers.IntegerField(required=False, min_value=1, max_value=32_768)


class ChatSerializer(SendSerializer):
    conversation_id = serializers.IntegerField(required=False, min_value=1)
    system = serializers.CharField(required=False, max_length=8_000, allow_blank=True)


class FeedbackSerializer(serializers.ModelSerializer):
    class Meta:
        model = MessageFeedback
        fields = ["rating", "comment", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs = {"comment": {"required": False, "allow_blank": True, "max_length": 2000}}


def content_too_long(content: str) -> bool:
    return len(content) > settings.CHAT_MAX_MESSAGE_CHARS
