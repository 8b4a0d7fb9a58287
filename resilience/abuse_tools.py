"""Helpers for the abuse suite (resilience/tests/test_abuse_*.py).

- the API as the OpenAPI schema and the URL resolver describe it, so a sweep
  covers endpoints added later (analytics included) without being edited;
- a minimal valid request body for any operation, built from its schema;
- who owns which row, found by walking foreign keys up to the user;
- a real server process in production settings, and what to measure on it:
  resident memory of its process group, PostgreSQL backends, sockets to Redis;
- a raw WebSocket client that can stop reading or send what libraries will not.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentsflow.testing import (
    Platform,
    Server,
    fresh_database_env,
    loopback_production_env,
    pg_admin_connection,
    run_server,
    stop_running_generations,
)
from bench import procs

# --- the API's surface -----------------------------------------------------------------

HTTP_METHODS = ("get", "post", "put", "patch", "delete")
WRITE_METHODS = ("post", "put", "patch")
# Routes that are not API operations: the schema itself.
NOT_OPERATIONS = {"/api/schema/"}


@dataclass(frozen=True)
class Operation:
    method: str  # upper case
    path: str  # OpenAPI template, e.g. /api/conversations/{conversation_id}
    spec: dict = field(repr=False, hash=False, compare=False)

    @property
    def parameters(self) -> list[dict]:
        return self.spec.get("parameters", [])

    def params_in(self, where: str) -> list[dict]:
        return [p for p in self.parameters if p.get("in") == where]

    def body_schema(self, schema: dict) -> dict | None:
        content = (self.spec.get("requestBody") or {}).get("content", {})
        media = content.get("application/json")
        return resolve(schema, media["schema"]) if media else None

    def url(self, **values: Any) -> str:
        path = self.path
        for name, value in values.items():
            path = path.replace("{" + name + "}", str(value))
        return path

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def openapi_schema() -> dict:
    """The schema /api/schema/ serves, generated in process (hooks included)."""
    from drf_spectacular.generators import SchemaGenerator

    return json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True), default=str))


def operations(schema: dict) -> list[Operation]:
    return [
        Operation(method.upper(), path, spec)
        for path, item in sorted(schema["paths"].items())
        for method, spec in item.items()
        if method in HTTP_METHODS
    ]


def api_routes() -> set[str]:
    """Every /api/ and /v1/ route of the URL resolver, as OpenAPI-style templates
    (``<int:conversation_id>`` → ``{conversation_id}``); catch-all 404 routes left out."""
    return {route for route in all_routes() if route.startswith(("/api/", "/v1/")) and route not in NOT_OPERATIONS}


def all_routes() -> set[str]:
    """Every route of the URL resolver written with ``path()``, as a template."""
    from django.urls import URLPattern, URLResolver, get_resolver
    from django.urls.resolvers import RoutePattern

    found: set[str] = set()

    def walk(patterns, prefix: str) -> None:
        for entry in patterns:
            if not isinstance(entry.pattern, RoutePattern):
                continue  # regex routes here are only the JSON 404 catch-alls
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern):
                found.add("/" + _template(route))

    walk(get_resolver().url_patterns, "")
    return found


def _template(route: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


# --- request bodies from the schema ----------------------------------------------------

# Values that make a body valid where the schema alone cannot say (a real model
# name, a user message); everything else comes from the property's type.
DEFAULT_VALUES: dict[str, Any] = {
    "content": "probe",
    "title": "probe",
    "name": "probe",
    "display_name": "probe",
    "rating": "up",
    "comment": "probe",
    "stream": False,
    "scopes": ["chat"],
    "messages": [{"role": "user", "content": "probe"}],
}


def resolve(schema: dict, node: dict) -> dict:
    """``node`` with ``$ref`` followed and ``allOf`` merged into one object schema."""
    while "$ref" in node:
        target: Any = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    if "allOf" in node:
        merged: dict = {"type": "object", "properties": {}, "required": []}
        for part in node["allOf"]:
            part = resolve(schema, part)
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        return merged
    return node


def example(schema: dict, node: dict, values: dict[str, Any] | None = None, name: str = "") -> Any:
    """A minimal valid value for ``node``: required properties, plus any property
    named in ``values`` (DEFAULT_VALUES by default)."""
    values = DEFAULT_VALUES if values is None else values
    node = resolve(schema, node)
    if name in values:
        return values[name]
    for key in ("oneOf", "anyOf"):
        if key in node:
            return example(schema, node[key][0], values)
    if "enum" in node:
        return node["enum"][0]
    kind = node.get("type", "object")
    if kind == "object":
        properties = node.get("properties", {})
        wanted = [p for p in properties if p in node.get("required", []) or p in values]
        return {p: example(schema, properties[p], values, p) for p in wanted}
    if kind == "array":
        return [example(schema, node.get("items", {}), values)] * max(1, node.get("minItems", 0))
    if kind == "integer":
        return max(1, node.get("minimum", 1))
    if kind == "number":
        return node.get("minimum", 0)
    if kind == "boolean":
        return False
    if node.get("format") == "date-time":
        return "2030-01-01T00:00:00Z"
    return "probe" + "x" * max(0, node.get("minLength", 0) - 5)


def body_properties(schema: dict, operation: Operation) -> set[str]:
    body = operation.body_schema(schema)
    return set((body or {}).get("properties", {}))


# --- ownership ---------------------------------------------------------------------------

PROJECT_APPS = ("core", "chat", "analytics")


def owner_paths() -> dict:
    """For each project model whose rows belong to a user, the ORM lookup from a row
    to its owner's id (``user_id``, ``conversation__user_id``, ``pk`` for User)."""
    from django.apps import apps
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    paths = {user_model: "pk"}
    changed = True
    while changed:  # follow foreign keys until nothing new is reachable
        changed = False
        for model in apps.get_models():
            if model in paths or model._meta.app_label not in PROJECT_APPS:
                continue
            for fk in model._meta.get_fields():
                if fk.many_to_one and fk.concrete and fk.related_model in paths and fk.name != "fallback":
                    parent = paths[fk.related_model]
                    paths[model] = f"{fk.name}_id" if parent == "pk" else f"{fk.name}__{parent}"
                    changed = True
                    break
    return paths


