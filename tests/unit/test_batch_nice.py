"""WOOSYNC_BATCH_NICE: the fetcher and the syncer lower their CPU priority at start, the api and
the tracker keep theirs (``shared.runtime.yield_cpu``). Each case runs in a process of its own,
as a service does, so the test process keeps its priority."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import logging, os, sys
from shared.runtime import yield_cpu
from shared.settings import Settings
yield_cpu(sys.argv[1], Settings(), logging.getLogger("probe"))
print(os.nice(0))
"""


def niceness_after_start(service: str, batch_nice: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "WOOSYNC_BATCH_NICE"}
    if batch_nice is not None:
        env["WOOSYNC_BATCH_NICE"] = batch_nice
    done = subprocess.run(
        [sys.executable, "-c", PROBE, service], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@pytest.mark.parametrize(
    ("service", "lowered"),
    [("fetcher", True), ("syncer", True), ("api", False), ("tracker", False)],
)
def test_batch_services_lower_their_priority(service: str, lowered: bool) -> None:
    base = os.nice(0)
    if base + 7 > 19:
        pytest.skip("this process already runs at the lowest priority")
    assert niceness_after_start(service, "7") == (base + 7 if lowered else base)
    assert niceness_after_start(service, None) == base  # the default keeps it


def test_batch_nice_is_checked() -> None:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        niceness_after_start("syncer", "20")
    assert "WOOSYNC_BATCH_NICE" in refused.value.stderr or "batch_nice" in refused.value.stderr
