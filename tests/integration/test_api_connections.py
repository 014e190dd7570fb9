"""A store is the same store whatever its key: the api keeps one connection per org and store.

The api runs under uvicorn with the real PostgreSQL and RabbitMQ; the store is the simulator,
whose control API adds and removes keys as a shop owner rotating its key would.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from shared.crypto import SecretBox
from tests.factories import make_connection
from tests.helpers import Api, error_of, start_body
from tools.woosim.testing import SimHandle

BOX = SecretBox("test-secret-key")


def with_key(body: dict[str, Any], key: str, secret: str, **config: Any) -> dict[str, Any]:
    body["config"] |= {"consumer_key": key, "consumer_secret": secret, **config}
    return body


async def connections(api: Api) -> list[Any]:
    return await api.pool.fetch("SELECT * FROM woo_connections WHERE org_id = $1", api.org_id)


async def events(api: Api, name: str) -> list[Any]:
    return await api.pool.fetch(
        "SELECT * FROM woo_sync_activity WHERE org_id = $1 AND event = $2 ORDER BY id",
        api.org_id,
        name,
    )


async def finish_jobs(api: Api) -> None:
    await api.pool.execute("UPDATE woo_customer_sync_queue SET state = 'done'")


async def test_a_rotated_key_updates_the_one_connection(api: Api, store: SimHandle) -> None:
    first = await api.start(store)
    assert first.status_code == 202, first.text
    await finish_jobs(api)
    (before,) = await connections(api)

    new_key, new_secret = await store.add_key()
    await store.remove_key(store.consumer_key)  # the old key is gone at the store
    second = await api.post(with_key(start_body(api.org_id, store), new_key, new_secret))
    assert second.status_code == 202, second.text

    (after,) = await connections(api)
    assert after["id"] == before["id"]
    assert after["consumer_key"] == new_key
    assert BOX.decrypt(after["consumer_secret_enc"]) == new_secret
    assert after["updated_at"] > before["updated_at"]
    jobs = await api.pool.fetch("SELECT connection_id FROM woo_customer_sync_queue")
    assert {j["connection_id"] for j in jobs} == {before["id"]} and len(jobs) == 2

    (rotated,) = await events(api, "connection.credentials_rotated")
    assert rotated["job_id"] == UUID(second.json()["job_id"])
    assert rotated["level"] == "info"
    details = rotated["details"]
    assert details["connection_id"] == str(before["id"])
    assert details["changes"] == {
        "consumer_key": ["…" + store.consumer_key[-7:], "…" + new_key[-7:]]
    }
    assert details["by"] == "api"
    text = json.dumps([dict(r) for r in await api.pool.fetch("SELECT * FROM woo_sync_activity")],
                      default=str)
    for secret in (store.consumer_secret, new_secret):
        assert secret not in text
    assert new_key not in text  # keys are shown by their ending only, as WooCommerce does


async def test_the_same_key_again_records_no_rotation(api: Api, store: SimHandle) -> None:
    assert (await api.start(store)).status_code == 202
    await finish_jobs(api)
    assert (await api.start(store)).status_code == 202
    assert len(await connections(api)) == 1
    assert await events(api, "connection.credentials_rotated") == []
    assert await events(api, "connection.settings_changed") == []


async def test_every_spelling_of_the_url_is_one_connection(api: Api, store: SimHandle) -> None:
    host_port = store.url.split("://", 1)[1]
    spellings = [f"HTTP://{host_port.upper()}/", f"http://{host_port}///", f"http://{host_port}"]
    job_ids = set()
    for url in spellings:
        body = start_body(api.org_id, store)
        body["config"]["url"] = url
        response = await api.post(body)
        assert response.status_code == 202, response.text
        job_ids.add(response.json()["job_id"])
        await finish_jobs(api)
    assert len(job_ids) == 3
    (connection,) = await connections(api)
    assert connection["store_url"] == store.url and connection["store_identity"] == host_port
    for created in await events(api, "job.created"):
        assert created["details"]["store_url"] == store.url


async def test_a_start_with_another_key_while_a_job_reads_answers_with_that_job(
    api: Api, store: SimHandle
) -> None:
    first = await api.start(store)
    assert first.status_code == 202  # no fetcher runs here: the job stays queued
    new_key, new_secret = await store.add_key()
    second = await api.post(with_key(start_body(api.org_id, store), new_key, new_secret))
    assert second.status_code == 200, second.text
    assert second.json()["job_id"] == first.json()["job_id"]
    assert len(await api.rows("woo_customer_sync_queue")) == 1
    # The verified new key is stored all the same: the job's next crawl uses it.
    (connection,) = await connections(api)
    assert connection["consumer_key"] == new_key
    assert BOX.decrypt(connection["consumer_secret_enc"]) == new_secret
    (rotated,) = await events(api, "connection.credentials_rotated")
    assert rotated["job_id"] == UUID(first.json()["job_id"])
    assert len(await api.drain(api.topology.fetcher_queue.name)) == 1


async def test_a_key_the_store_refuses_changes_nothing(api: Api, store: SimHandle) -> None:
    assert (await api.start(store)).status_code == 202
    await finish_jobs(api)
    (before,) = await connections(api)
    refused = await api.post(with_key(start_body(api.org_id, store), "ck_other", "cs_wrong"))
    assert error_of(refused)[0] == 422
    (after,) = await connections(api)
    assert dict(after) == dict(before)
    assert await events(api, "connection.credentials_rotated") == []


async def test_a_move_from_https_to_http_is_the_same_store_and_a_warning(
    api: Api, store: SimHandle
) -> None:
    host_port = store.url.split("://", 1)[1]
    seeded = await make_connection(
        api.pool,
        api.org_id,
        store_url=f"https://{host_port}",
        auth_mode="basic",
        consumer_key=store.consumer_key,
        consumer_secret_enc=BOX.encrypt(store.consumer_secret),
    )
    response = await api.start(store)  # http, oauth1
    assert response.status_code == 202, response.text
    (connection,) = await connections(api)
    assert connection["id"] == seeded
    assert (connection["store_url"], connection["auth_mode"]) == (store.url, "oauth1")
    (changed,) = await events(api, "connection.settings_changed")
    assert changed["level"] == "warning"
    assert changed["details"]["changes"] == {
        "auth": ["basic", "oauth1"],
        "store_url": [f"https://{host_port}", store.url],
    }
