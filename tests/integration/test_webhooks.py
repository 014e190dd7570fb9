"""Webhooks against the real api, syncer, PostgreSQL and RabbitMQ, with a simulated store that
registers and delivers them as WooCommerce does (tools/woosim/webhooks.py).

Registration (webhooks-enable/-disable), the delivery endpoint (ping, signature, unknown token,
bodies without a customer), applying changes idempotently (duplicates, out of order, deletes),
and the tracker's check re-enabling a webhook WooCommerce disabled after failed deliveries.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from services.tracker.webhooks import WebhookWatcher
from shared import db
from shared.crypto import SecretBox
from shared.paths import WEBHOOK_PATH
from shared.settings import Settings
from shared.woocommerce.webhooks import hash_token, new_secret, new_token, sign
from tests.factories import make_connection, small_customer
from tests.helpers import Api, error_of, running_syncer, wait_until
from tools.woosim import wp
from tools.woosim.testing import SimHandle
from woosync.secrets import rotate_secrets

WAIT_S = 30.0


async def connect_store(api: Api, store: SimHandle) -> UUID:
    """The org's connection to the simulated store, with its real (encrypted) key."""
    secrets = SecretBox.from_settings(api.settings)
    return await make_connection(
        api.pool,
        api.org_id,
        store_url=store.url,
        auth_mode="oauth1",
        consumer_key=store.consumer_key,
        consumer_secret_enc=secrets.encrypt(store.consumer_secret),
    )


