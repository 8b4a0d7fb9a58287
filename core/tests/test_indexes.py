"""The guide's indexes exist and the two hot queries use them (PostgreSQL)."""

import pytest
from django.db import connection

from chat.models import Conversation
from chat.selectors import conversation_list, message_list

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

GUIDE_INDEXES = {
    "idx_conversations_user_id",
    "idx_conversations_created_at",
    "idx_messages_conversation_id",
    "idx_messages_created_at",
    "idx_users_email",
    "idx_api_keys_user_id",
}


def _seed(users: int = 200, conversations_per_user: int = 50, messages_per_conversation: int = 10) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO users (password, email, display_name, tier, is_staff, is_active, is_superuser,
                               created_at, updated_at)
            SELECT '', 'seed' || g || '@example.com', '', 'regular', false, true, false, now(), now()
            FROM generate_series(1, %s) g
            """,
            [users],
        )
        cursor.execute(
            """
            INSERT INTO conversations (user_id, title, model_name, created_at, updated_at)
            SELECT u.id, 'c' || g, 'smollm2', now() - g * interval '1 minute', now() - g * interval '1 minute'
            FROM users u CROSS JOIN generate_series(1, %s) g
            """,
            [conversations_per_user],
        )
        cursor.execute(
            """
            INSERT INTO messages (conversation_id, role, content, status, model_name, prompt_tokens,
                                  completion_tokens, error, created_at, updated_at)
            SELECT c.id, 'user', 'hello', 'complete', 'smollm2', 0, 0, '',
                   c.created_at + g * interval '1 second', c.created_at + g * interval '1 second'
            FROM conversations c CROSS JOIN generate_series(1, %s) g
            """,
            [messages_per_conversation],
        )
        # One heavy user, whose list the index must return already sorted.
        cursor.execute(
            """
            INSERT INTO conversations (user_id, title, model_name, created_at, updated_at)
            SELECT u.id, 'h' || g, 'smollm2', now() - g * interval '1 second', now() - g * interval '1 second'
            FROM users u CROSS JOIN generate_series(1, 5000) g WHERE u.email = 'seed1@example.com'
            """
        )
        # And one long conversation, whose history the index must return in order.
        cursor.execute(
            """
            INSERT INTO messages (conversation_id, role, content, status, model_name, prompt_tokens,
                                  completion_tokens, error, created_at, updated_at)
            SELECT c.id, 'assistant', 'hi', 'complete', 'smollm2', 0, 0, '',
                   now() + g * interval '1 second', now() + g * interval '1 second'
            FROM (SELECT id FROM conversations WHERE title = 'h1') c CROSS JOIN generate_series(1, 3000) g
            """
        )
        cursor.execute("ANALYZE users; ANALYZE conversations; ANALYZE messages;")


def test_guide_indexes_exist():
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
        names = {row[0] for row in cursor.fetchall()}
    assert names >= GUIDE_INDEXES


def test_hot_queries_use_their_composite_indexes(django_user_model):
    _seed()
    for email in ("seed100@example.com", "seed1@example.com"):
        user = django_user_model.objects.get(email=email)
        plan = conversation_list(user=user)[:50].explain()
        assert "idx_conversations_user_updated" in plan, plan
        assert "Seq Scan" not in plan, plan
    # For the heavy user the index already yields the order: no sort step at all.
    assert "Sort" not in plan, plan

    short = Conversation.objects.exclude(title="h1").first()
    plan = message_list(conversation=short)[:100].explain()
    assert "Index Scan" in plan and "Seq Scan" not in plan, plan
    long = Conversation.objects.get(title="h1")
    plan = message_list(conversation=long)[:100].explain()
    assert "idx_messages_conv_created" in plan, plan
    assert "Seq Scan" not in plan and "Sort" not in plan, plan
