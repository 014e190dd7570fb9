"""WOOSYNC_BATCH_NICE: the fetcher and the syncer lower their CPU priority at start, the api and
the tracker keep theirs (``shared.runtime.yield_cpu``); a batch service leading a session of its
own lowers its scheduler autogroup's too. Each case runs in a process of its own, as a service
does, so the test process keeps its priority."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import logging, os, sys
from shared.runtime import yield_cpu
from shared.settings import Settings
yield_cpu(sys.argv[1], Settings(), logging.getLogger("probe"))
print(os.nice(0))
print(open("/proc/self/autogroup").read() if os.path.exists("/proc/self/autogroup") else "")
"""

AUTOGROUP = "/proc/self/autogroup"


def after_start(
    service: str, batch_nice: str | None, *, own_session: bool = False
) -> tuple[int, str]:
    """The probe's niceness and its autogroup line after ``yield_cpu``."""
    env = {k: v for k, v in os.environ.items() if k != "WOOSYNC_BATCH_NICE"}
    if batch_nice is not None:
        env["WOOSYNC_BATCH_NICE"] = batch_nice
    done = subprocess.run(
        [sys.executable, "-c", PROBE, service], env=env, capture_output=True, text=True,
        check=True, start_new_session=own_session,
    )
    niceness, autogroup = (done.stdout.splitlines() + [""])[:2]
    return int(niceness), autogroup.strip()


def niceness_after_start(service: str, batch_nice: str | None) -> int:
    return after_start(service, batch_nice)[0]


def autogroup_nice(line: str) -> int:
    return int(line.rsplit("nice", 1)[1])


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


@pytest.mark.skipif(not os.path.exists(AUTOGROUP), reason="no scheduler autogroups here")
def test_a_batch_service_in_its_own_session_lowers_its_autogroup() -> None:
    """Autogroups share the CPU between sessions before niceness counts: a niced syncer in its
    own session still weighed as much as all of PostgreSQL until its group was lowered too."""
    base = os.nice(0)
    if base + 7 > 19:
        pytest.skip("this process already runs at the lowest priority")
    _, syncer = after_start("syncer", "7", own_session=True)
    assert autogroup_nice(syncer) == base + 7
    _, api = after_start("api", "7", own_session=True)
    assert autogroup_nice(api) == 0  # a new session's group starts at 0; the api keeps it


@pytest.mark.skipif(not os.path.exists(AUTOGROUP), reason="no scheduler autogroups here")
def test_a_batch_service_in_a_shared_session_leaves_the_group_alone() -> None:
    with open(AUTOGROUP) as mine:
        before = mine.read().strip()
    niceness, group = after_start("syncer", "7")
    assert niceness == os.nice(0) + 7
    assert group == before  # the test's own group: lowering it would lower its neighbours


@pytest.mark.skipif(not os.path.exists(AUTOGROUP), reason="no scheduler autogroups here")
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody"
)
def test_an_unprivileged_service_waits_out_the_kernels_rate_limit() -> None:
    """An unprivileged process may change an autogroup's niceness once per 100 ms machine-wide;
    the fetcher and the syncer start together, so the second write must wait, not give up."""
    probe = (
        "from shared.runtime import _set_autogroup_nice\n"
        "_set_autogroup_nice(3)\n"
        "_set_autogroup_nice(4)\n"
        "print(open('/proc/self/autogroup').read())\n"
    )
    done = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
        start_new_session=True,
    )
    if "Permission denied" in done.stderr:
        pytest.skip("nobody cannot run this interpreter here")
    assert done.returncode == 0, done.stderr
    assert autogroup_nice(done.stdout.strip()) == 4
