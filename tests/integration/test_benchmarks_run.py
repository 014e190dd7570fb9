"""The benchmarks still run against the code as it is (tiny sizes; their figures are not checked
here: speed is never asserted in tests)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest

from tests.e2e.processes import infra_shared_lock

pytestmark = pytest.mark.timeout(180)


def run(*args: str, timeout_s: float = 170) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_rls_overhead_runs() -> None:
    out = run("bench.rls_overhead", "--sizes", "200")
    [row] = [line.split() for line in out.splitlines() if line.strip().startswith("200")]
    assert len(row) == 4 and float(row[3]) > 0


def test_status_rate_runs_and_measures_the_recent_window() -> None:
    out = run("bench.status_rate", "--sizes", "3000")
    [row] = [line.split() for line in out.splitlines() if line.strip().startswith("3,000")]
    assert len(row) == 5 and float(row[3]) > 0
    # The last 1,000 lines settled within the window, two thirds of them done: about 22 a second.
    assert abs(float(row[4]) - 1000 * 2 / 3 / 30) < 0.1, row


def test_throughput_runs_and_syncs_every_customer() -> None:
    out = run("bench.throughput", "--sizes", "300")
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("300 ")]
    assert rows, out
    # synced: after the floor, its two reads, the pipeline, the ratio, against the ratio
    # and against the target
    assert rows[-1][7] == "300", rows[-1]


def test_status_load_runs_with_every_stream_to_the_end() -> None:
    out = run(
        "bench.status_load",
        "--customers",
        "300",
        "--followers",
        "5",
        "--rate",
        "20",
        "--seconds",
        "1",
        "--window",
        "1",
        "--settle-s",
        "0",
    )
    assert "job done" in out and "streams that failed: 0" in out, out
    rows = {line[:28].strip(): line[28:].split() for line in out.splitlines() if line[:1] in "fir"}
    for name in ("floor: idle job, before", "idle job, meanwhile", "running job"):
        assert rows[name][-1] == "0", out  # no failed request
    assert "job_reads" in out and "lease_rows_renewed" in out, out


def test_soak_runs_and_loses_nothing() -> None:
    out = run("bench.soak", "--customers", "300")
    assert "customers lost:        0" in out and "customers duplicated:  0" in out, out


HOSTILE_TINY = (
    "--customers", "300", "--repeats", "1", "--request-deadline-s", "1", "--attempts", "2",
    "--check-deadline-s", "1.5", "--latency-ms", "200", "--force-after-pages", "3",
    "--watch-s", "1",
)  # fmt: skip


def figure(out: str, label: str) -> str:
    """The rest of the line starting with ``label`` (after the case number's indent)."""
    [line] = [x.strip() for x in out.splitlines() if x.strip().startswith(label)]
    return line[len(label) :]


def number(text: str, after: str = "") -> float:
    match = re.search(re.escape(after) + r"\s*([-+]?\d+(?:\.\d+)?)", text)
    assert match, (after, text)
    return float(match.group(1))


@pytest.mark.timeout(300)
async def test_hostile_runs_and_every_case_ends_as_it_must() -> None:
    # Shares the lock that server restarts take, so none lands mid-run.
    async with infra_shared_lock():
        out = await asyncio.to_thread(run, "bench.hostile", *HOSTILE_TINY, timeout_s=240)
    assert "PROBLEM" not in out, out
    assert number(figure(out, "fetcher RSS after an honest sync")) > 10  # MiB
    peak = figure(out, "fetcher peak RSS, liar until failed")
    assert number(peak) > 10 and number(peak, "ratio") > 0, out
    assert number(figure(out, "liar's job failed after")) > 0, out
    assert "WOOSYNC_MAX_STORE_CUSTOMERS" in out, out
    assert number(figure(out, "other org's honest sync beside liar"), "ratio") > 0, out
    trickled = figure(out, "start to job failed")
    assert number(trickled) > 0 and number(trickled, "ratio") > 0, out
    assert "request deadline" in figure(out, "error: store unavailable"), out
    assert number(figure(out, "start against it: 422 after"), "ratio") > 0, out
    assert number(figure(out, "force-done answered 200 after")) >= 0, out
    after = figure(out, "store requests during the call")
    assert number(after, "after its answer") >= 0, out
    assert number(figure(out, "last store request after the answer"), "ratio") >= 0, out


def test_adaptive_runs_and_fails_no_line() -> None:
    out = run(
        "bench.adaptive", "--customers", "300", "--latency-ms", "20", "--flat", "4",
        "--refuse-above", "2",
    )  # fmt: skip
    syncs = [line for line in out.splitlines() if line.strip().startswith("woosync,")]
    assert len(syncs) == 4, out
    for sync in syncs:
        assert "state done, synced 300, failed lines 0" in sync, out


def test_big_store_runs_and_both_scenarios_are_exact() -> None:
    out = run("bench.big_store", "--customers", "600", "--crawl-slice-s", "1")
    assert "exact       yes: 600 customers in the database" in out, out
    assert "peak / at 10%" in out and "hand-ons" in out, out
    out = run("bench.big_store", "--orgs", "3", "--per-org", "100", "--huge", "500")
    assert out.count("exact: all") == 2, out
    assert "small jobs with the huge store / alone" in out, out
