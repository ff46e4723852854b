"""
Callback subscriptions (DESIGN.md section 4), the use cases: a frontend asks
for its jobs' events (all, or one job's, optionally only some types) to be
POSTed to a URL, lists and deletes what it asked for.  kree.events delivers.
The secret that signs the deliveries is shown once, when it is created.
"""

from __future__ import annotations

import secrets
from typing import Any

import attrs

from kree import urlguard
from kree.errors import JobNotFound
from kree.ids import looks_like_job_id, new_subscription_id
from kree.jobs import JobService
from kree.jobspec import InvalidJobSpec
from kree.records import Subscription
from kree.store import Store

EVENT_TYPES = ("job.created", "job.updated", "job.state", "job.message", "job.progress",
               "job.waiting", "job.product", "job.deleted")
FIELDS = frozenset({"url", "job", "events", "secret"})


@attrs.frozen
class SubscriptionRequest:
    """What a frontend asks for, as sent (checked by L{SubscriptionService.create})."""

    url: Any
    job_id: Any = None
    event_types: Any = None
    secret: Any = None


class SubscriptionService:
    def __init__(self, store: Store, jobs: JobService, reactor, *,
                 allowed_hosts: list[str], allow_private_addresses: bool) -> None:
        self._store = store
        self._jobs = jobs
        self._reactor = reactor
        self._allowed_hosts = allowed_hosts
        self._allow_private = allow_private_addresses

    async def create(self, frontend_id: int, request: SubscriptionRequest) -> Subscription:
        """
        Check and record a subscription; its C{secret} is generated when none
        is given.

        @raise InvalidJobSpec: 422 naming what is wrong (the URL, an unknown
            job, event types, the secret).
        """
        url = request.url
        urlguard.check_url(url, self._allowed_hosts)
        job_id = request.job_id
        if job_id is not None:
            if not isinstance(job_id, str) or not looks_like_job_id(job_id):
                raise InvalidJobSpec("job_not_found", f"no job {job_id!r}", job=str(job_id))
            try:
                await self._jobs.get(job_id, frontend_id=frontend_id)
            except JobNotFound:
                raise InvalidJobSpec("job_not_found", f"no job {job_id!r}", job=job_id) from None
        events = request.event_types
        if events is not None:
            if (not isinstance(events, list) or not events
                    or not all(isinstance(e, str) and e in EVENT_TYPES for e in events)):
                raise InvalidJobSpec(
                    "invalid_request",
                    f"events must be a non-empty list of {', '.join(EVENT_TYPES)}",
                    allowed=list(EVENT_TYPES))
            events = sorted(set(events))
        secret = request.secret
        if secret is None:
            secret = secrets.token_urlsafe(32)
        elif not isinstance(secret, str) or not 16 <= len(secret) <= 128 or not secret.isprintable():
            raise InvalidJobSpec("invalid_request", "secret must be 16 to 128 printable characters")
        # Last, as it resolves the host: internal addresses are refused now
        # and again before every delivery (DNS can change).
        await urlguard.check_reachable(self._reactor, url, self._allowed_hosts,
                                       self._allow_private)
        return await self._store.subscriptions.add(
            subscription_id=new_subscription_id(), frontend_id=frontend_id, url=url,
            secret=secret, job_id=job_id, event_types=events)

    async def list(self, frontend_id: int) -> list[Subscription]:
        return await self._store.subscriptions.list(frontend_id)

    async def get(self, subscription_id: str, frontend_id: int) -> Subscription:
        return await self._store.subscriptions.get(subscription_id, frontend_id)

    async def delete(self, subscription_id: str, frontend_id: int) -> None:
        await self._store.subscriptions.delete(subscription_id, frontend_id)
