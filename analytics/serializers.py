"""Response shapes of the analytics API, for the OpenAPI schema (the selectors
build the dicts; these only describe them)."""

from __future__ import annotations

from rest_framework import serializers

from analytics.selectors import BREAKDOWNS, COUNT_METRICS


class ScopeSerializer(serializers.Serializer):
    user = serializers.IntegerField(allow_null=True, help_text="The user whose usage this is; null: everyone.")


class RangeSerializer(serializers.Serializer):
    scope = ScopeSerializer()
    granularity = serializers.ChoiceField(choices=["hour", "day"])
    # "from" is a keyword: declared through the class namespace.
    locals()["from"] = serializers.DateTimeField(help_text="Start of the range, aligned down to the granularity.")
    to = serializers.DateTimeField(help_text="End of the range (exclusive), aligned up to the granularity.")


class FiguresSerializer(serializers.Serializer):
    requests = serializers.IntegerField(help_text="Model calls (assistant replies started).")
    conversations = serializers.IntegerField(help_text="Conversations started.")
    messages = serializers.IntegerField(help_text="User and assistant messages.")
    tokens_in = serializers.IntegerField()
    tokens_out = serializers.IntegerField()
    tokens = serializers.IntegerField(help_text="tokens_in + tokens_out")
    errors = serializers.IntegerField()
    cancels = serializers.IntegerField()
    error_rate = serializers.FloatField(allow_null=True, help_text="errors / requests; null without requests.")
    latency_mean_ms = serializers.FloatField(allow_null=True, help_text="Over complete replies.")
    ttft_mean_ms = serializers.FloatField(allow_null=True, help_text="Time to first token, over complete replies.")


class PercentilesSerializer(FiguresSerializer):
    latency_p50_ms = serializers.FloatField(allow_null=True)
    latency_p95_ms = serializers.FloatField(allow_null=True)
    ttft_p50_ms = serializers.FloatField(allow_null=True)
    ttft_p95_ms = serializers.FloatField(allow_null=True)


class SummarySerializer(RangeSerializer, PercentilesSerializer):
    as_of = serializers.DateTimeField(allow_null=True, help_text="When the rollup last ran.")


class PointSerializer(serializers.Serializer):
    t = serializers.DateTimeField(help_text="Start of the bucket.")
    value = serializers.FloatField(allow_null=True, help_text="Counts are 0, other metrics null, in empty buckets.")


class TimeseriesSerializer(RangeSerializer):
    metric = serializers.CharField()
    model = serializers.CharField(allow_null=True, help_text="The model filtered on, or null.")
    points = PointSerializer(many=True)


class BreakdownItemSerializer(PercentilesSerializer):
    id = serializers.JSONField(help_text="Model name, API key id (0: browser session) or user id.")
    label = serializers.CharField()
    email = serializers.EmailField(required=False, allow_null=True, help_text="by=user only.")
    prefix = serializers.CharField(required=False, allow_null=True, help_text="by=key only: the key's public prefix.")


class BreakdownSerializer(RangeSerializer):
    by = serializers.ChoiceField(choices=list(BREAKDOWNS))
    order = serializers.ChoiceField(choices=list(COUNT_METRICS))
    results = BreakdownItemSerializer(many=True)
    total = FiguresSerializer()
    others = FiguresSerializer(help_text="What the groups left out by `limit` add up to.")
