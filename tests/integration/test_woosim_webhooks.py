"""The simulator's webhooks as WooCommerce runs them, driven by woosync's store client
(``WooClient.list_webhooks`` / ``create_webhook`` / ``update_webhook`` / ``delete_webhook``)
against a receiver that records what arrives and answers with a status the test chooses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.woocommerce import StoreBadResponse, StoreConfig, WooClient
from shared.woocommerce.webhooks import signature_valid
from tests.helpers import listening_socket, uvicorn_serving, wait_until
from tools.woosim.testing import SimHandle, running_simulator

pytestmark = pytest.mark.timeout(90)
SECRET = "Abc123Secret"


@dataclass
class Receiver:
    url: str
    status: int = 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver("")

    async def receive(request: Request) -> Response:
        state.received.append((dict(request.headers), await request.body()))
        return Response(status_code=state.status)

    app = Starlette(routes=[Route("/hook", receive, methods=["POST"])])
    sock = listening_socket()
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    async with uvicorn_serving(config, sock, failure="the receiver did not start", wait_s=20):
        yield state


@asynccontextmanager
async def client_of(sim: SimHandle) -> AsyncIterator[WooClient]:
    config = StoreConfig(
        url=sim.url,
        consumer_key=sim.consumer_key,
        consumer_secret=SecretStr(sim.consumer_secret),
        auth="oauth1",
    )
    async with WooClient(config) as client:
        yield client


async def test_create_pings_then_changes_are_delivered_signed() -> None:
    async with (
        running_simulator(customers=5, seed=3) as sim,
        receiver() as hook,
        client_of(sim) as client,
    ):
        created = await client.create_webhook(
            name="n", topic="customer.updated", delivery_url=hook.url, secret=SECRET
        )
        assert created["status"] == "active" and "secret" not in created
        headers, body = hook.received[0]  # the ping arrived before the answer
        assert body == f"webhook_id={created['id']}".encode()
        assert "x-wc-webhook-signature" not in headers
        listed = await client.list_webhooks()
        assert [h["id"] for h in listed] == [created["id"]]

        customer = (await sim.customers())[0]
        await sim.update_customer(customer["id"], first_name="Signed")
        await wait_until(lambda: len(hook.received) == 2, "the delivery", 20)
        headers, body = hook.received[1]
        assert headers["x-wc-webhook-topic"] == "customer.updated"
        assert headers["x-wc-webhook-id"] == str(created["id"])
        assert headers["user-agent"].startswith("WooCommerce/")
        assert headers["content-type"] == "application/json"
        assert signature_valid(SECRET, body, headers["x-wc-webhook-signature"])
        assert b'"first_name":"Signed"' in body and b'"_links"' in body

        with pytest.raises(StoreBadResponse) as refused:
            await client.create_webhook(
                name="n", topic="order.created", delivery_url=hook.url, secret=SECRET
            )
        assert refused.value.code == "woocommerce_rest_shop_webhook_invalid_topic"
        assert await client.delete_webhook(created["id"]) is True
        assert await client.delete_webhook(created["id"]) is False
        assert await client.list_webhooks() == []


async def test_the_seventh_failure_in_a_row_disables_and_reactivating_keeps_the_count() -> None:
    async with running_simulator(customers=12, seed=4) as sim, receiver() as hook:
        ids = [c["id"] for c in await sim.customers()]
        async with client_of(sim) as client:
            created = await client.create_webhook(
                name="n", topic="customer.updated", delivery_url=hook.url, secret=SECRET
            )
            hook.status = 500
            for n, woo_id in enumerate(ids[:7], start=1):
                await sim.update_customer(woo_id, first_name=f"fail {n}")
                await wait_until(lambda n=n: len(hook.received) == 1 + n, f"delivery {n}", 20)
                state = (await client.list_webhooks())[0]["status"]
                assert state == ("disabled" if n == 7 else "active"), n
            await sim.update_customer(ids[7], first_name="not sent")  # disabled: nothing queued
            again = await client.update_webhook(created["id"], {"status": "active"})
            assert again["status"] == "active"
            assert len(hook.received) == 8
            # WooCommerce keeps the failure count: one more failure disables it again.
            await sim.update_customer(ids[8], first_name="fails again")
            await wait_until(lambda: len(hook.received) == 9, "the next delivery", 20)
            assert (await client.list_webhooks())[0]["status"] == "disabled"
            state_of = await sim.webhooks()
            hooks: list[dict[str, Any]] = state_of["webhooks"]
            assert hooks[0]["failure_count"] == 6
            # Sent in order: the change made while disabled was never queued.
            sent = [d.get("resource_id") for d in state_of["deliveries"]]
            assert ids[7] not in sent and sent[-1] == ids[8]
