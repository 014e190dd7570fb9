"""``woosync jobs list|show|watch`` as a user runs them, against the real processes.

``watch`` follows a job's progress stream while the tracker is killed and started again
mid-stream: it must reconnect with Last-Event-ID, show no event twice, and exit 0 when the job
is done; 1 for a failed job; 2 for an unknown job or a refused key, without printing the key.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from shared import db
from shared.settings import Settings
from tests.e2e.harness import Org, Stack, new_org, start_sync
from tests.e2e.processes import running_stack
from tests.factories import make_job
from tools.woosim.testing import spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
CUSTOMERS = 1_500


def cli_env(stack: Stack, org: Org) -> dict[str, str]:
    return {**stack.env, "WOOSYNC_API_KEY": org.api_key}


async def jobs_cli(
    stack: Stack, org: Org, *args: str, key: str | None = None
) -> tuple[int, str, str]:
    env = cli_env(stack, org) | ({"WOOSYNC_API_KEY": key} if key is not None else {})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "woosync.cli", "jobs", "--api-url", stack.api_url, *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_watch_resumes_across_a_tracker_restart(settings: Settings, tmp_path: Path) -> None:
    with spawn_simulator(customers=CUSTOMERS, seed=11, latency_ms=400) as sim:
        async with running_stack(settings, tmp_path) as stack:
            org = await new_org(settings)
            job = await start_sync(stack, org, sim, concurrency=1)
            watch = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "woosync.cli", "jobs", "--api-url", stack.api_url,
                "watch", job["job_id"], "--json",
                env=cli_env(stack, org), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert watch.stdout is not None and watch.stderr is not None
            events: list[dict[str, Any]] = []
            try:
                first = await asyncio.wait_for(watch.stdout.readline(), 60)
                events.append(json.loads(first))
                assert events[0]["event"] == "progress", events
                stack.restart("tracker")  # SIGKILL mid-stream, then a fresh tracker
                while line := await asyncio.wait_for(watch.stdout.readline(), 180):
                    events.append(json.loads(line))
                code = await asyncio.wait_for(watch.wait(), 30)
                stderr = (await watch.stderr.read()).decode()
            finally:
                if watch.returncode is None:
                    watch.kill()
                    await watch.wait()

            assert code == 0, (stderr, events[-3:])
            assert "reconnecting" in stderr, stderr
            assert org.api_key not in stderr
            ids = [e["id"] for e in events]
            assert ids == sorted(set(ids)), ids  # each event once, in order
            assert [e["event"] for e in events].count("complete") == 1
            assert events[-1]["event"] == "complete" and events[-1]["state"] == "done"
            assert events[-1]["done"] == CUSTOMERS
            settled = [e["done"] + e["failed"] for e in events]
            assert settled == sorted(settled), settled
            statuses = [{k: v for k, v in e.items() if k != "id"} for e in events]
            repeats = [a for a, b in zip(statuses, statuses[1:], strict=False) if a == b]
            assert not repeats, repeats
            # The stream kept going after the restart: the first event came before it, the
            # job was not done then, and the rest came from the new tracker.
            assert events[0]["done"] < CUSTOMERS and len(events) >= 2
            running = [e for e in events if e["state"] != "done"]
            assert any(e["rate_per_s"] is not None for e in running[1:] or running), running

            # list and show, the same job, through the same api.
            code, out, err = await jobs_cli(stack, org, "list", "--json")
            assert code == 0, err
            listed = [json.loads(line) for line in out.splitlines()]
            assert [j["job_id"] for j in listed] == [job["job_id"]]
            assert listed[0]["state"] == "done" and listed[0]["done"] == CUSTOMERS
            code, out, err = await jobs_cli(stack, org, "show", job["job_id"], "--json")
            assert code == 0, err
            shown = json.loads(out)
            assert shown["status"]["state"] == "done" and shown["lines"] == []
            assert {"job.queued", "job.completed"} <= {e["event"] for e in shown["activity"]}
            code, out, err = await jobs_cli(stack, org, "show", job["job_id"])
            assert code == 0 and "job.completed" in out, err
            assert org.api_key not in out + err


async def test_watch_exit_codes(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as stack:
        org = await new_org(settings)
        pool = await db.create_pool(settings.admin_database_url, min_size=1, max_size=1)
        try:
            failed = await make_job(
                pool, UUID(org.org_id), state="failed", fetch_done=True, finished=True
            )
            other = await new_org(settings, "other")
            theirs = await make_job(pool, UUID(other.org_id), state="processing")
        finally:
            await pool.close()

        code, out, err = await jobs_cli(stack, org, "watch", str(failed), "--json")
        assert code == 1, err
        assert [json.loads(line)["event"] for line in out.splitlines()][-1] == "complete"
        code, out, err = await jobs_cli(stack, org, "watch", str(failed))  # the bar, on stderr
        assert code == 1 and f"job {failed}: failed" in err, (out, err)

        code, out, err = await jobs_cli(stack, org, "watch", str(theirs))
        assert code == 2 and "no such job" in err, err
        code, out, err = await jobs_cli(stack, org, "list", key="wsk_not-a-key")
        assert code == 2 and "401" in err, err
        assert "wsk_not-a-key" not in out + err
        code, out, err = await jobs_cli(stack, org, "list", "--state", "bogus")
        assert code == 2 and "bogus" in err, err
