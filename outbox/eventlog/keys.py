"""The event log's key (OUTBOX_SEAL_KEY): it seals the chains and tags each event at write time.

Whoever can write the database but does not hold the key can neither forge a seal that verifies
nor write an event that the consumers accept. Keep it out of the database.
"""

import functools
import hashlib

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

HEX_PREFIX = "hex:"
KEY_BYTES = 32


def parse_key(text: str) -> bytes:
    """The key OUTBOX_SEAL_KEY names: `hex:` and hex digits for raw bytes, else its text.

    Raises ImproperlyConfigured, saying what to set, when a `hex:` key is not hex.
    """
    if not text.startswith(HEX_PREFIX):
        return text.encode()
    digits = text[len(HEX_PREFIX) :]
    try:
        key = bytes.fromhex(digits)
    except ValueError:
        key = b""
    if not key:
        raise ImproperlyConfigured(
            f"OUTBOX_SEAL_KEY starts with {HEX_PREFIX!r}, but what follows is not an even number of hex "
            f"digits (got {len(digits)} characters). Set it to the value recorded when the log's key was "
            "chosen; for a log with no seals yet, `python manage.py outbox_seal_key --new` prints a new one."
        )
    return key


def seal_key() -> bytes:
    """The chain's key: OUTBOX_SEAL_KEY, or one derived from SECRET_KEY."""
    return _key(str(getattr(settings, "OUTBOX_SEAL_KEY", "")), settings.SECRET_KEY)


# Every event write asks for the key: remember it per setting (a test may override either).
@functools.lru_cache(maxsize=8)
def _key(configured: str, secret_key: str) -> bytes:
    if configured:
        return parse_key(configured)
    return hashlib.sha256(b"outbox-seal:" + secret_key.encode()).digest()


def key_setting(key: bytes) -> str:
    """The value of OUTBOX_SEAL_KEY that names `key`."""
    return HEX_PREFIX + key.hex()
