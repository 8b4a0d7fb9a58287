"""API key format: ``afk_`` + 8-char public id + 32-char secret + 6-char CRC32 checksum.

The fixed ``afk_`` prefix lets secret scanners find leaked keys; the checksum lets
us reject typos and truncated keys without touching the database. 32 base62
characters carry about 190 bits of entropy, so a plain SHA-256 digest is a safe
way to store the secret (no slow hash needed for a key nobody chose).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib
from dataclasses import dataclass

MARKER = "afk_"
ID_LENGTH = 8
SECRET_LENGTH = 32
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(MARKER) + ID_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH
PREFIX_LENGTH = len(MARKER) + ID_LENGTH
ALPHABET = string.digits + string.ascii_letters
_ALPHABET_SET = frozenset(ALPHABET)


@dataclass(frozen=True, slots=True)
class NewKey:
    plaintext: str
    prefix: str
    secret_hash: str


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode())
    chars = []
    for _ in range(CHECKSUM_LENGTH):
        value, rem = divmod(value, 62)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


def digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate() -> NewKey:
    body = MARKER + _random(ID_LENGTH) + _random(SECRET_LENGTH)
    plaintext = body + _checksum(body)
    return NewKey(plaintext=plaintext, prefix=plaintext[:PREFIX_LENGTH], secret_hash=digest(plaintext))


def prefix_of(candidate: str) -> str | None:
    """The public prefix of a well-formed key, or None for anything malformed."""
    if len(candidate) != KEY_LENGTH or not candidate.startswith(MARKER):
        return None
    rest = candidate[len(MARKER) :]
    if not _ALPHABET_SET.issuperset(rest):
        return None
    body, checksum = candidate[:-CHECKSUM_LENGTH], candidate[-CHECKSUM_LENGTH:]
    if not hmac.compare_digest(_checksum(body), checksum):
        return None
    return candidate[:PREFIX_LENGTH]


def matches(candidate: str, secret_hash: str) -> bool:
    return hmac.compare_digest(digest(candidate), secret_hash)
