"""A store is the same store whatever its key, with every service a real process.

- A store of 1,500 customers synced with one key, then the key rotated at the store (a new key
  added, the old one deleted) and synced with the new key and other auth modes: the org holds
  exactly 1,500 customer rows and one connection, whose stored secret is the new one.
- A start with a new key while the first key's job is still reading the store answers with that
  job (one sync per store across keys) and stores the new key; when the store then deletes the
  old key, the running crawl fails on it, and `retry` resumes the crawl with the new key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from shared.crypto import SecretBox
from shared.settings import Settings
from tests.e2e.fault_stack import started_stack
from tests.e2e.harness import ROUTE, Org, Stack, action, assert_exact, new_org, wait_final
from tests.e2e.processes import fetch, infra_shared_lock
from tests.helpers import wait_until
from tools.woosim.testing import SimHandle, spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
CUSTOMERS = 1_500
BOX = SecretBox("e2e-secret-key")  # the stack's WOOSYNC_SECRET_KEY (tests/e2e/harness.py)


@asynccontextmanager
async def running(settings: Settings, log_dir: Path) -> AsyncIterator[Stack]:
    async with infra_shared_lock(), started_stack(settings, log_dir) as stack:
        yield stack


async def post_start(
    stack: Stack, org: Org, sim: SimHandle, key: str, secret: str, auth: str, **config: Any
) -> httpx.Response:
    body = {
        "action": "start",
        "org_id": org.org_id,
        "config": {
            "url": sim.url, "consumer_key": key, "consumer_secret": secret, "auth": auth,
            **config,
        },
        "options": {"batch_size": 100, "concurrency": 1},
    }  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(stack.api_url + ROUTE, json=body, headers=org.headers)


async def holdings(settings: Settings, org: Org) -> tuple[int, int, list[asyncpg.Record]]:
    """(customer rows, distinct woo ids, connections) of the org."""
    (counts,) = await fetch(
        settings,
        "SELECT count(*) AS n, count(DISTINCT woo_id) AS ids FROM customer "
        "WHERE org_id = $1::uuid",
        org.org_id,
    )
    connections = await fetch(
        settings, "SELECT * FROM woo_connections WHERE org_id = $1::uuid", org.org_id
    )
    return counts["n"], counts["ids"], connections


async def test_a_rotated_key_and_other_auth_modes_keep_one_copy_of_each_customer(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with running(settings, tmp_path) as stack:
        with spawn_simulator(customers=CUSTOMERS, seed=41, tls=True) as sim:
            store = await sim.customers()
            tls = {"verify_tls": False}  # the simulator's CA is its own
            first = await post_start(
                stack, org, sim, sim.consumer_key, sim.consumer_secret, "basic", **tls
            )
            assert first.status_code == 202, first.text
            await wait_final(settings, first.json()["job_id"])
            await assert_exact(settings, org, first.json()["job_id"], store)
            rows, _, (connection,) = await holdings(settings, org)
            assert rows == len(store)

            # The shop owner rotates the key: a new one, and the old one deleted.
            new_key, new_secret = await sim.add_key()
            await sim.remove_key(sim.consumer_key)
            figures = []
            for auth in ("oauth1", "query", "basic"):
                response = await post_start(stack, org, sim, new_key, new_secret, auth, **tls)
                assert response.status_code == 202, response.text
                job_id = response.json()["job_id"]
                await wait_final(settings, job_id)
                await assert_exact(settings, org, job_id, store)
                rows, ids, connections = await holdings(settings, org)
                figures.append(f"after the new key with {auth}: {rows} rows, {ids} ids, "
                               f"{len(connections)} connection(s)")  # fmt: skip
                assert (rows, ids, len(connections)) == (len(store), len(store), 1)
                (now,) = connections
                assert now["id"] == connection["id"]
                assert (now["consumer_key"], now["auth_mode"]) == (new_key, auth)
                assert BOX.decrypt(now["consumer_secret_enc"]) == new_secret
            print(f"store of {len(store)} customers; " + "; ".join(figures))

            used = (await sim.stats())["by_auth"]
            assert {"basic", "oauth1", "query"} <= set(used)
            rotated = await fetch(
                settings,
                "SELECT details FROM woo_sync_activity WHERE org_id = $1::uuid "
                "AND event = 'connection.credentials_rotated'",
                org.org_id,
            )
            assert len(rotated) == 1
            customer_connections = await fetch(
                settings,
                "SELECT DISTINCT connection_id FROM customer WHERE org_id = $1::uuid",
                org.org_id,
            )
            assert [r["connection_id"] for r in customer_connections] == [connection["id"]]
            text = stack.logs()
            assert sim.consumer_secret not in text and new_secret not in text


async def test_a_new_key_while_the_old_keys_job_reads_answers_with_that_job(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with running(settings, tmp_path) as stack:
        # 15 pages read one at a time, each taking 400 ms: the crawl reads for about 6 s.
        with spawn_simulator(customers=CUSTOMERS, seed=43, latency_ms=400) as sim:
            store = await sim.customers()
            first = await post_start(stack, org, sim, sim.consumer_key, sim.consumer_secret,
                                     "oauth1")  # fmt: skip
            assert first.status_code == 202, first.text
            job_id = first.json()["job_id"]

            async def reading() -> bool:
                pages = await fetch(
                    settings,
                    "SELECT count(*) AS n FROM woo_customer_sync_page WHERE job_id = $1::uuid",
                    job_id,
                )
                return bool(pages[0]["n"])

            await wait_until(reading, "the first page read")
            new_key, new_secret = await sim.add_key()
            second = await post_start(stack, org, sim, new_key, new_secret, "oauth1")
            assert second.status_code == 200, second.text
            assert second.json()["job_id"] == job_id
            (job,) = await fetch(
                settings, "SELECT * FROM woo_customer_sync_queue WHERE org_id = $1::uuid",
                org.org_id,
            )  # fmt: skip
            assert job["fetch_done_at"] is None, "the crawl ended before the test could rotate"
            _, _, (connection,) = await holdings(settings, org)
            assert connection["consumer_key"] == new_key
            assert BOX.decrypt(connection["consumer_secret_enc"]) == new_secret

            # The store deletes the old key: the crawl that began with it fails on it ...
            await sim.remove_key(sim.consumer_key)
            failed = await wait_final(settings, job_id)
            assert failed["state"] == "failed", failed["last_error"]
            # ... and a retry crawls on with the key the store accepted last.
            retried = await action(stack, org, "retry", job_id)
            assert retried.status_code == 202, retried.text  # the job is open again
            assert retried.json()["fetch_resumed"] is True
            await wait_final(settings, job_id)
            await assert_exact(settings, org, job_id, store)

            rows, ids, connections = await holdings(settings, org)
            print(f"one store, two keys, one job: {rows} rows, {ids} ids, "
                  f"{len(connections)} connection(s), last error before retry: "
                  f"{failed['last_error']!r}")  # fmt: skip
            assert (rows, ids, len(connections)) == (len(store), len(store), 1)
            jobs = await fetch(
                settings, "SELECT id FROM woo_customer_sync_queue WHERE org_id = $1::uuid",
                org.org_id,
            )  # fmt: skip
            assert len(jobs) == 1
            assert (await sim.stats())["by_status"].get("401", 0) >= 1
            text = stack.logs()
            assert sim.consumer_secret not in text and new_secret not in text
