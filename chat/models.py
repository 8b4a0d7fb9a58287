from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


def all_tiers() -> list[str]:
    return ["regular", "premium"]


class LanguageModel(models.Model):
    """A model users can chat with (the guide's ModelManager registry)."""

    name = models.SlugField(max_length=64, unique=True, help_text="What clients ask for, e.g. 'smollm2'.")
    provider = models.CharField(max_length=32, help_text="A configured provider: 'local', 'openai', …")
    upstream_model = models.CharField(max_length=200, help_text="The model id the provider expects.")
    description = models.CharField(max_length=300, blank=True)
    context_window = models.PositiveIntegerField(default=4096)
    max_output_tokens = models.PositiveIntegerField(default=512)
    default_temperature = models.FloatField(default=0.7)
    enabled = models.BooleanField(default=True)
    allowed_tiers = models.JSONField(default=all_tiers, help_text='Tiers that may use it, e.g. ["premium"].')
    fallback = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Used when this model's provider cannot be reached.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "language_models"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations", db_index=False
    )
    title = models.CharField(max_length=200, blank=True)
    model_name = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "conversations"
        indexes = [
            models.Index(fields=["user"], name="idx_conversations_user_id"),
            models.Index(fields=["created_at"], name="idx_conversations_created_at"),
            # A user's conversations, newest updated first (list + cursor pagination).
            models.Index(fields=["user", "-updated_at", "-id"], name="idx_conversations_user_updated"),
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        STREAMING = "streaming"
        CANCELLED = "cancelled"
        ERROR = "error"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False)
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    model_name = models.CharField(max_length=64, blank=True)
    reply_to = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="replies",
        db_index=False,
        help_text="For an assistant message: the user message it answers.",
    )
    api_key = models.ForeignKey(
        "core.APIKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Time to first token.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "messages"
        indexes = [
            models.Index(fields=["conversation"], name="idx_messages_conversation_id"),
            models.Index(fields=["created_at"], name="idx_messages_created_at"),
            # A conversation's messages in time order (list, history, cursor pagination).
            models.Index(fields=["conversation", "created_at", "id"], name="idx_messages_conv_created"),
            # The sweeper's scan for replies left streaming by a dead worker.
            models.Index(fields=["updated_at"], name="idx_messages_streaming", condition=models.Q(status="streaming")),
        ]

    def __str__(self) -> str:
        return f"{self.role} message {self.pk}"


class MessageFeedback(models.Model):
    class Rating(models.TextChoices):
        UP = "up"
        DOWN = "down"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    rating = models.CharField(max_length=8, choices=Rating.choices)
    comment = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "message_feedback"
        constraints = [models.UniqueConstraint(fields=["message", "user"], name="uniq_feedback_message_user")]

    def __str__(self) -> str:
        return f"{self.rating} on message {self.message_id}"


class IdempotencyRecord(models.Model):
    """The first response to a request sent with an ``Idempotency-Key`` header."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body.")
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "idempotency_records"
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="uniq_idempotency_user_key")]
        indexes = [models.Index(fields=["created_at"], name="idx_idempotency_created_at")]

    def __str__(self) -> str:
        return f"idempotency key {self.key}"
