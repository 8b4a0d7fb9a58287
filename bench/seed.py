"""Realistic data for the benchmarks, loaded with PostgreSQL COPY.

    python -m bench.seed [--quick | --tiny] [--reseed]      # DATABASE_URL names the database

The full seed is 1,000 users (one API key each, a tenth of them premium),
20,000 conversations and 1,000,000 messages spread over the last 60 days. Usage
is skewed as in real life: the heaviest tenth of the users own half of the
conversations (about 100 each), so "the 50 most recent conversations of a user"
is a full page for them; the load scripts use their keys.

Loading takes a few minutes: rows are generated in this process and streamed
with COPY, with the secondary indexes dropped and the foreign-key triggers off
(``session_replication_role = replica``) during the load, then rebuilt, as a
bulk load into PostgreSQL is usually done. The data is consistent by
construction (every id is assigned here).

A database that already holds a seed of the same size and version is reused
(``--reseed`` forces a new one). API keys are derived from a fixed seed and the
user's id, so a reused database's keys are known without storing any plaintext.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg

from core import keys

SEED_VERSION = 1
RANDOM_SEED = 20261127
HEAVY_USERS = 0.10  # this share of the users ...
HEAVY_CONVERSATIONS = 0.50  # ... owns this share of the conversations
PREMIUM_EVERY = 10  # every tenth user is premium
HISTORY_DAYS = 60
MODELS = ("fast", "smollm2")
ALL_SCOPES = ["admin", "analytics:read", "chat", "conversations:read"]
PASSWORD = "bench-password-123"


@dataclass(frozen=True)
class SeedSize:
    users: int
    conversations: int
    messages: int

    def __str__(self) -> str:
        return f"{self.users:,} users, {self.conversations:,} conversations, {self.messages:,} messages"


FULL = SeedSize(1_000, 20_000, 1_000_000)
QUICK = SeedSize(200, 4_000, 100_000)
TINY = SeedSize(20, 200, 2_000)


@dataclass
class BenchUser:
    id: int
    email: str
    tier: str
    key: str  # plaintext API key (all scopes)
    conversation_ids: list[int] = field(default_factory=list)  # newest updated first


@dataclass
class Seed:
    database_url: str
    size: SeedSize
    reused: bool
    seconds: float


# --- deterministic keys ---------------------------------------------------------------


def user_key(user_id: int) -> str:
    """The plaintext API key of seeded user ``user_id`` (same format and checksum as core.keys)."""
    rng = random.Random(f"bench-key-{RANDOM_SEED}-{user_id}")
    body = keys.MARKER + "".join(rng.choice(keys.ALPHABET) for _ in range(keys.ID_LENGTH + keys.SECRET_LENGTH))
    return body + keys._checksum(body)


# --- connection helpers ---------------------------------------------------------------


def _conninfo(database_url: str, dbname: str | None = None) -> str:
    from agentsflow.env import database_from_url

    db = database_from_url(database_url)
    parts = {
        "host": db["HOST"] or None,
        "port": db["PORT"] or None,
        "user": db["USER"] or None,
        "password": db["PASSWORD"] or None,
        "dbname": dbname or db["NAME"],
    }
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in parts.items() if v})


def database_name(database_url: str) -> str:
    from agentsflow.env import database_from_url

    return database_from_url(database_url)["NAME"]


def _seed_row(conn) -> tuple | None:
    exists = conn.execute("SELECT to_regclass('bench_seed') IS NOT NULL").fetchone()[0]
    if not exists:
        return None
    return conn.execute("SELECT version, users, conversations, messages FROM bench_seed").fetchone()


def existing_seed(database_url: str, size: SeedSize) -> bool:
    """True when the database exists and holds a complete seed of this size and version."""
    admin = _conninfo(database_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database_name(database_url)]).fetchone()
    if not found:
        return False
    with psycopg.connect(_conninfo(database_url)) as conn:
        return _seed_row(conn) == (SEED_VERSION, size.users, size.conversations, size.messages)


def recreate_database(database_url: str) -> None:
    name = database_name(database_url)
    with psycopg.connect(_conninfo(database_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


# --- progress -----------------------------------------------------------------------------


class Progress:
    """One line on stderr, rewritten in place: what, how far, how fast, how long left."""

    def __init__(self, label: str, total: int, out=sys.stderr) -> None:
        self.label, self.total, self.out = label, total, out
        self.started = self.shown = time.monotonic()
        self.done = 0

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.shown >= 0.5 or self.done >= self.total:
            self.shown = now
            elapsed = now - self.started
            rate = self.done / elapsed if elapsed else 0.0
            left = (self.total - self.done) / rate if rate else 0.0
            self.out.write(
                f"\r  {self.label:<14} {self.done:>10,}/{self.total:,}  {100 * self.done / self.total:5.1f} %"
                f"  {rate:>9,.0f}/s  {elapsed:5.0f} s, ~{left:.0f} s left   "
            )
            self.out.flush()

    def finish(self) -> None:
        self.out.write("\n")
        self.out.flush()


# --- the data --------------------------------------------------------------------------------

_VOCABULARY = (
    "the model answer data user request response latency token stream cache query index table "
    "python django server worker process memory request async thread pool connection database "
    "postgres redis queue event socket message conversation history context window prompt reply "
    "please explain how why what when could would should write summarise translate compare list "
    "code function class error test deploy config file path value key list dict string number "
    "first second then finally because however also which that this with from into over under "
    "fast slow simple clear short long good better best small large more less every each some "
    "report chart metric dashboard alert limit rate quota tier premium regular anonymous secure"
)
WORDS = _VOCABULARY.split()


def _texts(rng: random.Random, count: int, low: int, high: int) -> list[str]:
    """Sentence-like texts of ``low`` to ``high`` words."""
    texts = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
        sentences, start = [], 0
        while start < len(words):
            end = min(len(words), start + rng.randint(6, 16))
            sentence = " ".join(words[start:end])
            sentences.append(sentence[0].upper() + sentence[1:] + rng.choice(".?."))
            start = end
        texts.append(" ".join(sentences))
    return texts


def _conversation_owners(rng: random.Random, size: SeedSize) -> list[int]:
    """The owning user id of each conversation: the heavy users own HEAVY_CONVERSATIONS of them."""
    heavy = max(1, int(size.users * HEAVY_USERS))
    heavy_count = int(size.conversations * HEAVY_CONVERSATIONS)
    owners = [1 + i % heavy for i in range(heavy_count)]
    light = size.users - heavy
    owners += [1 + heavy + (i % light if light else 0) for i in range(size.conversations - heavy_count)]
    rng.shuffle(owners)
    return owners


def _pair_counts(rng: random.Random, conversations: int, pairs: int) -> list[int]:
    """Question/answer pairs per conversation: varied, at least one each, summing to ``pairs``."""
    mean = pairs / conversations
    low = max(1, int(mean / 5))
    counts = [rng.randint(low, max(low, int(2 * mean) - low)) for _ in range(conversations)]
    diff = pairs - sum(counts)
    while diff:
        i = rng.randrange(conversations)
        if diff > 0:
            counts[i] += 1
            diff -= 1
        elif counts[i] > 1:
            counts[i] -= 1
            diff += 1
    return counts


def _copy(cursor, table: str, columns: tuple[str, ...], rows: Iterator[tuple], progress: Progress | None) -> None:
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            if progress is not None:
                progress.advance()


def _secondary_indexes(cursor, table: str) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of the indexes no constraint owns."""
    return cursor.execute(
        """
        SELECT i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.tablename = %s AND i.schemaname = current_schema()
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
        """,
        [table],
    ).fetchall()


