"""What Django's ORM adds to a chat send's database statements: the Python CPU of
each statement as the send makes it, against the very SQL it sent (same
parameters) run through a plain Django cursor.

    DATABASE_URL=postgres://…/af_bench python -m bench.orm_cost [--rounds 5] [--calls 300] [--history 20]

The statements of figure 4 (a send to a conversation, then its reply stored):
the conversation's lookup, the user's message, the history, the reply's
placeholder, the conversation's timestamp, the reply's outcome. CPU time of this
process only (PostgreSQL's own work is another process's), so other load on the
machine disturbs it little; medians over interleaved rounds. Everything runs in
one transaction that is rolled back at the end: the database is left as it was
(it is migrated first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

STATEMENTS = (
    "conversation lookup",
    "user message insert",
    "history (read and trim)",
    "reply placeholder insert",
    "conversation timestamp",
    "reply outcome",
)


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentsflow.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def send_statements(history: int) -> dict[str, Callable[[], object]]:
    """Each statement of a send as the platform makes it, on a conversation of its own."""
    from django.utils import timezone

    from chat import selectors, services
    from chat.models import Conversation, Message
    from chat.providers.base import Usage, estimate_tokens
    from chat.registry import all_models
    from core.models import User

    model = all_models()[0]
    user = User.objects.create_user(email="orm-cost@bench.invalid", password=None)
    conversation = Conversation.objects.create(user=user, model_name=model.name, title="bench")
    question = None
    for number in range(history // 2):
        question = Message.objects.create(conversation=conversation, role="user", content=f"Question {number}?")
        Message.objects.create(
            conversation=conversation, role="assistant", status="complete", content="An answer.", reply_to=question
        )
    reply = Message.objects.create(conversation=conversation, role="assistant", status="streaming", reply_to=question)
    now = timezone.now()
    return {
        "conversation lookup": lambda: selectors.conversation_get(user=user, conversation_id=conversation.pk),
        "user message insert": lambda: Message.objects.create(
            conversation=conversation, role="user", content="Go on.", model_name=model.name, created_at=now
        ),
        "history (read and trim)": lambda: services.build_history(
            conversation.pk, upto_message_id=reply.pk, model=model, count_tokens=estimate_tokens
        ),
        "reply placeholder insert": lambda: Message.objects.create(
            conversation=conversation, role="assistant", status="streaming", model_name=model.name, reply_to=question
        ),
        "conversation timestamp": lambda: Conversation.objects.filter(pk=conversation.pk).update(updated_at=now),
        # Only a reply still streaming changes, so later calls match no row: the same statement.
        "reply outcome": lambda: services.assistant_finish(
            message_id=reply.pk,
            content="An answer.",
            status="complete",
            usage=Usage(prompt_tokens=200, completion_tokens=16),
            latency_ms=10,
            ttft_ms=1,
            model_name=model.name,
        ),
    }


def sql_of(statement: Callable[[], object]) -> tuple[str, object]:
    """The one SQL statement (and its parameters) that ``statement`` sends."""
    from django.db import connection

    sent = []

    def record(execute, sql, params, many, context):
        sent.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        statement()
    if len(sent) != 1:
        raise RuntimeError(f"expected one statement, got {len(sent)}: {sent}")
    return sent[0]


def through_cursor(sql: str, params) -> Callable[[], object]:
    from django.db import connection

    def run():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    return run


def cpu_us(call: Callable[[], object], calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.orm_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument(
        "--history", type=int, default=20, help="messages in the conversation (bench.request_cost's default)"
    )
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL"):
        parser.error("needs DATABASE_URL (the ORM's cost on PostgreSQL is the question)")
    setup_django()
    from django.db import transaction

    figures: dict[tuple[str, str], list[float]] = {}
    with transaction.atomic():
        orm = send_statements(args.history)
        cursor = {name: through_cursor(*sql_of(statement)) for name, statement in orm.items()}
        for _ in range(args.rounds):
            for name in STATEMENTS:
                for way, call in (("orm", orm[name]), ("cursor", cursor[name])):
                    figures.setdefault((name, way), []).append(cpu_us(call, args.calls))
        transaction.set_rollback(True)

    median = {key: statistics.median(values) for key, values in figures.items()}
    print(f"Python CPU µs per statement, medians of {args.rounds} rounds of {args.calls} calls")
    print(f"{'statement':26} {'ORM':>8} {'cursor':>8} {'ORM adds':>9}")
    for name in STATEMENTS:
        orm_us, cursor_us = median[name, "orm"], median[name, "cursor"]
        print(f"{name:26} {orm_us:8.0f} {cursor_us:8.0f} {orm_us - cursor_us:9.0f}")
    orm_total = sum(median[name, "orm"] for name in STATEMENTS)
    cursor_total = sum(median[name, "cursor"] for name in STATEMENTS)
    print(f"{'a send, all six':26} {orm_total:8.0f} {cursor_total:8.0f} {orm_total - cursor_total:9.0f}")


if __name__ == "__main__":
    main()
