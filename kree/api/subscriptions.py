"""
/v1/subscriptions: callback subscriptions in JSON over
L{kree.subscriptions.SubscriptionService}.  The secret that signs the
deliveries is shown once, in the answer to POST.
"""

from __future__ import annotations

from typing import Any

from kree.errors import HttpError
from kree.records import Subscription, isoformat
from kree.subscriptions import FIELDS, SubscriptionRequest, SubscriptionService
from kree.web.routing import Call, Response, Router


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
    def __init__(self, subscriptions: SubscriptionService) -> None:
        self._subscriptions = subscriptions

    def register(self, router: Router) -> None:
        router.add("POST", "/v1/subscriptions", self.create, "subscription.create")
        router.add("GET", "/v1/subscriptions", self.list)
        router.add("GET", "/v1/subscriptions/{sid}", self.get)
        router.add("DELETE", "/v1/subscriptions/{sid}", self.delete, "subscription.delete")

    async def create(self, call: Call) -> Response:
        body = call.json_object()
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise HttpError(422, "invalid_request", f"unknown fields {unknown}", unknown=unknown)
        sub = await self._subscriptions.create(call.frontend.id, SubscriptionRequest(
            url=body.get("url"), job_id=body.get("job"), event_types=body.get("events"),
            secret=body.get("secret")))
        return Response(201, subscription_json(sub, secret=True),
                        {"location": f"/v1/subscriptions/{sub.id}"})

    async def list(self, call: Call) -> dict[str, Any]:
        subs = await self._subscriptions.list(call.frontend.id)
        return {"subscriptions": [subscription_json(s) for s in subs]}

    async def get(self, call: Call) -> dict[str, Any]:
        return subscription_json(await self._subscriptions.get(call.params["sid"],
                                                               call.frontend.id))

    async def delete(self, call: Call) -> Response:
        await self._subscriptions.delete(call.params["sid"], call.frontend.id)
        return Response(204, None)
