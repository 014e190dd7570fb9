"""WooCommerce webhooks as the store runs them (``class-wc-webhook.php``, see
shared/reference/woocommerce-webhooks-and-orders.md): the ``/wc/v3/webhooks`` REST routes and
deliveries of ``customer.created``/``updated``/``deleted`` for changes made through ``/__sim``.

* A change queues one delivery per active webhook of its topic; an identical delivery (same
  webhook, same customer) still pending is not queued twice (Action Scheduler's merge).
* One worker sends them in order, after ``delivery_delay_ms``; the body is built at send time
  (``GET /customers/{id}``, with ``_links``; ``{"id": N}`` for deleted; the REST error for a
  customer gone meanwhile), signed with ``X-WC-Webhook-Signature`` = base64 HMAC-SHA256.
* A status 200-302 is a success and resets ``failure_count``; anything else counts one failure,
  and a failure when the count is already above ``max_failures`` (5) disables the webhook (the
  7th in a row). No retries. Creating a webhook pings its URL (form body ``webhook_id=N``).
* Modes (``PUT /__sim/webhooks/config``): ``duplicate`` sends every delivery twice,
  ``reorder`` sends each group of queued deliveries newest first, with bodies built when queued
  (a late, older version), ``same_delivery_id`` gives every delivery one delivery id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tools.woosim import data, wp

TOPICS = ("customer.created", "customer.updated", "customer.deleted")
MAX_FAILURES = 5
USER_AGENT = "WooCommerce/{wc} Hookshot (WordPress/{wp})"


def signature(secret: str, body: bytes) -> str:
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass
class Webhook:
    id: int
    name: str
    topic: str
    delivery_url: str
    secret: str
    status: str = "active"
    failure_count: int = 0
    pending_delivery: bool = True
    created: float = field(default_factory=time.time)
    modified: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        resource, event = self.topic.split(".", 1)
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "topic": self.topic,
            "resource": resource,
            "event": event,
            "hooks": [],
            "delivery_url": self.delivery_url,
            "date_created": data.wp_date(self.created),
            "date_created_gmt": data.wp_date(self.created),
            "date_modified": data.wp_date(self.modified),
            "date_modified_gmt": data.wp_date(self.modified),
        }


@dataclass
class WebhookConfig:
    delivery_delay_ms: int = 0
    duplicate: bool = False
    reorder: bool = False
    same_delivery_id: bool = False
    max_failures: int = MAX_FAILURES

    def update(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            if name not in self.__dataclass_fields__:
                raise ValueError(f"unknown webhook setting {name!r}")
            current = getattr(self, name)
            if type(value) is not type(current):
                raise ValueError(f"{name} must be a {type(current).__name__}")
            setattr(self, name, value)


@dataclass
class Delivery:
    webhook_id: int
    resource_id: int
    body: bytes | None = None  # built when queued (reorder mode); else at send time
    changed_at: float = field(default_factory=time.time)  # when the store made the change


# The customer's body as GET /customers/{id} answers it, or None when it is gone.
BodyOf = Callable[[int], bytes | None]


class WebhookHub:
    """The store's webhooks and their delivery queue; one per simulator."""

    def __init__(self, source_url: str, body_of: BodyOf, wc: str, wp_version: str) -> None:
        self.source_url = source_url.rstrip("/") + "/"
        self.body_of = body_of
        self.user_agent = USER_AGENT.format(wc=wc, wp=wp_version)
        self.config = WebhookConfig()
        self.hooks: dict[int, Webhook] = {}
        self.log: list[dict[str, Any]] = []
        self._next_id = 1
        self._queue: list[Delivery] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    # -- REST -----------------------------------------------------------------------------------

    async def create(self, body: dict[str, Any]) -> Webhook:
        if "id" in body:
            raise wp.WPError(
                "woocommerce_rest_shop_webhook_exists", "Cannot create existing webhook.", 400
            )
        for name in ("topic", "delivery_url"):
            if name not in body:
                raise wp.WPError(
                    "rest_missing_callback_param", f"Missing parameter(s): {name}", 400
                )
        topic, url = body["topic"], body["delivery_url"]
        if topic not in TOPICS:
            raise wp.WPError(
                "woocommerce_rest_shop_webhook_invalid_topic", "Webhook topic is required.", 400
            )
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise wp.WPError(
                "woocommerce_rest_shop_webhook_invalid_delivery_url",
                "Webhook delivery URL must be a valid URL starting with http:// or https://.",
                400,
            )
        hook = Webhook(
            id=self._next_id,
            name=str(body.get("name") or f"Webhook created on {data.wp_date(time.time())}"),
            topic=topic,
            delivery_url=url,
            secret=str(body.get("secret") or secrets.token_urlsafe(37)[:50]),
        )
        self._next_id += 1
        self.hooks[hook.id] = hook
        await self.ping(hook)  # REST create pings and ignores the result
        return hook

    def get(self, hook_id: int, *, deleting: bool = False) -> Webhook:
        hook = self.hooks.get(hook_id)
        if hook is None:
            raise wp.WPError(
                "woocommerce_rest_shop_webhook_invalid_id",
                "Invalid webhook ID.",
                404 if deleting else 400,
            )
        return hook

    def update(self, hook_id: int, body: dict[str, Any]) -> Webhook:
        hook = self.get(hook_id)
        status = body.get("status")
        if status is not None:
            if status not in ("active", "paused", "disabled"):
                raise wp.WPError(
                    "woocommerce_rest_shop_webhook_invalid_status", "Invalid status.", 400
                )
            hook.status = status  # re-activating does not reset failure_count
        for name in ("name", "delivery_url", "topic"):
            if name in body:
                setattr(hook, name, body[name])
        if body.get("secret"):
            hook.secret = str(body["secret"])
        hook.modified = time.time()
        return hook

    def delete(self, hook_id: int, force: bool) -> Webhook:
        hook = self.get(hook_id, deleting=True)
        if not force:
            raise wp.WPError(
                "woocommerce_rest_trash_not_supported", "Webhooks do not support trashing.", 501
            )
        del self.hooks[hook_id]
        return hook

    # -- deliveries -----------------------------------------------------------------------------

    def changed(self, topic: str, resource_id: int, deleted_body: bytes | None = None) -> None:
        """A customer changed: queue a delivery to each active webhook of ``topic``."""
        for hook in list(self.hooks.values()):
            if hook.topic != topic or hook.status != "active":
                continue
            if any(
                d.webhook_id == hook.id and d.resource_id == resource_id and not self.config.reorder
                for d in self._queue
            ):
                continue  # an identical pending action is not added again
            body = deleted_body
            if body is None and self.config.reorder:
                body = self.body_of(resource_id)
            self._queue.append(Delivery(hook.id, resource_id, body))
        self._ensure_worker()
        self._wake.set()

    async def ping(self, hook: Webhook) -> None:
        try:
            response = await self._client().post(
                hook.delivery_url,
                content=f"webhook_id={hook.id}".encode(),
                headers={
                    "User-Agent": self.user_agent,
                    "Content-Type": "application/x-www-form-urlencoded",
                },
                timeout=5.0,
            )
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        hook.pending_delivery = not ok
        self.log.append({"webhook_id": hook.id, "topic": "ping", "ok": ok, "at": time.time()})

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.config.delivery_delay_ms:
                await asyncio.sleep(self.config.delivery_delay_ms / 1000)
            batch, self._queue = self._queue, []
            if self.config.reorder:
                batch.reverse()
            for delivery in batch:
                copies = 2 if self.config.duplicate else 1
                for _ in range(copies):
                    await self._deliver(delivery)

    async def _deliver(self, delivery: Delivery) -> None:
        hook = self.hooks.get(delivery.webhook_id)
        if hook is None:  # deleted webhooks are skipped
            return
        body = delivery.body
        if body is None:
            body = self.body_of(delivery.resource_id) or wp.encode(
                {
                    "code": "woocommerce_rest_invalid_id",
                    "message": "Invalid resource ID.",
                    "data": {"status": 404},
                }
            )
        second = 0 if self.config.same_delivery_id else int(time.time())
        delivery_id = hashlib.md5(f"{hook.id}{second}".encode()).hexdigest()  # noqa: S324
        resource, event = hook.topic.split(".", 1)
        headers = {
            "User-Agent": self.user_agent,
            "Content-Type": "application/json",
            "X-WC-Webhook-Source": self.source_url,
            "X-WC-Webhook-Topic": hook.topic,
            "X-WC-Webhook-Resource": resource,
            "X-WC-Webhook-Event": event,
            "X-WC-Webhook-Signature": signature(hook.secret, body),
            "X-WC-Webhook-ID": str(hook.id),
            "X-WC-Webhook-Delivery-ID": delivery_id,
        }
        started = time.time()
        try:
            response = await self._client().post(
                hook.delivery_url, content=body, headers=headers, timeout=60.0
            )
            status: int | None = response.status_code
        except httpx.HTTPError:
            status = None
        ok = status is not None and 200 <= status <= 302
        if ok:
            hook.failure_count = 0
        elif hook.failure_count > self.config.max_failures:
            hook.status = "disabled"
        else:
            hook.failure_count += 1
        self.log.append(
            {
                "webhook_id": hook.id,
                "topic": hook.topic,
                "resource_id": delivery.resource_id,
                "status": status,
                "ok": ok,
                "changed_at": delivery.changed_at,
                "at": started,
            }
        )

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=False)
        return self._http

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._http is not None:
            await self._http.aclose()

    def snapshot(self) -> dict[str, Any]:
        return {
            "config": self.config.__dict__,
            "webhooks": [
                {
                    **h.as_json(),
                    "failure_count": h.failure_count,
                    "pending_delivery": h.pending_delivery,
                }
                for h in self.hooks.values()
            ],
            "deliveries": self.log[-500:],
            "queued": len(self._queue),
        }