async def webhook_action(api: Api, name: str, connection_id: UUID) -> Any:
    response = await api.post(
        {"action": name, "org_id": str(api.org_id), "connection_id": str(connection_id)}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def known_webhook(api: Api, connection_id: UUID, topic: str) -> tuple[str, str]:
    """A webhook row of our own, without a store: its URL token and its secret."""
    token, secret = new_token(), new_secret()
    await api.pool.execute(
        """INSERT INTO woo_webhook (id, org_id, connection_id, topic, token_hash, secret_enc,
                                    woo_webhook_id, woo_status)
           VALUES ($1, $2, $3, $4, $5, $6, 1, 'active')""",
        uuid4(),
        api.org_id,
        connection_id,
        topic,
        hash_token(token),
        SecretBox.from_settings(api.settings).encrypt(secret),
    )
    return token, secret


async def deliver(
    api: Api, token: str, secret: str | None, payload: Any, topic: str = "customer.updated"
) -> Any:
    body = wp.encode(payload)
    headers = {"Content-Type": "application/json", "X-WC-Webhook-Topic": topic}
    if secret is not None:
        headers["X-WC-Webhook-Signature"] = sign(secret, body)
    return await api.client.post(WEBHOOK_PATH.format(token=token), content=body, headers=headers)


async def stored(pool: asyncpg.Pool, connection_id: UUID, woo_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT first_name, woo_date_modified, deleted_at FROM customer "
        "WHERE connection_id = $1 AND woo_id = $2",
        connection_id,
        woo_id,
    )


async def test_enable_registers_three_signed_webhooks_and_changes_arrive(
    api: Api, store: SimHandle, settings: Settings
) -> None:
    connection_id = await connect_store(api, store)
    answer = await webhook_action(api, "webhooks-enable", connection_id)
    hooks = {h["topic"]: h for h in answer["webhooks"]}
    assert set(hooks) == {"customer.created", "customer.updated", "customer.deleted"}
    assert {h["status"] for h in hooks.values()} == {"active"}

    sim = await store.webhooks()
    on_store = {h["id"]: h for h in sim["webhooks"]}
    assert set(on_store) == {h["woo_webhook_id"] for h in hooks.values()}
    assert all(h["delivery_url"].startswith(api.url + "/api/v1/") for h in on_store.values())
    pings = [d for d in sim["deliveries"] if d["topic"] == "ping"]
    assert len(pings) == 3 and all(d["ok"] for d in pings)  # the creation pings got 200
    assert not any(h["pending_delivery"] for h in on_store.values())
    # Neither a secret nor a URL token is answered or stored in clear.
    tokens = [h["delivery_url"].rsplit("/", 1)[1] for h in on_store.values()]
    for token in tokens:
        assert token not in json.dumps(answer)
        assert all(token not in row for row in await api.rows("woo_webhook"))
        assert all(token not in row for row in await api.rows("woo_sync_activity"))

    again = await webhook_action(api, "webhooks-enable", connection_id)  # idempotent
    assert again["webhooks"] == answer["webhooks"]
    assert len((await store.webhooks())["webhooks"]) == 3

    async with running_syncer(settings):
        await store.update_customer(2, first_name="Webhooked")
        row = await wait_until(
            lambda: _first_name_is(api.pool, connection_id, 2, "Webhooked"), "update", WAIT_S
        )
        created = await store.add_customer(email="new@example.com", first_name="New")
        await wait_until(
            lambda: _first_name_is(api.pool, connection_id, created["id"], "New"), "create", WAIT_S
        )
        await store.delete_customer(2)

        async def deleted() -> bool:
            row = await stored(api.pool, connection_id, 2)
            return row is not None and row["deleted_at"] is not None

        await wait_until(deleted, "delete", WAIT_S)
    assert row is not None
    deliveries = (await store.webhooks())["deliveries"]
    assert all(d["ok"] for d in deliveries), deliveries

    removed = await webhook_action(api, "webhooks-disable", connection_id)
    assert removed["webhooks"] == []
    assert (await store.webhooks())["webhooks"] == []
    events = await api.pool.fetch(
        "SELECT event FROM woo_sync_activity WHERE event LIKE 'webhooks.%' ORDER BY id"
    )
    assert [e["event"] for e in events] == [
        "webhooks.enabled",
        "webhooks.enabled",
        "webhooks.disabled",
    ]


async def _first_name_is(
    pool: asyncpg.Pool, connection_id: UUID, woo_id: int, name: str
) -> asyncpg.Record | None:
    row = await stored(pool, connection_id, woo_id)
    return row if row is not None and row["first_name"] == name else None


async def test_the_endpoint_answers_pings_and_refuses_bad_signatures_and_unknown_tokens(
    api: Api,
) -> None:
    connection_id = await make_connection(api.pool, api.org_id)
    token, secret = await known_webhook(api, connection_id, "customer.updated")
    path = WEBHOOK_PATH.format(token=token)

    ping = await api.client.post(
        path,
        content=b"webhook_id=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert ping.status_code == 200

    customer = small_customer(5)
    wrong = await deliver(api, token, "wrong" + secret, customer)
    assert error_of(wrong) == (401, "invalid_signature")
    unsigned = await deliver(api, token, None, customer)
    assert error_of(unsigned) == (401, "invalid_signature")
    unknown = await deliver(api, new_token(), secret, customer)
    assert error_of(unknown) == (404, "not_found")
    garbage = await api.client.post(WEBHOOK_PATH.format(token="x"), content=b"{}")
    assert error_of(garbage) == (404, "not_found")
    for response in (wrong, unsigned, unknown):
        assert secret not in response.text and token not in response.text
    # Signed, but WooCommerce's error body (the customer was gone when it was sent): ignored.
    gone = {"code": "woocommerce_rest_invalid_id", "message": "Invalid ID.", "data": {}}
    ignored = await deliver(api, token, secret, gone)
    assert (ignored.status_code, ignored.json()) == (200, {"status": "ignored"})

    accepted = await deliver(api, token, secret, customer)
    assert (accepted.status_code, accepted.json()) == (200, {"status": "accepted"})
    queued = await api.drain(api.topology.syncer_queue.name)
    assert len(queued) == 1  # only the accepted delivery was handed on
    assert queued[0]["woo_id"] == 5 and queued[0]["event"] == "updated"
    assert queued[0]["org_id"] == str(api.org_id)
    assert queued[0]["connection_id"] == str(connection_id)
    assert "_links" not in queued[0]["customer"]


def version(woo_id: int, second: int, name: str) -> dict[str, Any]:
    return small_customer(
        woo_id, first_name=name, date_modified_gmt=f"2024-06-01T10:00:{second:02d}"
    )


async def test_duplicate_and_out_of_order_deliveries_keep_the_newest_version(
    api: Api, settings: Settings
) -> None:
    connection_id = await make_connection(api.pool, api.org_id)
    token, secret = await known_webhook(api, connection_id, "customer.updated")
    async with running_syncer(settings):
        for payload in (version(9, 30, "newest"), version(9, 10, "old"), version(9, 30, "newest")):
            assert (await deliver(api, token, secret, payload)).status_code == 200
        await deliver(api, token, secret, version(9, 20, "older"))
        marker = version(10, 1, "marker")  # delivered last: once stored, the rest were applied
        await deliver(api, token, secret, marker)
        await wait_until(
            lambda: _first_name_is(api.pool, connection_id, 10, "marker"), "marker", WAIT_S
        )
        row = await stored(api.pool, connection_id, 9)
        assert row is not None and row["first_name"] == "newest"


async def test_a_delete_is_kept_against_older_versions_and_refused_for_newer_rows(
    api: Api, settings: Settings
) -> None:
    connection_id = await make_connection(api.pool, api.org_id)
    updated, updated_secret = await known_webhook(api, connection_id, "customer.updated")
    deleted, deleted_secret = await known_webhook(api, connection_id, "customer.deleted")
    async with running_syncer(settings):
        await deliver(api, updated, updated_secret, version(11, 5, "before delete"))
        await wait_until(
            lambda: _first_name_is(api.pool, connection_id, 11, "before delete"), "row", WAIT_S
        )
        response = await deliver(api, deleted, deleted_secret, {"id": 11}, "customer.deleted")
        assert response.status_code == 200

        async def is_deleted() -> bool:
            row = await stored(api.pool, connection_id, 11)
            return row is not None and row["deleted_at"] is not None

        await wait_until(is_deleted, "the delete", WAIT_S)
        # A late update made before the delete does not bring the customer back.
        await deliver(api, updated, updated_secret, version(11, 6, "late, older"))
        # A row whose version is newer than the delete (a store clock ahead) is not deleted.
        future = small_customer(12, first_name="future", date_modified_gmt="2999-01-01T00:00:00")
        await deliver(api, updated, updated_secret, future)
        await wait_until(
            lambda: _first_name_is(api.pool, connection_id, 12, "future"), "future row", WAIT_S
        )
        await deliver(api, deleted, deleted_secret, {"id": 12}, "customer.deleted")
        await deliver(api, deleted, deleted_secret, {"id": 404}, "customer.deleted")  # unknown
        await deliver(api, updated, updated_secret, version(13, 1, "marker"))
        await wait_until(
            lambda: _first_name_is(api.pool, connection_id, 13, "marker"), "marker", WAIT_S
        )
    eleven = await stored(api.pool, connection_id, 11)
    assert eleven is not None and eleven["deleted_at"] is not None
    assert eleven["first_name"] == "before delete"
    twelve = await stored(api.pool, connection_id, 12)
    assert twelve is not None and twelve["deleted_at"] is None
    assert await stored(api.pool, connection_id, 404) is None


async def test_simulated_duplicates_reordering_and_shared_delivery_ids_converge(
    api: Api, store: SimHandle, settings: Settings
) -> None:
    """The store sends each delivery twice, newest first with bodies built when queued, all
    under one delivery id: the row ends as the store's newest version."""
    connection_id = await connect_store(api, store)
    await webhook_action(api, "webhooks-enable", connection_id)
    await store.set_webhook_config(
        duplicate=True, reorder=True, same_delivery_id=True, delivery_delay_ms=300
    )
    async with running_syncer(settings):
        for second, name in ((1, "first"), (2, "second"), (3, "third")):
            await store.update_customer(
                3, first_name=name, date_modified_gmt=f"2030-01-01T00:00:0{second}"
            )
        sent = await wait_until(
            lambda: _sent(store, 6), "six deliveries (three, each twice)", WAIT_S
        )
        assert [d["ok"] for d in sent] == [True] * 6
        await store.set_webhook_config(duplicate=False, reorder=False)
        await store.update_customer(4, first_name="marker")
        await wait_until(
            lambda: _first_name_is(api.pool, connection_id, 4, "marker"), "marker", WAIT_S
        )
    row = await stored(api.pool, connection_id, 3)
    assert row is not None and row["first_name"] == "third"


async def _sent(store: SimHandle, count: int) -> list[dict[str, Any]] | None:
    deliveries = [d for d in (await store.webhooks())["deliveries"] if d["topic"] != "ping"]
    return deliveries if len(deliveries) >= count else None


async def test_the_tracker_check_re_enables_what_failed_deliveries_disabled(
    api: Api, store: SimHandle, settings: Settings, app_pool: asyncpg.Pool
) -> None:
    connection_id = await connect_store(api, store)
    answer = await webhook_action(api, "webhooks-enable", connection_id)
    updated = next(h for h in answer["webhooks"] if h["topic"] == "customer.updated")
    # Someone changes the secret in wp-admin: every delivery now fails our signature check.
    await store.set_webhook_config(max_failures=1)
    await store.update_webhook(updated["woo_webhook_id"], secret="changedByAnAdmin")
    for n in range(3):  # the 3rd failure in a row disables it (count above max_failures)
        await store.update_customer(1, first_name=f"lost {n}")
        await wait_until(lambda n=n: _sent(store, n + 1), f"delivery {n}", WAIT_S)

    async def disabled() -> bool:
        hooks = (await store.webhooks())["webhooks"]
        return any(h["status"] == "disabled" for h in hooks)

    await wait_until(disabled, "WooCommerce disabling the webhook", WAIT_S)

    watcher = WebhookWatcher(app_pool, api.settings, name="test tracker")
    try:
        reports = await watcher.tick()
    finally:
        await watcher._drop()
    assert reports is not None and reports[connection_id].reenabled == ["customer.updated"]
    hooks = {h["id"]: h for h in (await store.webhooks())["webhooks"]}
    assert hooks[updated["woo_webhook_id"]]["status"] == "active"
    status = await webhook_action(api, "webhooks-status", connection_id)
    again = next(h for h in status["webhooks"] if h["topic"] == "customer.updated")
    assert (again["status"], again["reenabled_count"]) == ("active", 1)
    details = await api.pool.fetchval(
        "SELECT details FROM woo_sync_activity WHERE event = 'webhooks.reenabled'"
    )
    assert details["reenabled"] == ["customer.updated"] and "full sync" in details["reconcile"]


@pytest.fixture(autouse=True)
def _no_rate_limit_surprises(settings: Settings) -> None:
    assert settings.allow_private_urls  # the simulator and the api listen on 127.0.0.1


async def test_key_rotation_re_encrypts_webhook_secrets(
    api: Api, database_url: str, settings: Settings
) -> None:
    """``woosync secrets rotate`` covers webhook secrets too: deliveries verify after the old
    key is gone."""
    connection_id = await make_connection(api.pool, api.org_id)
    token, secret = await known_webhook(api, connection_id, "customer.updated")
    new_box = SecretBox("a-new-secret-key", [settings.secret_key.get_secret_value()])
    conn = await db.connect(database_url, operator=True)
    try:
        report = await rotate_secrets(conn, new_box)
    finally:
        await conn.close()
    assert report.webhooks is not None
    assert (report.webhooks.checked, report.webhooks.rotated) == (1, 1)
    stored_secret = await api.pool.fetchval("SELECT secret_enc FROM woo_webhook")
    assert SecretBox("a-new-secret-key").decrypt(stored_secret) == secret


async def test_the_delivery_lookup_functions_are_not_public(api: Api) -> None:
    acl = await api.pool.fetch(
        """SELECT proname, proacl::text[] AS acl FROM pg_proc
           WHERE proname IN ('woosync_webhook_by_token', 'woosync_webhook_connections')"""
    )
    assert len(acl) == 2
    for row in acl:
        grantees = {entry.split("=", 1)[0] for entry in row["acl"]}
        assert "" not in grantees and "woosync_app" in grantees, row  # "" is PUBLIC
