"""The benchmarks still run against the code as it is (tiny sizes; their figures are not checked
here: speed is never asserted in tests)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(180)


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=170
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_rls_overhead_runs() -> None:
    out = run("bench.rls_overhead", "--sizes", "200")
    [row] = [line.split() for line in out.splitlines() if line.strip().startswith("200")]
    assert len(row) == 4 and float(row[3]) > 0


def test_throughput_runs_and_syncs_every_customer() -> None:
    out = run("bench.throughput", "--sizes", "300")
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("300 ")]
    assert rows, out
    assert rows[-1][4] == "300"  # synced


def test_soak_runs_and_loses_nothing() -> None:
    out = run("bench.soak", "--customers", "300")
    assert "customers lost:        0" in out and "customers duplicated:  0" in out, out
