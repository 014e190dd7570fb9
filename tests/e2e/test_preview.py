"""The preview against the real processes: what a sync would change, with nothing changed.

The last test previews a store above WOOSYNC_PREVIEW_INLINE_MAX_CUSTOMERS: a job of kind
``preview`` read by the fetcher, followed through its status and progress stream, with the same
answer and the same proof (its own job row is the only new row but the audit's).

A store of 200 customers is synced by the four services. The store then changes: three
customers renamed, one edited with a modification date older than the stored one (a conflict),
two deleted, four added. The preview (by URL and key, then by the connection's id) counts
exactly that, shows each change field by field, and leaves every row as it was: each customer
row with its ``xmin`` (the transaction that wrote its version), every line, page, job and
connection row; the only new row is one audit row per preview. Bad input, another org's
connection and a store the org has no connection to are checked the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import db
from shared.paths import PREVIEW_PATH
from shared.settings import Settings
from tests.e2e.fault_stack import started_stack
from tests.e2e.harness import ROUTE, Org, Stack, new_org, start_sync, wait_final
from tests.e2e.processes import follow_progress, infra_shared_lock
from tools.woosim.testing import SimHandle, spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
CUSTOMERS = 200

# Every row a preview must leave alone, in a fixed order, with the row version's xmin.
SNAPSHOT = {
    "customer": "SELECT xmin::text AS xmin, t::text AS row FROM customer t "
    "ORDER BY org_id, connection_id, woo_id",
    "woo_customer_sync_queue_line": "SELECT xmin::text AS xmin, t::text AS row "
    "FROM woo_customer_sync_queue_line t ORDER BY job_id, woo_id",
    "woo_customer_sync_page": "SELECT xmin::text AS xmin, t::text AS row "
    "FROM woo_customer_sync_page t ORDER BY job_id, page",
    "woo_customer_sync_queue": "SELECT xmin::text AS xmin, t::text AS row "
    "FROM woo_customer_sync_queue t ORDER BY id",
    "woo_connections": "SELECT xmin::text AS xmin, t::text AS row "
    "FROM woo_connections t ORDER BY id",
}


async def snapshot(settings: Settings) -> dict[str, list[tuple[str, str]]]:
    conn = await db.connect(settings.admin_database_url, operator=True)
    try:
        return {
            table: [(r["xmin"], r["row"]) for r in await conn.fetch(sql)]
            for table, sql in SNAPSHOT.items()
        }
    finally:
        await conn.close()


def fingerprint(rows: list[tuple[str, str]]) -> dict[str, Any]:
    """Row count and checksums of the xmins and of the rows, as recorded in the notes."""
    xmins = hashlib.sha256("\n".join(x for x, _ in rows).encode()).hexdigest()[:16]
    contents = hashlib.sha256("\n".join(r for _, r in rows).encode()).hexdigest()[:16]
    return {"rows": len(rows), "xmin_sha256": xmins, "rows_sha256": contents}


async def audit_rows(settings: Settings, org: Org) -> list[dict[str, Any]]:
    conn = await db.connect(settings.admin_database_url, operator=True)
    try:
        rows = await conn.fetch(
            "SELECT event, job_id, details FROM woo_sync_activity WHERE org_id = $1::uuid "
            "ORDER BY id",
            org.org_id,
        )
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def preview(stack: Stack, org: Org, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120) as client:
        return await client.post(
            stack.api_url + PREVIEW_PATH,
            json={"org_id": org.org_id, **body},
            headers=kwargs.pop("headers", org.headers),
            **kwargs,
        )


async def start_sync_answer(stack: Stack, org: Org, sim: SimHandle) -> httpx.Response:
    body = {"action": "start", "org_id": org.org_id, "config": store_config(sim)}
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(stack.api_url + ROUTE, json=body, headers=org.headers)


def store_config(sim: SimHandle) -> dict[str, str]:
    return {
        "url": sim.url,
        "consumer_key": sim.consumer_key,
        "consumer_secret": sim.consumer_secret,
        "auth": "oauth1",
    }


async def change_the_store(sim: SimHandle) -> dict[str, Any]:
    """Three renamed, one older edit, two deleted, four added; what was done, by id."""
    customers = await sim.customers()
    dated = [c for c in customers if c["date_modified_gmt"]]
    renamed = [c["id"] for c in dated[:3]]
    for n, woo_id in enumerate(renamed):
        await sim.update_customer(woo_id, first_name=f"Renamed{n}")
    older = dated[3]
    await sim.update_customer(
        older["id"], last_name="Older", date_modified_gmt="2001-01-01T00:00:00"
    )
    # From the middle: the simulator gives a new customer the id after the highest one.
    touched = set(renamed) | {older["id"]}
    deleted = [c["id"] for c in customers[100:110] if c["id"] not in touched][:2]
    for woo_id in deleted:
        await sim.delete_customer(woo_id)
    added = [
        (await sim.add_customer(email=f"new{n}@example.com", first_name=f"New{n}"))["id"]
        for n in range(4)
    ]
    return {
        "renamed": {woo_id: next(c for c in dated if c["id"] == woo_id) for woo_id in renamed},
        "older": older,
        "deleted": sorted(deleted),
        "added": sorted(added),
    }


EXPECTED_COUNTS = {
    "create": 4,
    "update": 3,
    "unchanged": CUSTOMERS - 3 - 1 - 2,
    "delete": 2,
    "conflict": 1,
    "invalid": 0,
}


def check_samples(samples: dict[str, Any], changed: dict[str, Any]) -> None:
    """Each change of ``change_the_store`` in the samples, field by field."""
    assert [s["woo_id"] for s in samples["create"]] == changed["added"]
    assert samples["create"][0]["diff"]["email"] == {"store": "new0@example.com", "mantis": None}
    assert [s["woo_id"] for s in samples["delete"]] == changed["deleted"]
    assert all(s["diff"]["email"]["store"] is None for s in samples["delete"])
    renamed = changed["renamed"]
    assert sorted(s["woo_id"] for s in samples["update"]) == sorted(renamed)
    for sample in samples["update"]:
        old = renamed[sample["woo_id"]]
        assert set(sample["diff"]) == {"first_name", "woo_date_modified"}
        assert sample["diff"]["first_name"]["mantis"] == old["first_name"]
        assert sample["diff"]["first_name"]["store"].startswith("Renamed")
    (conflict,) = samples["conflict"]
    assert conflict["woo_id"] == changed["older"]["id"]
    assert conflict["diff"]["last_name"] == {
        "store": "Older",
        "mantis": changed["older"]["last_name"],
    }
    assert "older than the stored one" in conflict["reason"]
    assert len(samples["unchanged"]) == 5
    assert all(s["diff"] == {} for s in samples["unchanged"])


async def synced_then_changed(
    settings: Settings, stack: Stack, sim: SimHandle
) -> tuple[Org, dict[str, Any], Any]:
    """A new org whose sync of ``sim`` is done, then the store changed; (org, changes, job)."""
    org = await new_org(settings)
    started = await start_sync(stack, org, sim)
    job = await wait_final(settings, started["job_id"])
    assert job["state"] == "done", job["last_error"]
    return org, await change_the_store(sim), job


async def test_preview_counts_the_changes_and_changes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    with (
        spawn_simulator(customers=CUSTOMERS, seed=23) as sim,
        spawn_simulator(customers=5, seed=24) as unknown,
    ):
        async with infra_shared_lock(), started_stack(settings, tmp_path) as stack:
            org, changed, job = await synced_then_changed(settings, stack, sim)
            other = await new_org(settings, "other")
            in_store = len(await sim.customers())
            before = await snapshot(settings)
            audits_before = await audit_rows(settings, org)

            response = await preview(
                stack, org, {"config": store_config(sim), "options": {"sample_size": 5}}
            )
            assert response.status_code == 200, response.text
            result = response.json()
            after = await snapshot(settings)

            # Nothing changed but one audit row.
            assert after == before
            audits = await audit_rows(settings, org)
            assert audits[: len(audits_before)] == audits_before
            (audit,) = audits[len(audits_before) :]
            assert audit["event"] == "preview.run" and audit["job_id"] is None
            assert audit["details"]["counts"] == result["counts"]
            print(
                "preview non-destructive proof:",
                json.dumps(
                    {
                        "before": {t: fingerprint(r) for t, r in before.items()},
                        "after": {t: fingerprint(r) for t, r in after.items()},
                        "audit_rows_added": len(audits) - len(audits_before),
                        "pages": result["pages"],
                        "estimate": result["estimate"],
                    }
                ),
            )

            # The counts and samples, exactly.
            assert result["counts"] == EXPECTED_COUNTS
            assert result["complete"] is True and result["problems"] == []
            assert result["store_total"] == in_store == CUSTOMERS + 2
            assert result["customers_read"] == in_store
            assert result["connection_id"] == str(job["connection_id"])
            check_samples(result["samples"], changed)
            # 202 customers in windows of 100 overlapping by 5: 3 pages.
            assert result["pages"]["per_page"] == 100 and result["pages"]["total"] == 3
            assert result["pages"]["requests"] >= 3
            assert result["estimate"]["concurrency"] == 4
            assert result["estimate"]["duration_s"] > 0

            # By the connection's id: the same answer, one more audit row, nothing else.
            by_id = await preview(stack, org, {"connection_id": result["connection_id"]})
            assert by_id.status_code == 200, by_id.text
            assert by_id.json()["counts"] == result["counts"]
            assert await snapshot(settings) == before
            assert len(await audit_rows(settings, org)) == len(audits) + 1

            # Another org's connection looks like no connection; an org_id not the key's: 403.
            stranger = await preview(stack, other, {"connection_id": result["connection_id"]})
            assert stranger.status_code == 404, stranger.text
            assert stranger.json()["error"]["code"] == "connection_not_found"
            forbidden = await preview(
                stack, org, {"connection_id": result["connection_id"]}, headers=other.headers
            )
            assert forbidden.status_code == 403, forbidden.text
            for body, status, words in [
                ({}, 422, "exactly one of config"),
                (
                    {"config": store_config(sim), "connection_id": result["connection_id"]},
                    422,
                    "exactly one of config",
                ),
                ({"connection_id": "nope"}, 422, "connection_id"),
                ({"connection_id": result["connection_id"], "options": {"concurrency": 0}},
                 422, "options.concurrency"),
                ({"connection_id": result["connection_id"], "options": {"sample_size": 51}},
                 422, "options.sample_size"),
                ({"config": {**store_config(sim), "consumer_secret": "cs_wrong"}},
                 422, "store_credentials_refused"),
            ]:  # fmt: skip
                refused = await preview(stack, org, body)
                assert refused.status_code == status, (body, refused.text)
                error = refused.json()["error"]
                assert words in f"{error['code']}: {error['message']}", refused.text
                assert "cs_wrong" not in refused.text and sim.consumer_secret not in refused.text
            async with httpx.AsyncClient(timeout=30) as client:
                unauthenticated = await client.post(stack.api_url + PREVIEW_PATH, json={})
            assert unauthenticated.status_code == 401
            assert await snapshot(settings) == before
            assert len(await audit_rows(settings, org)) == len(audits) + 1
            assert [a["event"] for a in await audit_rows(settings, other)] == ["key.created"]

            # A store the org has no connection to: all creates, and still no connection.
            fresh = await preview(stack, org, {"config": store_config(unknown)})
            assert fresh.status_code == 200, fresh.text
            assert fresh.json()["connection_id"] is None
            assert fresh.json()["counts"] == {
                "create": 5, "update": 0, "unchanged": 0, "delete": 0, "conflict": 0,
                "invalid": 0,
            }  # fmt: skip
            assert await snapshot(settings) == before

            # A store whose pages hold fewer customers than it claims: not proven complete, so
            # no deletion is counted (a missing customer may only have been missed).
            await sim.set_faults(claimed_total=in_store + 40)
            unproven = await preview(stack, org, {"connection_id": result["connection_id"]})
            assert unproven.status_code == 200, unproven.text
            answer = unproven.json()
            assert answer["complete"] is False and "X-WP-Total" in answer["problems"][0]
            assert answer["counts"] == {**EXPECTED_COUNTS, "delete": None}
            assert answer["samples"]["delete"] == []
            assert await snapshot(settings) == before


async def test_a_long_preview_runs_as_a_preview_job(settings: Settings, tmp_path: Path) -> None:
    env = {"WOOSYNC_PREVIEW_INLINE_MAX_CUSTOMERS": "100"}
    with spawn_simulator(customers=CUSTOMERS, seed=23) as sim:
        async with infra_shared_lock(), started_stack(settings, tmp_path, env) as stack:
            org, changed, job = await synced_then_changed(settings, stack, sim)
            before = await snapshot(settings)
            audits_before = await audit_rows(settings, org)

            # A slow store keeps the preview job reading while the same store is asked for again.
            await sim.set_faults(latency_ms=1500)
            response = await preview(stack, org, {"connection_id": str(job["connection_id"])})
            assert response.status_code == 202, response.text
            accepted = response.json()
            assert accepted["kind"] == "preview"
            again = await preview(stack, org, {"connection_id": str(job["connection_id"])})
            assert again.status_code == 409, again.text
            assert again.json()["error"]["code"] == "connection_busy"
            sync = await start_sync_answer(stack, org, sim)
            assert sync.status_code == 409, sync.text
            assert accepted["job_id"] in sync.json()["error"]["message"]
            await sim.set_faults(latency_ms=0)
            events = await follow_progress(accepted["progress_url"])
            assert events[-1][0] == "complete"
            assert {data["kind"] for _, data in events} == {"preview"}
            async with httpx.AsyncClient(timeout=30) as client:
                status = (await client.get(accepted["status_url"], headers=org.headers)).json()
            assert status["state"] == "done" and status["kind"] == "preview", status
            assert (status["total"], status["done"], status["failed"]) == (0, 0, 0)
            result = status["preview"]
            assert result["counts"] == EXPECTED_COUNTS
            assert result["complete"] is True
            assert result["connection_id"] == str(job["connection_id"])
            check_samples(result["samples"], changed)
            assert events[-1][1]["preview"] == result

            # Nothing changed but the preview job's own row and the audit rows.
            after = await snapshot(settings)
            jobs = "woo_customer_sync_queue"
            assert {t: r for t, r in after.items() if t != jobs} == {
                t: r for t, r in before.items() if t != jobs
            }
            assert [r for r in after[jobs] if accepted["job_id"] not in r[1]] == before[jobs]
            assert len(after[jobs]) == len(before[jobs]) + 1
            new_events = [
                a["event"] for a in (await audit_rows(settings, org))[len(audits_before) :]
            ]
            assert "job.completed" in new_events and "fetch.completed" in new_events
            assert all(
                a["job_id"] is not None
                for a in (await audit_rows(settings, org))[len(audits_before) :]
            )

            # A store the org has no connection to cannot be previewed by a job (no key is kept).
            with spawn_simulator(customers=150, seed=25) as unknown:
                refused = await preview(stack, org, {"config": store_config(unknown)})
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"]["code"] == "preview_too_large"
            assert "has none yet" in refused.json()["error"]["message"]
