"""An org's store connections through the api: list, show, new credentials, delete.

The api runs under uvicorn with the real PostgreSQL and RabbitMQ; the store is the simulator,
whose control API adds and removes keys as a shop owner would.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import httpx

from shared.auth import create_org
from shared.crypto import SecretBox
from shared.paths import CONNECTION_PATH, CONNECTIONS_PATH
from tests.factories import add_customers, make_connection, make_job
from tests.helpers import Api, error_of
from tools.woosim.testing import SimHandle

BOX = SecretBox("test-secret-key")


def one(connection_id: Any) -> str:
    return CONNECTION_PATH.format(connection_id=connection_id)


async def call(
    api: Api, method: str, path: str, *, key: str | None = None, **kwargs: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or api.key}"}
    return await api.client.request(method, path, headers=headers, **kwargs)


async def started(api: Api, store: SimHandle) -> tuple[UUID, UUID]:
    """(connection id, job id) of a start of ``store``, its job finished."""
    answer = await api.start(store)
    assert answer.status_code == 202, answer.text
    job_id = UUID(answer.json()["job_id"])
    await api.pool.execute(
        "UPDATE woo_customer_sync_queue SET state = 'done', finished_at = now() WHERE id = $1",
        job_id,
    )
    connection_id = await api.pool.fetchval(
        "SELECT connection_id FROM woo_customer_sync_queue WHERE id = $1", job_id
    )
    return connection_id, job_id


async def events(api: Api, name: str) -> list[Any]:
    return await api.pool.fetch(
        "SELECT * FROM woo_sync_activity WHERE org_id = $1 AND event = $2 ORDER BY id",
        api.org_id,
        name,
    )


async def count(api: Api, table: str, where: str, *args: Any) -> int:
    found: int = await api.pool.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args)
    return found


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


async def test_list_and_show_name_the_store_never_the_secret(api: Api, store: SimHandle) -> None:
    assert (await call(api, "GET", CONNECTIONS_PATH)).json() == {
        "connections": [],
        "next_cursor": None,
    }
    connection_id, job_id = await started(api, store)
    job = await api.pool.fetchrow("SELECT * FROM woo_customer_sync_queue WHERE id = $1", job_id)
    await add_customers(api.pool, job_id, [1, 2, 3])
    await api.pool.execute(
        "UPDATE customer SET deleted_at = now() WHERE connection_id = $1 AND woo_id = 3",
        connection_id,
    )
    other = await make_connection(api.pool, api.org_id, store_url="https://zz.shop.example")
    stranger, _ = await create_org(api.pool, "stranger")
    foreign = await make_connection(api.pool, stranger, store_url="https://aa.shop.example")

    listed = await call(api, "GET", CONNECTIONS_PATH, params={"limit": 1})
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert [c["connection_id"] for c in page["connections"]] == [str(connection_id)]
    shown = page["connections"][0]
    assert shown == {
        "connection_id": str(connection_id),
        "store_url": store.url,
        "auth": "oauth1",
        "verify_tls": True,
        "consumer_key_ending": store.consumer_key[-4:],
        "has_secret": True,
        "customers": 2,
        "customers_deleted": 1,
        "open_job_id": None,
        "last_job_id": str(job_id),
        "created_at": shown["created_at"],
        "updated_at": shown["updated_at"],
    }
    assert job["connection_id"] == connection_id
    rest = await call(
        api, "GET", CONNECTIONS_PATH, params={"limit": 1, "cursor": page["next_cursor"]}
    )
    assert [c["connection_id"] for c in rest.json()["connections"]] == [str(other)]
    assert rest.json()["next_cursor"] is None

    alone = await call(api, "GET", one(connection_id))
    assert alone.status_code == 200 and alone.json() == shown
    stored = await api.pool.fetchval(
        "SELECT consumer_secret_enc FROM woo_connections WHERE id = $1", connection_id
    )
    for answer in (listed, rest, alone):
        assert_no_secret(answer.text, store.consumer_secret, store.consumer_key, stored.hex())

    # Another org's connection is no connection; a bad id or query is named.
    assert error_of(await call(api, "GET", one(foreign))) == (404, "connection_not_found")
    assert error_of(await call(api, "GET", one(uuid4()))) == (404, "connection_not_found")
    assert error_of(await call(api, "GET", one("nope"))) == (422, "invalid_request")
    for params in ({"limit": 0}, {"limit": "x"}, {"limit": 201}, {"page": 2}):
        answer = await call(api, "GET", CONNECTIONS_PATH, params=params)
        assert error_of(answer) == (422, "invalid_request"), params
    assert error_of(await call(api, "GET", CONNECTIONS_PATH, key="wsk_nope")) == (
        401,
        "unauthorized",
    )


async def test_new_credentials_are_tested_then_stored_and_audited(
    api: Api, store: SimHandle
) -> None:
    connection_id, _ = await started(api, store)
    before = await api.pool.fetchrow("SELECT * FROM woo_connections WHERE id = $1", connection_id)
    new_key, new_secret = await store.add_key()

    # The store refuses them: 422, nothing changed, nothing audited.
    refused = await call(
        api,
        "PATCH",
        one(connection_id),
        json={"consumer_key": new_key, "consumer_secret": "cs_wrong"},
    )
    assert error_of(refused) == (422, "store_credentials_refused")
    assert_no_secret(refused.text, "cs_wrong", new_secret)
    bad_inputs: list[dict[str, Any]] = [
        {"consumer_key": new_key},  # no secret
        {"consumer_key": new_key, "consumer_secret": new_secret, "url": "https://x.example"},
        {"consumer_key": new_key, "consumer_secret": new_secret, "auth": "basic"},  # over http
        {"consumer_key": new_key, "consumer_secret": new_secret, "verify_tls": "no"},
    ]
    for body in bad_inputs:
        answer = await call(api, "PATCH", one(connection_id), json=body)
        assert error_of(answer) == (422, "invalid_request"), body
        assert_no_secret(answer.text, new_secret)
    assert error_of(await call(api, "PATCH", one(connection_id), content=b"{")) == (
        415,
        "unsupported_media_type",
    )
    stranger, _ = await create_org(api.pool, "stranger")
    foreign = await make_connection(api.pool, stranger)
    body = {"consumer_key": new_key, "consumer_secret": new_secret}
    assert error_of(await call(api, "PATCH", one(foreign), json=body)) == (
        404,
        "connection_not_found",
    )
    now = await api.pool.fetchrow("SELECT * FROM woo_connections WHERE id = $1", connection_id)
    assert now == before
    assert await events(api, "connection.credentials_updated") == []

    # The store accepts them: stored (secret encrypted), the old key can go.
    answer = await call(api, "PATCH", one(connection_id), json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["consumer_key_ending"] == new_key[-4:]
    assert_no_secret(answer.text, new_secret, new_key)
    after = await api.pool.fetchrow("SELECT * FROM woo_connections WHERE id = $1", connection_id)
    assert after["consumer_key"] == new_key
    assert BOX.decrypt(after["consumer_secret_enc"]) == new_secret
    assert after["updated_at"] > before["updated_at"]
    [audit] = await events(api, "connection.credentials_updated")
    assert audit["details"]["connection_id"] == str(connection_id)
    assert audit["details"]["changes"] == {
        "consumer_secret": "replaced",
        "consumer_key": ["…" + store.consumer_key[-4:], "…" + new_key[-4:]],
    }
    assert audit["details"]["by"] == "api" and audit["details"]["api_key_id"]
    assert_no_secret(str(dict(audit)), new_secret, store.consumer_secret, new_key)

    await store.remove_key(store.consumer_key)  # the owner deletes the old key
    again = await api.start(store)  # a start with the store's old key is refused now
    assert error_of(again) == (422, "store_credentials_refused")


async def test_delete_is_refused_while_a_job_is_open_then_keeps_or_removes_customers(
    api: Api, store: SimHandle
) -> None:
    answer = await api.start(store)
    job_id = UUID(answer.json()["job_id"])
    connection_id = await api.pool.fetchval(
        "SELECT connection_id FROM woo_customer_sync_queue WHERE id = $1", job_id
    )
    await add_customers(api.pool, job_id, [1, 2])
    path = one(connection_id)
    assert error_of(await call(api, "DELETE", path)) == (409, "connection_busy")
    stranger, _ = await create_org(api.pool, "stranger")
    foreign_job = await make_job(api.pool, stranger, state="done")
    foreign = await api.pool.fetchval(
        "SELECT connection_id FROM woo_customer_sync_queue WHERE id = $1", foreign_job
    )
    assert error_of(await call(api, "DELETE", one(foreign))) == (404, "connection_not_found")
    bad = await call(api, "DELETE", path, params={"with_customers": "yes"})
    assert error_of(bad) == (422, "invalid_request")
    assert await api.pool.fetchval("SELECT count(*) FROM woo_connections") == 2
    assert await events(api, "connection.deleted") == []

    await api.pool.execute(
        "UPDATE woo_customer_sync_queue SET state = 'done', finished_at = now() WHERE id = $1",
        job_id,
    )
    deleted = await call(api, "DELETE", path)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "connection_id": str(connection_id),
        "store_url": store.url,
        "with_customers": False,
        "customers_deleted": 0,
        "customers_kept": 2,
        "jobs_deleted": 1,
    }
    assert error_of(await call(api, "GET", path)) == (404, "connection_not_found")
    assert await count(api, "customer", "connection_id = $1", connection_id) == 2
    assert await count(api, "woo_customer_sync_queue", "connection_id = $1", connection_id) == 0
    [audit] = await events(api, "connection.deleted")
    assert audit["level"] == "warning" and audit["details"]["customers_kept"] == 2
    assert audit["details"]["by"] == "api"
    assert await count(api, "woo_connections", "id = $1", foreign) == 1

    # The store again, as a new connection, deleted with its customers.
    connection_id, job_id = await started(api, store)
    await add_customers(api.pool, job_id, [1, 2, 3])
    removed = await call(api, "DELETE", one(connection_id), params={"with_customers": "true"})
    assert removed.status_code == 200, removed.text
    assert (removed.json()["customers_deleted"], removed.json()["customers_kept"]) == (3, 0)
    assert await count(api, "customer", "connection_id = $1", connection_id) == 0
    assert await api.pool.fetchval("SELECT count(*) FROM customer") == 2  # the first store's
    assert len(await events(api, "connection.deleted")) == 2


async def test_delete_waits_for_a_cancelled_crawl_to_stop(api: Api, store: SimHandle) -> None:
    connection_id, job_id = await started(api, store)
    await api.pool.execute(
        """UPDATE woo_customer_sync_queue SET state = 'cancelled', crawl_stopped_at = NULL
           WHERE id = $1""",
        job_id,
    )
    refused = await call(api, "DELETE", one(connection_id))
    assert error_of(refused) == (409, "crawl_not_stopped")
    assert refused.headers["Retry-After"] == "5"
    assert await count(api, "woo_connections", "id = $1", connection_id) == 1

    await api.pool.execute(
        "UPDATE woo_customer_sync_queue SET crawl_stopped_at = now() WHERE id = $1", job_id
    )
    deleted = await call(api, "DELETE", one(connection_id))
    assert deleted.status_code == 200 and deleted.json()["jobs_deleted"] == 1