@contextlib.contextmanager
def _bulk_load(cursor, tables: tuple[str, ...]) -> Iterator[None]:
    """Indexes dropped and FK triggers off while loading; indexes rebuilt afterwards."""
    saved = [index for table in tables for index in _secondary_indexes(cursor, table)]
    for name, _ in saved:
        cursor.execute(f'DROP INDEX "{name}"')
    cursor.execute("SET session_replication_role = replica")
    yield
    cursor.execute("SET session_replication_role = DEFAULT")
    cursor.execute("SET maintenance_work_mem = '256MB'")
    started = time.monotonic()
    sys.stderr.write(f"  rebuilding {len(saved)} indexes ...")
    sys.stderr.flush()
    for _, statement in saved:
        cursor.execute(statement)
    sys.stderr.write(f" {time.monotonic() - started:.0f} s\n")


def _user_rows(size: SeedSize, password_hash: str, now: datetime) -> Iterator[tuple]:
    for uid in range(1, size.users + 1):
        tier = "premium" if uid % PREMIUM_EVERY == 0 else "regular"
        joined = now - timedelta(days=HISTORY_DAYS + 1 + uid % 300)
        yield (
            uid,
            f"bench{uid}@example.com",
            f"Bench User {uid}",
            tier,
            password_hash,
            False,
            False,
            True,
            joined,
            now,
        )