def owned_ids(user_id: int) -> dict[str, set[int]]:
    """Primary keys of every row ``user_id`` owns, by model label."""
    return {
        model._meta.label: set(model.objects.filter(**{path: user_id}).values_list("pk", flat=True))
        for model, path in owner_paths().items()
    }


def snapshot(user_id: int) -> dict[str, dict[int, dict]]:
    """Every field of every row ``user_id`` owns (to prove nothing changed)."""
    from django.forms.models import model_to_dict

    result = {}
    for model, path in owner_paths().items():
        rows = model.objects.filter(**{path: user_id}).order_by("pk")
        result[model._meta.label] = {row.pk: model_to_dict(row) for row in rows}
        for row in rows:
            for name in ("created_at", "updated_at"):
                if hasattr(row, name):
                    result[model._meta.label][row.pk][name] = getattr(row, name)
    return result


def random_ids(count: int, avoid: set[int], seed: int = 6) -> list[int]:
    rng = random.Random(seed)
    picks = [0, 1, 2, 2**31 - 1, 2**63 - 1]
    while len(picks) < count:
        picks.append(rng.randrange(3, 10**9))
    return [i for i in picks if i not in avoid]


# --- a real server process -----------------------------------------------------------------


def production_env(tmp: Path, name: str, **extra: str) -> dict[str, str]:
    """A database of its own and the production settings, as deployed (HTTP on
    loopback, so no SSL redirect)."""
    return {
        **fresh_database_env(name, tmp),
        "AGENTSFLOW_VAR_DIR": str(tmp),
        **loopback_production_env("abuse-suite-" + "s" * 60),
        "LOCAL_MODEL_THREADS": "1",
        **extra,
    }


def fake_models(upstream: str, *models: dict) -> dict[str, str]:
    """Environment that adds the provider "fake" on the fake upstream and these models."""
    specs = [{"provider": "fake", "context_window": 8192, "max_output_tokens": 256, **model} for model in models] or [
        {"name": "echo", "provider": "fake", "upstream_model": "echo"}
    ]
    return {"EXTRA_PROVIDERS": "fake", "FAKE_BASE_URL": upstream, "AGENTSFLOW_MODELS": json.dumps(specs)}


@dataclass
class Live:
    """A server process on a prepared database, with the prepared user's key."""

    server: Server
    key: str
    email: str
    password: str
    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http://", "ws://") + "/ws/chat/"

    @property
    def database(self) -> str | None:
        url = self.env.get("DATABASE_URL")
        return url.rsplit("/", 1)[1] if url else None


@contextlib.contextmanager
def serve(
    platform: Platform, extra: dict[str, str] | None = None, *, workers: int = 1, log_path: Path | None = None
) -> Iterator[Live]:
    """A server on ``platform``'s database (prepare once, serve with several settings)."""
    env = {**platform.env, **(extra or {})}
    with run_server(env, workers=workers, log_path=log_path) as server:
        yield Live(server=server, key=platform.key, email=platform.email, password=platform.password, env=env)


# --- measurements ------------------------------------------------------------------------------


def rss_bytes(pgid: int) -> int:
    """Resident memory of every process in the group (a server started by run_server
    leads its own), added up."""
    return procs.memory(procs.in_process_groups({pgid})).rss_bytes


