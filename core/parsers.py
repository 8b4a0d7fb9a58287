import re

import orjson
from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

from core.exceptions import PayloadTooLarge

# A JSON "\u0000" escape not itself escaped by a preceding backslash.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
# No request of ours nests deeper than a few levels; a value nested hundreds deep
# makes str() and repr() in validation recurse past Python's limit (a 500).
MAX_JSON_DEPTH = 32


def too_deep(value, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests arrays and objects deeper than ``limit`` (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_json_body(body: bytes):
    """Parse a JSON request body, rejecting what PostgreSQL or our code cannot take.

    Invalid UTF-8 and nesting deeper than MAX_JSON_DEPTH fail to parse; NUL
    characters are refused because PostgreSQL text cannot hold them.
    """
    if not body.strip():
        raise ParseError("The request body is empty; send a JSON object.")
    if b"\x00" in body or (b"\\u0000" in body and _NUL_ESCAPE.search(body)):
        raise ParseError("JSON parse error: NUL characters are not allowed.")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"JSON parse error: {exc}") from None
    if too_deep(value):
        raise ParseError(f"JSON parse error: nested deeper than {MAX_JSON_DEPTH} levels.")
    return value


def read_limited(stream, limit: int) -> bytes:
    """Read at most ``limit`` bytes; a longer body is refused, whatever Content-Length said."""
    if stream is None:
        return b""
    body = stream.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge()
    return body


class StrictJSONParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        return parse_json_body(read_limited(stream, settings.DATA_UPLOAD_MAX_MEMORY_SIZE))
