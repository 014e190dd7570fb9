"""Starting the four services for the fault tests, proof against a taken port.

``Stack`` picks free ports by binding and releasing them, so between that and a service binding
it, another process on the machine (other test sessions run at the same time) can take the port:
the service then exits, and the port's new owner may even answer ``/readyz``. So a stack counts
as started only when both ``readyz`` answer, both HTTP services have logged that they listen,
and every one of its processes still runs; otherwise it is stopped and started again on fresh
ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from shared.settings import Settings
from tests.e2e.harness import Stack
from tests.e2e.processes import infra_shared_lock

ATTEMPTS = 3
READY_TIMEOUT_S = 60.0

# Short store timeouts and backoff keep retries cheap; attempts are plenty for ~20% faults.
PATIENT_STORE = {
    "WOOSYNC_STORE_TIMEOUT_S": "1.0",
    "WOOSYNC_STORE_MAX_ATTEMPTS": "10",
    "WOOSYNC_STORE_BACKOFF_MAX_S": "1.0",
}
IMPATIENT_STORE = {
    "WOOSYNC_STORE_TIMEOUT_S": "1.0",
    "WOOSYNC_STORE_MAX_ATTEMPTS": "3",
    "WOOSYNC_STORE_BACKOFF_MAX_S": "0.2",
}


def _listening(stack: Stack, service: str) -> bool:
    log = stack.log_dir / f"{service}-0.log"
    return log.exists() and "Uvicorn running on" in log.read_text(errors="replace")


async def _ready(stack: Stack) -> bool:
    """True once both readyz answer 200 from our own processes; False if one exited."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in stack.processes.values()):
                return False
            answers = []
            for url in (stack.api_url, stack.tracker_url):
                try:
                    answers.append((await client.get(url + "/readyz")).status_code)
                except httpx.HTTPError:
                    answers.append(None)
            if answers == [200, 200] and all(_listening(stack, s) for s in ("api", "tracker")):
                return True
            await asyncio.sleep(0.2)
    raise AssertionError(f"services not ready after {READY_TIMEOUT_S:.0f}s")


@contextlib.asynccontextmanager
async def started_stack(
    settings: Settings, log_dir: Path, env: dict[str, str] | None = None
) -> AsyncIterator[Stack]:
    """The four services, ready, each in its own process; all stopped afterwards."""
    for attempt in range(1, ATTEMPTS + 1):
        directory = log_dir / f"start-{attempt}"
        directory.mkdir(parents=True, exist_ok=True)
        stack = Stack(settings, directory, extra_env=dict(env or {}))
        stack.start_all()
        try:
            ready = await _ready(stack)
        except BaseException:
            stack.stop_all()
            raise
        if ready:
            break
        stack.stop_all()
        if attempt == ATTEMPTS:
            raise AssertionError(f"services kept exiting at start:\n{stack.logs()[-3000:]}")
    try:
        yield stack
    finally:
        stack.stop_all()


@contextlib.asynccontextmanager
async def running(settings: Settings, log_dir: Path, env: dict[str, str]) -> AsyncIterator[Stack]:
    """The four services; a shared hold on the infrastructure lock keeps server restarts by
    other tests out of this one."""
    async with infra_shared_lock(), started_stack(settings, log_dir, env) as stack:
        yield stack