def pg_backends(database: str) -> int:
    """Backends connected to ``database`` (pg_stat_activity), as the admin sees them."""
    with pg_admin_connection(os.environ["DATABASE_URL"]) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).fetchone()
    return int(row[0])


def connections_to(pgid: int, remote_port: int) -> int:
    """Open TCP connections from the processes of a group to ``remote_port`` (6379 for
    Redis): what the server holds, whoever else shares that Redis."""
    inodes = set()
    for pid in procs.in_process_groups({pgid}):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[2].split(":")[1], 16) == remote_port and fields[9] in inodes:
                    count += 1
    return count


# --- in-process fixtures (test modules bind them by name: ``upstream = tools.upstream``) ------


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """The fake OpenAI-compatible upstream (bench.fake_upstream) on loopback."""
    from bench.fake_upstream import run_fake_upstream

    with run_fake_upstream() as base_url:
        yield base_url


@pytest.fixture
def fake_platform(settings, upstream, transactional_db):
    """In process: the provider "fake" on the fake upstream, an "echo" model as the
    default, and rate limits out of the way of a sweep."""
    from chat.models import LanguageModel

    settings.MODEL_PROVIDERS = {
        **settings.MODEL_PROVIDERS,
        "fake": {
            "kind": "openai",
            "base_url": upstream,
            "api_key": "",
            "connect_timeout": 1.0,
            "read_timeout": 5.0,
            "retries": 0,
        },
    }
    settings.CHAT_DEFAULT_MODEL = "echo"
    settings.RATE_LIMITS = {"premium": 100_000, "regular": 100_000, "anonymous": 100_000}
    settings.AUTH_RATE_LIMITS = ["100000/s"]
    LanguageModel.objects.create(name="echo", provider="fake", upstream_model="echo", context_window=4096)
    return settings


@pytest.fixture
async def generations_stopped():
    """Async tests end with no generation running and the provider's HTTP client closed."""
    yield
    await stop_running_generations()


def key_client(plaintext: str):
    """An ASGI test client that sends ``plaintext`` as a bearer key with every request."""
    from django.test import AsyncClient

    class KeyClient(AsyncClient):
        def generic(self, method, path, *args, headers=None, **kwargs):
            headers = {"Authorization": f"Bearer {plaintext}", **(headers or {})}
            return super().generic(method, path, *args, headers=headers, **kwargs)

    return KeyClient()


# --- a raw WebSocket client (for what client libraries will not do) ---------------------------


class RawWebSocket:
    """A blocking WebSocket client over a plain socket: it can shrink its receive
    buffer and then stop reading, send binary or invalid frames, and report the
    socket's own port so the server's side of the connection can be looked up."""

    def __init__(self, port: int, headers: dict[str, str], *, receive_buffer: int | None = None) -> None:
        import base64
        import socket

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /ws/chat/ HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ", 2)[1])

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        return data

    def send_frame(self, payload: bytes, opcode: int = 0x1) -> None:
        import struct

        header = bytes([0x80 | opcode])
        size = len(payload)
        if size < 126:
            header += bytes([0x80 | size])
        elif size < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", size)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", size)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_json(self, value: dict) -> None:
        self.send_frame(json.dumps(value).encode())

    def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame (server frames are not masked)."""
        import struct

        while len(self.buffer) < 2:
            self.buffer += self._recv()
        opcode, size = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        start = 2
        if size == 126:
            while len(self.buffer) < 4:
                self.buffer += self._recv()
            size, start = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif size == 127:
            while len(self.buffer) < 10:
                self.buffer += self._recv()
            size, start = struct.unpack("!Q", self.buffer[2:10])[0], 10
        while len(self.buffer) < start + size:
            self.buffer += self._recv()
        payload, self.buffer = self.buffer[start : start + size], self.buffer[start + size :]
        return opcode, payload

    def close_code(self) -> int | None:
        """Read frames until the server's close frame; its code (None if the socket just ends)."""
        import struct

        try:
            while True:
                opcode, payload = self.read_frame()
                if opcode == 0x8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        except (ConnectionError, OSError):
            return None

    def close(self) -> None:
        self.sock.close()


def server_side_state(server_port: int, client_port: int) -> str | None:
    """The TCP state of the server's end of one loopback connection (/proc/net/tcp),
    or None once the server has let go of it."""
    states = {
        "01": "ESTABLISHED",
        "04": "FIN_WAIT1",
        "05": "FIN_WAIT2",
        "06": "TIME_WAIT",
        "07": "CLOSE",
        "08": "CLOSE_WAIT",
        "0B": "CLOSING",
        "09": "LAST_ACK",
    }
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                    return states.get(state, state)
    return None