def _key_rows(size: SeedSize, now: datetime) -> Iterator[tuple]:
    from psycopg.types.json import Jsonb

    for uid in range(1, size.users + 1):
        plaintext = user_key(uid)
        created = now - timedelta(days=HISTORY_DAYS)
        yield (uid, uid, "bench", plaintext[: keys.PREFIX_LENGTH], keys.digest(plaintext), Jsonb(ALL_SCOPES), created)


def load(database_url: str, size: SeedSize, out=sys.stderr) -> None:
    """Fill a freshly migrated, empty database."""
    rng = random.Random(RANDOM_SEED)
    now = datetime.now(UTC).replace(microsecond=0)
    from django.contrib.auth.hashers import make_password

    password_hash = make_password(PASSWORD)
    user_texts = _texts(rng, 3000, 8, 60)
    reply_texts = _texts(rng, 3000, 30, 220)

    with psycopg.connect(_conninfo(database_url)) as conn, conn.cursor() as cursor:
        # Users and their keys (ids assigned here: user i owns key i).
        _copy(
            cursor,
            "users",
            (
                "id",
                "email",
                "display_name",
                "tier",
                "password",
                "is_superuser",
                "is_staff",
                "is_active",
                "created_at",
                "updated_at",
            ),
            _user_rows(size, password_hash, now),
            None,
        )
        _copy(
            cursor,
            "api_keys",
            ("id", "user_id", "name", "prefix", "secret_hash", "scopes", "created_at"),
            _key_rows(size, now),
            None,
        )

        owners = _conversation_owners(rng, size)
        pairs = _pair_counts(rng, size.conversations, size.messages // 2)
        with _bulk_load(cursor, ("conversations", "messages")):
            progress = Progress("conversations", size.conversations, out)
            starts: list[datetime] = []
            spans: list[float] = []

            def conversations() -> Iterator[tuple]:
                for cid, owner in enumerate(owners, start=1):
                    span = pairs[cid - 1] * 2 * 75.0  # seconds from the first message to the last
                    created = now - timedelta(seconds=rng.uniform(span + 3600, HISTORY_DAYS * 86400))
                    starts.append(created)
                    spans.append(span)
                    title = user_texts[cid % len(user_texts)][:60].rstrip(" .?")
                    updated = created + timedelta(seconds=span)
                    yield (cid, owner, title, MODELS[cid % len(MODELS)], created, updated)

            _copy(
                cursor,
                "conversations",
                ("id", "user_id", "title", "model_name", "created_at", "updated_at"),
                conversations(),
                progress,
            )
            progress.finish()

            progress = Progress("messages", 2 * sum(pairs), out)

            def messages() -> Iterator[tuple]:
                mid = 0
                for cid, owner in enumerate(owners, start=1):
                    at = starts[cid - 1]
                    model = MODELS[cid % len(MODELS)]
                    for _ in range(pairs[cid - 1]):
                        key_id = owner if rng.random() < 0.7 else None
                        question = user_texts[rng.randrange(len(user_texts))]
                        answer = reply_texts[rng.randrange(len(reply_texts))]
                        mid += 1
                        yield (
                            mid,
                            cid,
                            "user",
                            question,
                            "complete",
                            model,
                            0,
                            0,
                            None,
                            None,
                            "",
                            at,
                            at,
                            key_id,
                            None,
                        )
                        latency = rng.randint(300, 4000)
                        done_at = at + timedelta(milliseconds=latency)
                        prompt = len(question) // 4 + rng.randint(20, 800)
                        mid += 1
                        yield (
                            mid,
                            cid,
                            "assistant",
                            answer,
                            "complete",
                            model,
                            prompt,
                            max(1, len(answer) // 4),
                            latency,
                            rng.randint(40, min(latency, 900)),
                            "",
                            done_at,
                            done_at,
                            key_id,
                            mid - 1,
                        )
                        at += timedelta(seconds=rng.uniform(30, 120))

            _copy(
                cursor,
                "messages",
                (
                    "id",
                    "conversation_id",
                    "role",
                    "content",
                    "status",
                    "model_name",
                    "prompt_tokens",
                    "completion_tokens",
                    "latency_ms",
                    "ttft_ms",
                    "error",
                    "created_at",
                    "updated_at",
                    "api_key_id",
                    "reply_to_id",
                ),
                messages(),
                progress,
            )
            progress.finish()

        for table in ("users", "api_keys", "conversations", "messages"):
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        cursor.execute(
            "CREATE TABLE bench_seed (version int, users int, conversations int, messages int, created_at timestamptz)"
        )
        cursor.execute(
            "INSERT INTO bench_seed VALUES (%s, %s, %s, %s, now())",
            [SEED_VERSION, size.users, size.conversations, size.messages],
        )
        conn.commit()
    with psycopg.connect(_conninfo(database_url), autocommit=True) as conn:
        started = time.monotonic()
        out.write("  VACUUM ANALYZE ...")
        out.flush()
        conn.execute("VACUUM ANALYZE")
        out.write(f" {time.monotonic() - started:.0f} s\n")


def heavy_users(database_url: str, size: SeedSize, count: int, conversations_each: int = 5) -> list[BenchUser]:
    """The ``count`` seeded users with the most conversations, with their keys and
    a few of their seeded conversations (newest first)."""
    with psycopg.connect(_conninfo(database_url)) as conn:
        rows = conn.execute(
            """
            SELECT u.id, u.email, u.tier FROM users u JOIN conversations c ON c.user_id = u.id
            WHERE u.id <= %s AND c.id <= %s
            GROUP BY u.id ORDER BY count(*) DESC, u.id LIMIT %s
            """,
            [size.users, size.conversations, count],
        ).fetchall()
        users = [BenchUser(id=uid, email=email, tier=tier, key=user_key(uid)) for uid, email, tier in rows]
        for user in users:
            user.conversation_ids = [
                cid
                for (cid,) in conn.execute(
                    "SELECT id FROM conversations WHERE user_id = %s AND id <= %s ORDER BY updated_at DESC, id DESC "
                    "LIMIT %s",
                    [user.id, size.conversations, conversations_each],
                )
            ]
        stored = dict(conn.execute("SELECT user_id, secret_hash FROM api_keys WHERE id <= %s", [size.users]).fetchall())
    for user in users:
        if stored.get(user.id) != keys.digest(user.key):
            raise RuntimeError(f"seeded key of user {user.id} does not match the database: reseed (--reseed)")
    return users


def fill_rollups(env: dict[str, str], out=sys.stderr) -> None:
    """The analytics rollups over the seeded history (``manage.py rollup`` resumes from
    its watermark, so on a reused database it only recomputes the current buckets)."""
    from django.core.management import get_commands

    from agentsflow.testing import manage

    if "rollup" not in get_commands():
        return
    started = time.monotonic()
    out.write("  analytics rollup ...")
    out.flush()
    manage("rollup", env=env, timeout=1200)
    out.write(f" {time.monotonic() - started:.0f} s\n")


def ensure_seeded(database_url: str, size: SeedSize, *, env: dict[str, str], reseed: bool = False, out=sys.stderr):
    """Reuse the seed in ``database_url`` or make a new one; always apply pending migrations."""
    from agentsflow.testing import manage

    started = time.monotonic()
    reused = not reseed and existing_seed(database_url, size)
    env = {**env, "DATABASE_URL": database_url}
    if reused:
        out.write(f"seed: reusing {database_name(database_url)} ({size})\n")
        manage("migrate", "--no-input", env=env, timeout=600)
    else:
        out.write(f"seed: loading {size} into {database_name(database_url)} (PostgreSQL COPY)\n")
        recreate_database(database_url)
        manage("migrate", "--no-input", env=env, timeout=600)
        load(database_url, size, out)
    fill_rollups(env, out)
    if not reused:
        out.write(f"seed: done in {time.monotonic() - started:.0f} s\n")
    return Seed(
        database_url=database_url,
        size=size,
        reused=reused,
        seconds=round(time.monotonic() - started, 1),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.seed", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help=f"a smaller seed ({QUICK})")
    group.add_argument("--tiny", action="store_true", help=f"the smoke test's seed ({TINY})")
    parser.add_argument("--reseed", action="store_true", help="drop the database and seed again")
    args = parser.parse_args(argv)
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith(("postgres://", "postgresql://")):
        parser.error("set DATABASE_URL to a PostgreSQL database (it is dropped and re-created when seeding)")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentsflow.settings")
    import django

    django.setup()
    size = TINY if args.tiny else QUICK if args.quick else FULL
    ensure_seeded(database_url, size, env={}, reseed=args.reseed)


if __name__ == "__main__":
    main()
