"""With ``WOOSYNC_LOG_FORMAT=json`` every line every service writes is one JSON object naming its
service, the lines about a job's work name that job and its org (and the message they handle),
and neither the store's secret nor the API key is anywhere in them.

The four services run as real processes at DEBUG against a simulated store, whose secret is
deliberately not in WooCommerce's ``cs_<hex>`` shape, so only not writing it can pass.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from tests.e2e.harness import Stack, new_org, start_sync, wait_final
from tools.woosim.testing import spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CUSTOMERS = 150
SECRET = "store-secret-JsonLogProbe-42"
WAIT_S = 90.0


def read_lines(log_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Each service's log lines, parsed; a line that is no JSON object fails the test."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(log_dir.glob("*.log")):
        service = path.stem.rsplit("-", 1)[0]
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise AssertionError(f"{path.name}:{number} is not JSON: {line[:300]}") from None
            assert isinstance(record, dict), f"{path.name}:{number}: {line[:300]}"
            assert record.get("service") == service, f"{path.name}:{number}: {line[:300]}"
            assert {"level", "message", "timestamp"} <= record.keys(), line[:300]
            assert datetime.fromisoformat(record["timestamp"]).utcoffset() == timedelta(0)
            by_service.setdefault(service, []).append(record)
    return by_service


async def test_json_logs_name_the_service_job_org_and_message(
    settings: Settings, tmp_path: Path
) -> None:
    stack = Stack(
        settings,
        tmp_path,
        extra_env={"WOOSYNC_LOG_FORMAT": "json", "WOOSYNC_LOG_LEVEL": "DEBUG"},
    )
    with spawn_simulator(CUSTOMERS, seed=13, consumer_secret=SECRET) as sim:
        try:
            stack.start_all()
            await stack.wait_ready(timeout_s=WAIT_S)
            org = await new_org(settings)
            started = await start_sync(stack, org, sim, batch_size=50)
            job_id = started["job_id"]
            final = await wait_final(settings, job_id, timeout_s=WAIT_S)
            assert final["state"] == "done", final["last_error"]
        finally:
            stack.stop_all()

    raw = stack.logs()
    assert SECRET not in raw and org.api_key not in raw
    assert json.dumps(SECRET)[1:-1] not in raw
    by_service = read_lines(tmp_path)
    assert set(by_service) == {"api", "fetcher", "syncer", "tracker"}

    # A line that names the job in its text is about the job: it carries the job and its org.
    about = [r for lines in by_service.values() for r in lines if job_id in r["message"]]
    assert about
    wrong = [r for r in about if (r.get("job_id"), r.get("org_id")) != (job_id, org.org_id)]
    assert not wrong, wrong[:3]

    # Each service wrote lines of this job's work; the consumers' name the message handled.
    for service, lines in by_service.items():
        mine = [r for r in lines if r.get("job_id") == job_id]
        assert mine, f"{service} wrote no line carrying the job"
        assert all(r.get("org_id") == org.org_id for r in mine), (service, mine[:3])
        if service in ("fetcher", "syncer"):
            assert all(r.get("message_id") for r in mine), (service, mine[:3])
    handled = {r["message_id"] for r in by_service["syncer"] if r.get("job_id") == job_id}
    assert len(handled) >= CUSTOMERS // 50  # one batch message per page of 50
