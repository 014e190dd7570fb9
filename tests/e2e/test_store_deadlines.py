"""A store that trickles its responses (a byte at a time, each read well within the read
timeout), with every service a real process and the simulator a real process.

- ``start`` against a trickling store answers 422 ``store_unreachable`` at the check deadline.
- A store that starts trickling mid-crawl: the fetcher cuts every request at the request
  deadline, the job fails naming it, and ``retry`` once the store is well again ends ``done``,
  exact.

The figures (time to answer, time to cut off a trickling store) are printed: run with ``-s``.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.e2e.fault_stack import running
from tests.e2e.harness import ROUTE, action, assert_exact, new_org, start_sync, wait_final
from tests.e2e.processes import pages_recorded
from tests.helpers import wait_until
from tools.woosim.testing import spawn_simulator

pytestmark = [pytest.mark.e2e]

REQUEST_DEADLINE_S = 2.0
CHECK_DEADLINE_S = 3.0
# A byte every 300 ms: each read gets one long before the 1 s read timeout fires.
TRICKLE = {"rate_trickle": 1.0, "trickle_ms": 300}
ENV = {
    "WOOSYNC_STORE_TIMEOUT_S": "1.0",
    "WOOSYNC_STORE_REQUEST_DEADLINE_S": str(REQUEST_DEADLINE_S),
    "WOOSYNC_STORE_CHECK_DEADLINE_S": str(CHECK_DEADLINE_S),
    "WOOSYNC_STORE_MAX_ATTEMPTS": "3",
    "WOOSYNC_STORE_BACKOFF_MAX_S": "0.2",
}


@pytest.mark.timeout(120)
async def test_start_against_a_trickling_store_is_422_at_the_check_deadline(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with running(settings, tmp_path, ENV) as stack:
        with spawn_simulator(customers=10, seed=41, faults=TRICKLE) as sim:
            body = {
                "action": "start",
                "org_id": org.org_id,
                "config": {"url": sim.url, "consumer_key": sim.consumer_key,
                           "consumer_secret": sim.consumer_secret, "auth": "oauth1"},
            }  # fmt: skip
            async with httpx.AsyncClient(timeout=60) as client:
                started = time.monotonic()
                response = await client.post(stack.api_url + ROUTE, json=body, headers=org.headers)
                answered_after_s = time.monotonic() - started
            stats = await sim.stats()
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "store_unreachable"
    assert f"within {CHECK_DEADLINE_S:g}s" in error["message"], error
    assert stats["by_fault"].get("trickle", 0) >= 1, stats
    assert sim.consumer_secret not in response.text
    print(f"\nstart against a trickling store (real api process): 422 after "
          f"{answered_after_s:.2f}s, check deadline {CHECK_DEADLINE_S:g}s")  # fmt: skip


@pytest.mark.timeout(180)
async def test_a_store_that_starts_trickling_mid_crawl_is_cut_off_at_the_deadline(
    settings: Settings, tmp_path: Path
) -> None:
    org = await new_org(settings)
    async with running(settings, tmp_path, ENV) as stack:
        with spawn_simulator(customers=2_000, seed=42, latency_ms=200) as sim:
            store = await sim.customers()
            job = await start_sync(stack, org, sim, concurrency=2)
            job_id = job["job_id"]
            await wait_until(lambda: _pages_at_least(settings, job_id, 4), "4 pages")
            await sim.set_faults(**TRICKLE)
            trickling_since = time.monotonic()

            failed = await wait_final(settings, job_id, timeout_s=120)
            cut_off_after_s = time.monotonic() - trickling_since
            trickled = (await sim.stats())["by_fault"].get("trickle", 0)
            assert failed["state"] == "failed", failed["last_error"]
            error = failed["last_error"]
            assert "store unavailable" in error and "failed after 3 attempts" in error, error
            deadline = f"no complete response within the {REQUEST_DEADLINE_S:g}s request deadline"
            assert deadline in error, error
            assert trickled >= 3, trickled
            assert sim.consumer_secret not in error and sim.consumer_secret not in stack.logs()

            # The store is well again: retry resumes the crawl and ends exact.
            await sim.set_faults(rate_trickle=0.0)
            resumed = await action(stack, org, "retry", job_id)
            assert resumed.status_code == 202, resumed.text
            done = await wait_final(settings, job_id, timeout_s=90)
            assert done["state"] == "done", done["last_error"]
            await assert_exact(settings, org, job_id, store)
    print(f"\ntime to cut off a trickling store: {cut_off_after_s:.1f}s from the first trickled "
          f"response to the job failed ({trickled} trickled requests, request deadline "
          f"{REQUEST_DEADLINE_S:g}s, 3 attempts per request, concurrency 2)")  # fmt: skip


async def _pages_at_least(settings: Settings, job_id: str, n: int) -> bool:
    return len(await pages_recorded(settings, job_id)) >= n
