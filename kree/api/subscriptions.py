"""
Callback subscriptions (DESIGN.md section 4): a frontend asks for its jobs'
events (all, or one job's, optionally only some types) to be POSTed to a URL.
The secret that signs the deliveries is shown once, in the answer to POST.
"""

from __future__ import annotations

import secrets
from typing import Any

from kree import urlguard
from kree.api.resource import ApiError, Call, Response, Router
from kree.errors import JobNotFound
from kree.ids import looks_like_job_id, new_subscription_id
from kree.records import Subscription, isoformat

EVENT_TYPES = ("job.created", "job.updated", "job.state", "job.message", "job.progress",
               "job.waiting", "job.product", "job.deleted")


def subscription_json(sub: Subscription, *, secret: bool = False) -> dict[str, Any]:
    body = {
        "id": sub.id,
        "url": sub.url,
        "job": sub.job_id,
        "events": sub.event_types,
        "status": sub.status,
        "created": isoformat(sub.created_at),
        "consecutive_failures": sub.consecutive_failures,
        "last_error": sub.last_error,
    }
    if secret:
        body["secret"] = sub.secret
    return body


class SubscriptionsApi:
    def __init__(self, config, store, reactor) -> None:
        self._config = config
        self._store = store
        self._reactor = reactor

    def register(self, router: Router) -> None:
        router.add("POST", "/v1/subscriptions", self.create, "subscription.create")
        router.add("GET", "/v1/subscriptions", self.list)
        router.add("GET", "/v1/subscriptions/{sid}", self.get)
        router.add("DELETE", "/v1/subscriptions/{sid}", self.delete, "subscription.delete")

    async def create(self, call: Call) -> Response:
        body = call.json_object()
        unknown = sorted(set(body) - {"url", "job", "events", "secret"})
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown fields {unknown}", unknown=unknown)
        url = body.get("url")
        urlguard.check_url(url, self._config.fetch.allowed_hosts)
        job_id = body.get("job")
        if job_id is not None:
            if not isinstance(job_id, str) or not looks_like_job_id(job_id):
                raise ApiError(422, "job_not_found", f"no job {job_id!r}", job=str(job_id))
            try:
                await self._store.jobs.get(job_id, call.frontend.id)
            except JobNotFound:
                raise ApiError(422, "job_not_found", f"no job {job_id!r}", job=job_id) from None
        events = body.get("events")
        if events is not None:
            if (not isinstance(events, list) or not events
                    or not all(isinstance(e, str) and e in EVENT_TYPES for e in events)):
                raise ApiError(422, "invalid_request",
                               f"events must be a non-empty list of {', '.join(EVENT_TYPES)}",
                               allowed=list(EVENT_TYPES))
            events = sorted(set(events))
        secret = body.get("secret")
        if secret is None:
            secret = secrets.token_urlsafe(32)
        elif not isinstance(secret, str) or not 16 <= len(secret) <= 128 or not secret.isprintable():
            raise ApiError(422, "invalid_request", "secret must be 16 to 128 printable characters")
        # Last, as it resolves the host: internal addresses are refused now
        # and again before every delivery (DNS can change).
        fetch = self._config.fetch
        await urlguard.check_reachable(self._reactor, url, fetch.allowed_hosts,
                                       fetch.allow_private_addresses)
        sub = await self._store.subscriptions.add(
            subscription_id=new_subscription_id(), frontend_id=call.frontend.id, url=url,
            secret=secret, job_id=job_id, event_types=events)
        return Response(201, subscription_json(sub, secret=True),
                        {"location": f"/v1/subscriptions/{sub.id}"})

    async def list(self, call: Call) -> dict[str, Any]:
        subs = await self._store.subscriptions.list(call.frontend.id)
        return {"subscriptions": [subscription_json(s) for s in subs]}

    async def get(self, call: Call) -> dict[str, Any]:
        return subscription_json(await self._store.subscriptions.get(call.params["sid"],
                                                                     call.frontend.id))

    async def delete(self, call: Call) -> Response:
        await self._store.subscriptions.delete(call.params["sid"], call.frontend.id)
        return Response(204, None)
