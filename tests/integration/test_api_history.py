"""History and visibility through the live api: the org's jobs, a job's lines, its activity log,
and the rate and ETA of its status. Paging is followed link by link across pages."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import pytest

from services.tracker import handlers as tracker
from shared import activity
from shared.auth import create_org
from shared.db import for_org
from shared.paths import JOB_ACTIVITY_PATH, JOB_LINES_PATH, JOB_PATH, JOBS_PATH
from tests.factories import add_failed_lines, add_lines, make_connection, make_job
from tests.helpers import Api, error_of


async def pages(api: Api, first: str, *, key: str | None = None) -> list[list[dict[str, Any]]]:
    """Every page from ``first`` on, following the ``next`` links."""
    found: list[list[dict[str, Any]]] = []
    url: str | None = first
    while url is not None:
        response = await api.get(url, key=key)
        assert response.status_code == 200, response.text
        body = response.json()
        found.append(body["items"])
        assert (body["next"] is None) == (body["next_cursor"] is None), body
        if body["next"] is not None:
            assert body["next"].startswith(api.settings.api_base())
            parts = urlsplit(body["next"])
            url = f"{parts.path}?{parts.query}"
        else:
            url = None
        assert len(found) < 50, "paging does not end"
    return found


async def seed_jobs(api: Api) -> tuple[list[UUID], UUID, UUID]:
    """Nine jobs of the api's org on two connections, four sharing one created_at (ties);
    and one job of another org. Returns the org's job ids, its two connections."""
    conn_a = await make_connection(api.pool, api.org_id)
    conn_b = await make_connection(api.pool, api.org_id)
    states = ["done", "failed", "done", "processing", "failed", "done", "queued", "done", "failed"]
    jobs = [
        await make_job(api.pool, api.org_id, state=s, connection_id=(conn_a, conn_b)[i % 2])
        for i, s in enumerate(states)
    ]
    await api.pool.execute(
        "UPDATE woo_customer_sync_queue SET created_at = '2026-01-01T00:00:00Z' WHERE id = ANY($1)",
        jobs[2:6],
    )
    other = await make_org_job(api)
    assert other not in jobs
    return jobs, conn_a, conn_b


async def make_org_job(api: Api) -> UUID:
    other_org, _ = await create_org(api.pool, "other")
    return await make_job(api.pool, other_org, state="failed")


async def expected_order(api: Api, where: str = "true", *args: Any) -> list[str]:
    rows = await api.pool.fetch(
        f"SELECT id FROM woo_customer_sync_queue WHERE org_id = $1 AND {where} "
        "ORDER BY created_at DESC, id DESC",
        api.org_id,
        *args,
    )
    return [str(r["id"]) for r in rows]


