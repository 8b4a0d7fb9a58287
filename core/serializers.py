from datetime import timedelta

from django.utils import timezone
from rest_framework import serializers

from core.models import APIKey, User


def iso_datetime(value, zone=None):
    """``value`` as DRF's DateTimeField writes it (in ``zone``, by default the
    current time zone; ``Z`` for UTC), for hot lists built without a serializer:
    they look the zone up once, not once a value."""
    text = value.astimezone(zone or timezone.get_current_timezone()).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class MeSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "email", "display_name", "tier", "is_staff", "created_at", "updated_at"]
        read_only_fields = ["id", "email", "tier", "is_staff", "created_at", "updated_at"]


class MeUpdateSerializer(serializers.Serializer):
    display_name = serializers.CharField(max_length=150, allow_blank=True, trim_whitespace=True)


class APIKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = APIKey
        fields = [
            "id",
            "name",
            "prefix",
            "scopes",
            "rate_limit_per_minute",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
        ]
        read_only_fields = fields


class APIKeyCreatedSerializer(APIKeySerializer):
    key = serializers.CharField(help_text="The key itself. Shown only in this response; store it now.")

    class Meta(APIKeySerializer.Meta):
        fields = [*APIKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class APIKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, trim_whitespace=True)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=APIKey.Scope.choices),
        required=False,
        allow_empty=False,
        max_length=len(APIKey.Scope.choices),
        help_text="Defaults to chat and conversations:read.",
    )
    expires_in_days = serializers.IntegerField(required=False, min_value=1, max_value=3650)

    def validated_expiry(self):
        days = self.validated_data.get("expires_in_days")
        return timezone.now() + timedelta(days=days) if days else None
