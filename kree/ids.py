"""
Identifiers.

A job id is an opaque, URL-safe string (clients must not parse it).  Inside
KREE it is 26 characters of lower-case Crockford base32: 48 bits of
milliseconds since the epoch, then 80 random bits, as in ULID.  Ids therefore
sort by creation time, which lets one index serve a frontend's job list and
its cursor pagination.
"""

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _base32(number: int, length: int) -> str:
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_job_id(now: float | None = None) -> str:
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    return _base32(millis, 10) + _base32(secrets.randbits(80), 16)


def new_subscription_id() -> str:
    return "sub_" + secrets.token_urlsafe(15)


def looks_like_job_id(value: str) -> bool:
    """Cheap check before a lookup; a bad id is simply not found."""
    return len(value) == 26 and all(c in _ALPHABET for c in value)