@pytest.mark.parametrize("limit", [1, 2, 4, 9, 200])
async def test_jobs_are_listed_newest_first_across_pages(api: Api, limit: int) -> None:
    jobs, _, _ = await seed_jobs(api)
    found = await pages(api, f"{JOBS_PATH}?limit={limit}")
    ids = [item["job_id"] for page in found for item in page]
    assert ids == await expected_order(api)  # no repeat, no omission, newest first
    assert len(ids) == len(jobs) == 9
    assert all(len(page) <= limit for page in found)
    assert len(found) == -(-9 // limit)
    first = found[0][0]
    assert first["status_url"].endswith(JOB_PATH.format(job_id=first["job_id"]))
    assert first["store_url"].startswith("https://")


async def test_jobs_filters_by_state_and_connection(api: Api) -> None:
    _, conn_a, conn_b = await seed_jobs(api)
    failed = await pages(api, f"{JOBS_PATH}?state=failed&limit=1")
    assert [i["job_id"] for p in failed for i in p] == await expected_order(api, "state = 'failed'")
    assert {i["state"] for p in failed for i in p} == {"failed"}
    of_b = await pages(api, f"{JOBS_PATH}?connection_id={conn_b}&limit=2")
    assert [i["job_id"] for p in of_b for i in p] == await expected_order(
        api, "connection_id = $2", conn_b
    )
    both = await pages(api, f"{JOBS_PATH}?connection_id={conn_a}&state=done&limit=2")
    assert [i["job_id"] for p in both for i in p] == await expected_order(
        api, "connection_id = $2 AND state = 'done'", conn_a
    )
    assert both[0], "the filters should match some jobs"
    nothing = await api.get(f"{JOBS_PATH}?connection_id={uuid4()}")
    assert nothing.json() == {"items": [], "next_cursor": None, "next": None}


async def test_a_new_job_between_pages_is_not_repeated_or_skipped(api: Api) -> None:
    await seed_jobs(api)
    before = await expected_order(api)
    first = (await api.get(f"{JOBS_PATH}?limit=3")).json()
    await make_job(api.pool, api.org_id, state="queued")  # newest: before the first page
    rest = await pages(api, f"{JOBS_PATH}?limit=3&cursor={first['next_cursor']}")
    ids = [i["job_id"] for i in first["items"]] + [i["job_id"] for p in rest for i in p]
    assert ids == before


async def test_failed_lines_are_paged_with_their_errors(api: Api) -> None:
    job = await make_job(api.pool, api.org_id, state="failed")
    await add_failed_lines(
        api.pool, job, api.org_id, {w: {"id": w} for w in range(1, 24)}, last_error="bad email"
    )
    await add_lines(api.pool, job, api.org_id, [100, 101], "failed")  # no customer kept
    await add_lines(api.pool, job, api.org_id, range(200, 205), "done")
    found = await pages(api, JOB_LINES_PATH.format(job_id=job) + "?limit=10")
    lines = [line for page in found for line in page]
    assert [line["woo_id"] for line in lines] == [*range(1, 24), 100, 101]
    assert [len(page) for page in found] == [10, 10, 5]
    assert {line["state"] for line in lines} == {"failed"}
    assert lines[0]["last_error"] == "bad email" and lines[0]["retryable"] is True
    assert lines[-1]["retryable"] is False
    assert set(lines[0]) == {
        "woo_id",
        "state",
        "page",
        "attempts",
        "last_error",
        "retryable",
        "updated_at",
    }
    done = await pages(api, JOB_LINES_PATH.format(job_id=job) + "?state=done&limit=2")
    assert [line["woo_id"] for page in done for line in page] == list(range(200, 205))


async def test_activity_is_paged_oldest_first_with_who_did_it(api: Api, store: Any) -> None:
    job_id = (await api.start(store)).json()["job_id"]
    for n in range(5):
        await activity.record(
            api.pool,
            org_id=api.org_id,
            job_id=UUID(job_id),
            event=f"test.{n}",
            details={"by": "test", "n": n},
        )
    other = await make_org_job(api)  # another job's activity stays out
    await activity.record(api.pool, org_id=api.org_id, job_id=other, event="other.job")
    found = await pages(api, JOB_ACTIVITY_PATH.format(job_id=job_id) + "?limit=2")
    entries = [e for page in found for e in page]
    events = [e["event"] for e in entries]
    assert "job.queued" in events, events
    assert events[-5:] == [f"test.{n}" for n in range(5)]
    assert "other.job" not in events
    ids = [e["id"] for e in entries]
    assert ids == sorted(set(ids))
    queued = next(e for e in entries if e["event"] == "job.queued")
    assert queued["by"] == "api" and queued["details"]["api_key_id"]
    assert {"id", "at", "level", "event", "by", "details"} == set(queued)
    assert [e["by"] for e in entries if e["event"].startswith("test.")] == ["test"] * 5


async def test_another_orgs_job_is_404_and_never_listed(api: Api) -> None:
    theirs = await make_org_job(api)
    await add_lines(
        api.pool,
        theirs,
        await api.pool.fetchval("SELECT org_id FROM woo_customer_sync_queue WHERE id = $1", theirs),
        [1],
        "failed",
    )
    for path in (JOB_LINES_PATH, JOB_ACTIVITY_PATH):
        for job_id in (theirs, uuid4()):
            answer = await api.get(path.format(job_id=job_id))
            assert error_of(answer) == (404, "job_not_found"), path
    listed = (await api.get(JOBS_PATH)).json()
    assert listed["items"] == []
    unauthorised = await api.client.get(JOBS_PATH)
    assert error_of(unauthorised) == (401, "unauthorized")
    wrong_key = await api.get(JOB_LINES_PATH.format(job_id=theirs), key="wsk_" + "x" * 40)
    assert error_of(wrong_key) == (401, "unauthorized")


@pytest.mark.parametrize(
    ("path", "query", "named"),
    [
        (JOBS_PATH, "state=bogus", "state"),
        (JOBS_PATH, "state=", "state"),
        (JOBS_PATH, "connection_id=nope", "connection_id"),
        (JOBS_PATH, "limit=0", "limit"),
        (JOBS_PATH, "limit=201", "limit"),
        (JOBS_PATH, "limit=ten", "limit"),
        (JOBS_PATH, "cursor=%%%", "cursor"),
        (JOBS_PATH, "cursor=WzEsImxpbmVzIiwzXQ", "cursor"),  # a lines cursor
        (JOBS_PATH, "stat=done", "stat"),
        (JOBS_PATH, "state=done&state=failed", "state"),
        (JOB_LINES_PATH, "state=conflicting", "state"),
        (JOB_LINES_PATH, "cursor=WzEsImxpbmVzIiwtMV0", "cursor"),  # a negative woo id
        (JOB_LINES_PATH, "cursor=WzEsImpvYnMiLDNd", "cursor"),  # a jobs cursor
        (JOB_ACTIVITY_PATH, "limit=-1", "limit"),
        (JOB_ACTIVITY_PATH, "state=failed", "state"),
        (JOB_ACTIVITY_PATH, "cursor=bm90IGpzb24", "cursor"),
    ],
)
async def test_bad_input_is_422_naming_the_parameter(
    api: Api, path: str, query: str, named: str
) -> None:
    job = await make_job(api.pool, api.org_id, state="failed")
    before = await api.rows("woo_sync_activity")
    answer = await api.get(path.format(job_id=job) + "?" + query)
    assert error_of(answer) == (422, "invalid_request"), answer.text
    assert answer.json()["error"]["message"].startswith(named + ":"), answer.text
    assert await api.rows("woo_sync_activity") == before
    not_an_id = await api.get(JOB_LINES_PATH.format(job_id="not-a-uuid"))
    assert not_an_id.json()["error"]["message"] == "job_id: invalid UUID"


async def test_status_carries_rate_and_eta(api: Api) -> None:
    job = await make_job(api.pool, api.org_id, state="processing", store_total=100)
    await api.pool.execute(
        "UPDATE woo_customer_sync_queue SET started_at = now() - interval '5 minutes',"
        " done_count = 45, total = 45 WHERE id = $1",
        job,
    )
    await add_lines(api.pool, job, api.org_id, range(1, 31), "done")  # settled just now
    await add_lines(api.pool, job, api.org_id, range(31, 46), "done")
    await api.pool.execute(  # settled long ago: outside the window
        "UPDATE woo_customer_sync_queue_line SET updated_at = now() - interval '10 minutes'"
        " WHERE job_id = $1 AND woo_id > 30",
        job,
    )
    await tracker.recompute(for_org(api.pool, api.org_id), job)  # the tracker writes the rate
    status = (await api.get(JOB_PATH.format(job_id=job))).json()
    assert status["rate_per_s"] == 1.0  # 30 lines in the last 30 s
    assert status["pending"] == 55 and status["eta_s"] == 55

    await api.pool.execute("UPDATE woo_customer_sync_queue SET state = 'done' WHERE id = $1", job)
    final = (await api.get(JOB_PATH.format(job_id=job))).json()
    assert final["rate_per_s"] is None and final["eta_s"] is None


async def test_rate_without_a_known_total_has_no_eta(api: Api) -> None:
    job = await make_job(api.pool, api.org_id, state="processing")
    await api.pool.execute(
        "UPDATE woo_customer_sync_queue SET started_at = now() - interval '1 minute' WHERE id = $1",
        job,
    )
    await add_lines(api.pool, job, api.org_id, range(1, 16), "done")
    await tracker.recompute(for_org(api.pool, api.org_id), job)
    status = (await api.get(JOB_PATH.format(job_id=job))).json()
    assert status["rate_per_s"] == 0.5 and status["eta_s"] is None
