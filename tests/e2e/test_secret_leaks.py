"""The consumer secret is stored encrypted and shows up nowhere else, whatever path a sync takes.

Every service runs as a real process at DEBUG level against a simulated store over TLS with
query-string auth, the mode in which the secret travels in every request URL and the store
echoes it back in each ``Link`` header. The sync meets a customer the database refuses (retry
tiers, then parking, then the ``retry`` action and the same again); a second job's crawl is
refused by the store; the api is sent requests it refuses with the secret in them. Then the
secret is searched for, in every form it could take, in: every service's log, every api and
tracker answer (headers and body), every row of every table, and every message that crossed the
broker (a tap queue bound to ``#`` on the exchange, plus whatever is left in every queue of the
topology, parking included).

The secret is deliberately not in WooCommerce's ``cs_<hex>`` shape, so the log filter's shape
rule cannot hide a leak: only the rules that keep the secret from being written count.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import aio_pika
import httpx
import pytest

from shared import db
from shared.crypto import SecretBox
from shared.paths import CONNECTION_PATH, CONNECTIONS_PATH
from shared.settings import Settings
from shared.topology import Topology
from tests.e2e.harness import ROUTE, Org, Stack, new_org, wait_final
from tools.woosim.testing import SimHandle, spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SECRET = "cs_LeakProbe+7f3a/9b2e=c41d_0a5e6b93"
WRONG_SECRET = "wrong-" + SECRET  # a leak of the refused secret is a hit as well
CUSTOMERS = 240
BATCH_SIZE = 50
WAIT_S = 60.0
# Over the customer table's 320-character limit, yet an address to WordPress: the store keeps
# it, and the syncer refuses it on every attempt.
POISON_EMAIL = "p" * 320 + "@example.com"


def secret_forms(secret: str) -> set[str]:
    """Every spelling a leak could take: as is, URL-encoded, JSON- and WordPress-escaped,
    and the raw bytes as PostgreSQL prints a bytea or as base64."""
    raw = secret.encode()
    return {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        secret.replace("/", "\\/"),
        raw.hex(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
    }


FORMS = secret_forms(SECRET)


def leaks(captured: list[tuple[str, str]]) -> list[str]:
    """Where (label) any form of the secret occurs, also after percent-decoding (a store
    re-encodes query values its own way: this one leaves ``+`` as it is)."""
    return [
        label
        for label, text in captured
        if any(form in seen for seen in (text, unquote(text)) for form in FORMS)
    ]


def describe(response: httpx.Response) -> str:
    headers = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
    return f"{response.status_code}\n{headers}\n\n{response.text}"


class Tap:
    """Every message published to the namespace's exchange, with its properties and headers."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def record(self, where: str, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        info = repr(message.info())  # routing key, message id, headers and the other properties
        text = info + "\n" + message.body.decode()
        self.messages.append((f"{where} {message.routing_key}", text))

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.record("published", message)


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    with spawn_simulator(CUSTOMERS, seed=7, tls=True, consumer_secret=SECRET) as handle:
        handle.add_customer_sync(email=POISON_EMAIL, first_name="Poison")
        yield handle


@pytest.fixture
async def tap(settings: Settings) -> AsyncIterator[Tap]:
    """A queue bound with ``#`` before any service starts, so it sees every publish."""
    tap = Tap()
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            settings.namespace, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        await queue.consume(tap.on_message, no_ack=True)
        yield tap
    finally:
        await connection.close()


async def drain(settings: Settings, tap: Tap) -> None:
    """Read whatever is left in every queue of the topology (parking, retry tiers, work)."""
    topology = Topology(settings.namespace, tuple(settings.retry_delays_ms))
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        for name in topology.queue_names():
            queue = await channel.get_queue(name, ensure=True)
            for _ in range(10_000):
                message = await queue.get(no_ack=True, fail=False, timeout=5)
                if message is None:
                    break
                tap.record(f"left in {name}", message)
    finally:
        await connection.close()


def start_body(org: Org, sim: SimHandle, secret: str, **config: Any) -> dict[str, Any]:
    return {
        "action": "start",
        "org_id": org.org_id,
        "config": {
            "url": sim.url, "consumer_key": sim.consumer_key, "consumer_secret": secret,
            "auth": "query", "verify_tls": False, **config,
        },
        "options": {"batch_size": BATCH_SIZE, "concurrency": 2},
    }


