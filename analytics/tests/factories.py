"""Raw conversations and messages written straight to the database (with chosen
timestamps), and an independent aggregation of them to check the rollups against."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from analytics import buckets, histogram
from analytics.rollup import ADDITIVE, DIMENSIONS, PERCENTILES, TABLES, project
from chat.models import Conversation, Message

COMPARED = (*ADDITIVE, "latency_hist", "ttft_hist")  # compared exactly; PERCENTILES within 1e-6


@dataclass
class MessageSpec:
    role: str
    created_at: datetime
    status: str = "complete"
    key_id: int | None = None
    model_name: str = "alpha"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int | None = None
    ttft_ms: int | None = None


@dataclass
class ConversationSpec:
    user_id: int
    created_at: datetime
    model_name: str = "alpha"
    messages: list[MessageSpec] = field(default_factory=list)


def write(conversations: list[ConversationSpec]) -> None:
    """Create the conversations and their messages (one INSERT per table)."""
    created = Conversation.objects.bulk_create(
        [
            Conversation(user_id=c.user_id, model_name=c.model_name, created_at=c.created_at, updated_at=c.created_at)
            for c in conversations
        ]
    )
    Message.objects.bulk_create(
        [
            Message(
                conversation=conversation,
                role=m.role,
                status=m.status,
                model_name=m.model_name,
                api_key_id=m.key_id,
                prompt_tokens=m.prompt_tokens,
                completion_tokens=m.completion_tokens,
                latency_ms=m.latency_ms,
                ttft_ms=m.ttft_ms,
                created_at=m.created_at,
            )
            for conversation, spec in zip(created, conversations, strict=True)
            for m in spec.messages
        ]
    )


def _percentile_cont(values: list[int], fraction: float) -> float | None:
    """Written out again here (not imported) so the check does not share the code it checks."""
    if not values:
        return None
    values = sorted(values)
    position = fraction * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def expected_rows(granularity: str) -> dict[tuple, dict]:
    """The rollup rows the raw rows in the database call for, aggregated in Python
    with the documented rules (a reference to compare the rollup with)."""
    rows: dict[tuple, dict] = defaultdict(lambda: dict.fromkeys(ADDITIVE, 0) | {"lat": [], "ttft": []})
    first_user_key: dict[int, tuple] = {}
    for message in Message.objects.select_related("conversation").order_by("created_at", "id"):
        if message.role == "user" and message.conversation_id not in first_user_key:
            first_user_key[message.conversation_id] = message.api_key_id or 0
        if message.role == "system":
            continue
        cell = (message.conversation.user_id, message.model_name, message.api_key_id or 0)
        start = buckets.floor(granularity, message.created_at)
        for dimension in DIMENSIONS:
            row = rows[(dimension, start, *project(dimension, cell))]
            row["messages"] += 1
            if message.role != "assistant":
                continue
            row["requests"] += 1
            row["tokens_in"] += message.prompt_tokens
            row["tokens_out"] += message.completion_tokens
            row["errors"] += message.status == "error"
            row["cancels"] += message.status == "cancelled"
            if message.status == "complete":
                if message.latency_ms is not None:
                    row["latency_count"] += 1
                    row["latency_sum_ms"] += message.latency_ms
                    row["lat"].append(message.latency_ms)
                if message.ttft_ms is not None:
                    row["ttft_count"] += 1
                    row["ttft_sum_ms"] += message.ttft_ms
                    row["ttft"].append(message.ttft_ms)
    for conversation in Conversation.objects.all():
        cell = (conversation.user_id, conversation.model_name, first_user_key.get(conversation.pk, 0))
        start = buckets.floor(granularity, conversation.created_at)
        for dimension in DIMENSIONS:
            rows[(dimension, start, *project(dimension, cell))]["conversations"] += 1
    result = {}
    for key, row in rows.items():
        lat, ttft = row.pop("lat"), row.pop("ttft")
        row["latency_hist"] = histogram.histogram(lat)
        row["ttft_hist"] = histogram.histogram(ttft)
        row["latency_p50_ms"] = _percentile_cont(lat, 0.5)
        row["latency_p95_ms"] = _percentile_cont(lat, 0.95)
        row["ttft_p50_ms"] = _percentile_cont(ttft, 0.5)
        row["ttft_p95_ms"] = _percentile_cont(ttft, 0.95)
        result[key] = row
    return result


def stored_rows(granularity: str) -> dict[tuple, dict]:
    """The rollup rows in the database, in expected_rows' shape."""
    return {
        (row["dimension"], row["bucket"], row["user_id"], row["model_name"], row["api_key_id"]): {
            name: row[name] for name in (*COMPARED, *PERCENTILES)
        }
        for row in TABLES[granularity].objects.values()
    }


def assert_rows_match(granularity: str) -> None:
    expected, stored = expected_rows(granularity), stored_rows(granularity)
    assert set(stored) == set(expected), (
        f"{granularity}: missing {sorted(set(expected) - set(stored))[:5]}, extra {sorted(set(stored) - set(expected))[:5]}"
    )
    for key, row in expected.items():
        got = stored[key]
        for name in COMPARED:
            assert got[name] == row[name], (granularity, key, name, got[name], row[name])
        for name in PERCENTILES:
            if row[name] is None:
                assert got[name] is None, (granularity, key, name)
            else:
                assert abs(got[name] - row[name]) < 1e-6, (granularity, key, name, got[name], row[name])
