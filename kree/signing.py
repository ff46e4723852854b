"""
Signing callback deliveries (DESIGN.md section 4), as Standard Webhooks do.

Each POST carries KREE-Event-Id, KREE-Timestamp (Unix seconds) and
KREE-Signature: v1=<hex>, the HMAC-SHA256 with the subscription's secret over
"<id>.<timestamp>.<body>".  A listener recomputes it over the raw body,
compares in constant time, and refuses old timestamps (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import time

SCHEME = "v1"
TOLERANCE_SECONDS = 300


class InvalidSignature(Exception):
    pass


def signature(secret: str, event_id: str, timestamp: str, body: bytes) -> str:
    message = f"{event_id}.{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def headers(secret: str, event_id: int | str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    return {
        "KREE-Event-Id": str(event_id),
        "KREE-Timestamp": timestamp,
        "KREE-Signature": f"{SCHEME}={signature(secret, str(event_id), timestamp, body)}",
    }


def verify(secret: str, event_id: str | None, timestamp: str | None, signature_header: str | None,
           body: bytes, *, now: float | None = None, tolerance: int = TOLERANCE_SECONDS) -> None:
    """
    @raise InvalidSignature: missing headers, a stale timestamp, or a
        signature that does not match this body.
    """
    if not (event_id and timestamp and signature_header):
        raise InvalidSignature("missing KREE-Event-Id, KREE-Timestamp or KREE-Signature")
    try:
        sent = int(timestamp)
    except ValueError:
        raise InvalidSignature("KREE-Timestamp is not a number") from None
    now = time.time() if now is None else now
    if abs(now - sent) > tolerance:
        raise InvalidSignature(f"timestamp is {int(now - sent)} s away from now")
    expected = signature(secret, event_id, timestamp, body)
    for part in signature_header.split():
        scheme, _, value = part.partition("=")
        if scheme == SCHEME and hmac.compare_digest(value, expected):
            return
    raise InvalidSignature("signature does not match")
