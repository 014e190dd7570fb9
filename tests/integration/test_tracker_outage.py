"""The tracker during a database outage: nothing dropped, one log line rather than one per tick."""

from __future__ import annotations

import logging
import socket
from uuid import uuid4

import asyncpg
import pytest

from services.tracker.handlers import Tracker
from shared.messages import SyncCompleted


async def test_a_database_outage_is_logged_once_not_per_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A pool that connects lazily to a port where nothing listens: every tick fails.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    unreachable = await asyncpg.create_pool(f"postgresql://127.0.0.1:{port}/x", min_size=0)

    async def publish(done: SyncCompleted) -> None:
        raise AssertionError("nothing can finish")

    tracker = Tracker(unreachable, publish, sweep_interval_s=0.01, stall_timeout_s=60)
    jobs = {uuid4(): uuid4() for _ in range(3)}
    try:
        with caplog.at_level(logging.INFO, logger="woosync.tracker"):
            for _ in range(10):
                for job_id, org_id in jobs.items():
                    tracker.mark_dirty(job_id, org_id)
                await tracker.sweep()
                await tracker.detect_stalls()
                await tracker.flush()
    finally:
        await unreachable.close()
    records = [r for r in caplog.records if r.name == "woosync.tracker"]
    assert [r.levelname for r in records] == ["WARNING"], [r.getMessage() for r in records]
    assert "the database is unavailable" in records[0].getMessage()
    assert records[0].exc_info is None
    assert tracker.dirty == frozenset(jobs)  # nothing dropped: recomputed once it is back