async def test_the_secret_appears_nowhere_but_encrypted(
    settings: Settings, tmp_path: Path, sim: SimHandle, tap: Tap
) -> None:
    # The hazard is real: this store echoes the secret in the Link header of a query-auth list.
    async with httpx.AsyncClient(verify=sim.verify(), timeout=10) as client:
        echoed = await client.get(
            f"{sim.url}/wp-json/wc/v3/customers",
            params={"consumer_key": sim.consumer_key, "consumer_secret": SECRET, "per_page": 1},
        )
    assert echoed.status_code == 200 and leaks([("Link", echoed.headers["Link"])])

    stack = Stack(settings, tmp_path, extra_env={"WOOSYNC_LOG_LEVEL": "DEBUG"})
    answers: list[tuple[str, str]] = []
    try:
        stack.start_all()
        await stack.wait_ready(timeout_s=WAIT_S)
        org = await new_org(settings)
        api = httpx.AsyncClient(base_url=stack.api_url, headers=org.headers, timeout=30)
        async with api:
            started = await api.post(ROUTE, json=start_body(org, sim, SECRET))
            answers.append(("start", describe(started)))
            assert started.status_code == 202, started.text
            job_id = started.json()["job_id"]

            refusals = {
                "wrong secret": start_body(org, sim, WRONG_SECRET),
                "bad auth mode": start_body(org, sim, SECRET, auth="digest"),
                "unknown field": start_body(org, sim, SECRET, password=SECRET),
                "not a boolean": start_body(org, sim, SECRET, verify_tls="no"),
            }
            for label, body in refusals.items():
                refused = await api.post(ROUTE, json=body)
                answers.append((label, describe(refused)))
                assert refused.status_code == 422, (label, refused.text)
            assert "store_credentials_refused" in answers[1][1]
            broken = await api.post(
                ROUTE, content=f'{{"consumer_secret": "{SECRET}"',
                headers={"Content-Type": "application/json"},
            )
            answers.append(("invalid json", describe(broken)))
            assert broken.status_code == 400

            first = await wait_final(settings, job_id, timeout_s=WAIT_S)
            assert (first["state"], first["failed_count"]) == ("failed", 1), first["last_error"]

            retried = await api.post(
                ROUTE, json={"action": "retry", "org_id": org.org_id, "job_id": job_id}
            )
            answers.append(("retry", describe(retried)))
            assert retried.status_code == 202 and retried.json()["requeued"] == 1
            second = await wait_final(settings, job_id, timeout_s=WAIT_S)
            assert (second["state"], second["failed_count"]) == ("failed", 1)

            status = await api.post(
                ROUTE, json={"action": "status", "org_id": org.org_id, "job_id": job_id}
            )
            answers.append(("status", describe(status)))
            job = await api.get(f"/api/v1/integrations/woocommerce/sync/jobs/{job_id}")
            answers.append(("job", describe(job)))
            async with (
                httpx.AsyncClient(timeout=30) as client,
                client.stream("GET", status.json()["progress_url"]) as progress,
            ):
                stream = await asyncio.wait_for(progress.aread(), WAIT_S)
            answers.append(("progress stream", describe(progress) + stream.decode()))
            assert b"event: complete" in stream

            # The store connection, listed, shown, and given credentials (refused, accepted).
            connection = CONNECTION_PATH.format(connection_id=status.json()["connection_id"])
            listed = await api.get(CONNECTIONS_PATH)
            answers.append(("connections", describe(listed)))
            shown = await api.get(connection)
            answers.append(("connection", describe(shown)))
            assert listed.status_code == shown.status_code == 200
            for label, secret, expected in (
                ("new credentials refused", WRONG_SECRET, 422),
                ("new credentials", SECRET, 200),
            ):
                body = {"consumer_key": sim.consumer_key, "consumer_secret": secret}
                updated = await api.patch(connection, json=body)
                answers.append((label, describe(updated)))
                assert updated.status_code == expected, (label, updated.text)

            # A crawl that fails: the store stops accepting the key after the api checked it.
            stack.stop("fetcher")
            again = await api.post(ROUTE, json=start_body(org, sim, SECRET))
            answers.append(("start again", describe(again)))
            assert again.status_code == 202, again.text
            await sim.revoke_keys("secret")
            stack.start("fetcher")
            refused = await wait_final(settings, again.json()["job_id"], timeout_s=WAIT_S)
            assert refused["state"] == "failed"
            assert "refused the credentials" in refused["last_error"]
    finally:
        stack.stop_all()

    await drain(settings, tap)
    published = {label.split()[-1] for label, _ in tap.messages if label.startswith("published")}
    expected = {"sync.requested", "customer.batch", "line.done", "line.failed", "fetch.failed"}
    assert expected <= published
    parked = [text for label, text in tap.messages if label.endswith(".parking")]
    assert parked and all("parked-error" in text for text in parked)

    logs = [(f"log {path.name}", path.read_text()) for path in sorted(tmp_path.glob("*.log"))]
    assert len(logs) == 4 and all(text for _, text in logs)
    assert any(" DEBUG " in text for _, text in logs), "the services did not log at DEBUG"

    conn = await db.connect(settings.admin_database_url)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        rows: list[tuple[str, str]] = []
        for table in tables:
            name = table["tablename"]
            for row in await conn.fetch(f'SELECT row_to_json(t)::text AS row FROM "{name}" t'):
                rows.append((f"table {name}", row["row"]))
        activity = await conn.fetch("SELECT event, details::text AS details FROM woo_sync_activity")
        stored = await conn.fetchval("SELECT consumer_secret_enc FROM woo_connections")
        customers = await conn.fetchval("SELECT count(*) FROM customer")
    finally:
        await conn.close()
    assert customers == CUSTOMERS
    events = {r["event"] for r in activity}
    assert {"job.created", "job.retried", "fetch.completed", "fetch.failed"} <= events
    assert "connection.credentials_updated" in events
    details = [(f"activity {r['event']}", r["details"]) for r in activity]

    assert leaks(logs) == []
    assert leaks(answers) == []
    assert leaks(rows) == []
    assert leaks(details) == []
    assert leaks(tap.messages) == []
    # Stored, but only as ciphertext that the service's key opens.
    assert SecretBox(stack.env["WOOSYNC_SECRET_KEY"]).decrypt(stored) == SECRET
