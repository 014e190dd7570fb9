"""``woosync up``: run the four services as child processes, logs interleaved and prefixed.

Text logs get the service's name as a prefix; JSON logs (``WOOSYNC_LOG_FORMAT=json``, or ``auto``
when this command's output is no terminal) pass through as they are, one object a line.

Ctrl-C, SIGTERM or SIGHUP (a closed terminal) stops every child with SIGTERM and waits for them;
a child that exits on its own is restarted with a growing pause, and if it keeps dying the whole
stack stops, so a broken configuration does not loop forever. Each child leads a session of its
own, as under systemd or a container runtime: the terminal's signals reach this process alone,
and the scheduler weighs each service apart (``WOOSYNC_BATCH_NICE``, ``shared.runtime``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shared.logs import resolve_format

SERVICES: tuple[str, ...] = ("api", "fetcher", "syncer", "tracker")
STOP_GRACE_S = 10.0
MAX_RESTARTS_PER_MINUTE = 5
LOG_FORMAT_VARIABLE = "WOOSYNC_LOG_FORMAT"
_COLOURS = {"api": "36", "fetcher": "33", "syncer": "35", "tracker": "32"}


def service_command(name: str) -> list[str]:
    return [sys.executable, "-m", f"services.{name}"]


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process | None = None
    starts: list[float] = field(default_factory=list)


# The schema owner's URL is for `woosync migrate` and the operator commands; the services run as
# the role row-level security binds and never get it (SECURITY.md).
OPERATOR_ONLY = ("WOOSYNC_ADMIN_DATABASE_URL",)


def service_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What a service process gets: ``env`` without operator-only settings, unbuffered output."""
    kept = {k: v for k, v in env.items() if k not in OPERATOR_ONLY}
    return {**kept, "PYTHONUNBUFFERED": "1"}


def children_log_format(env: Mapping[str, str], out: object) -> str:
    """The children write to a pipe, so their ``auto`` is decided here: text when this
    command's own output is a terminal, JSON otherwise."""
    wanted = env.get(LOG_FORMAT_VARIABLE, "auto")
    return resolve_format("auto", out) if wanted == "auto" else wanted  # type: ignore[arg-type]


class Supervisor:
    def __init__(
        self,
        services: Sequence[str] = SERVICES,
        env: Mapping[str, str] | None = None,
        *,
        colour: bool = True,
        out: object = None,
    ) -> None:
        self._children = [Child(name) for name in services]
        self._out = out or sys.stdout
        self._env = service_environment({**os.environ, **(env or {})})
        self._env[LOG_FORMAT_VARIABLE] = children_log_format(self._env, self._out)
        self._json = self._env[LOG_FORMAT_VARIABLE] == "json"
        self._colour = colour
        self._stopping = asyncio.Event()

    def _prefix(self, name: str) -> str:
        if self._json:  # every JSON line names its service; a prefix would make it no JSON
            return ""
        label = f"{name:<8}|"
        return f"\x1b[{_COLOURS.get(name, '0')}m{label}\x1b[0m " if self._colour else label + " "

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        prefix = self._prefix(name)
        while line := await stream.readline():
            self._out.write(prefix + line.decode(errors="replace"))  # type: ignore[attr-defined]
            self._out.flush()  # type: ignore[attr-defined]

    async def _start(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *service_command(child.name),
            env=self._env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own session: see shared.runtime.yield_cpu
        )
        child.starts.append(time.monotonic())
        assert child.process.stdout is not None
        asyncio.get_running_loop().create_task(self._pump(child.name, child.process.stdout))

    async def _watch(self, child: Child) -> None:
        while not self._stopping.is_set():
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping.is_set():
                return
            recent = [t for t in child.starts if time.monotonic() - t < 60]
            if len(recent) >= MAX_RESTARTS_PER_MINUTE:
                self._say(f"{child.name} keeps exiting (last code {code}); stopping the stack")
                self._stopping.set()
                return
            pause = 2 ** len(recent) / 4
            self._say(f"{child.name} exited with code {code}; restarting in {pause:.1f}s")
            await asyncio.sleep(pause)
            if not self._stopping.is_set():
                await self._start(child)

    def _say(self, text: str) -> None:
        if self._json:
            text = json.dumps({"level": "WARNING", "service": "woosync", "message": text})
        self._out.write(self._prefix("woosync") + text + "\n")  # type: ignore[attr-defined]
        self._out.flush()  # type: ignore[attr-defined]

    def pids(self) -> dict[str, int]:
        """The live child of each service (benchmarks sample their memory)."""
        return {
            c.name: c.process.pid
            for c in self._children
            if c.process is not None and c.process.returncode is None
        }

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        for child in self._children:
            await self._start(child)
        watchers = [asyncio.create_task(self._watch(c)) for c in self._children]
        await self._stopping.wait()
        await self._terminate_all()
        for task in watchers:
            task.cancel()
        return 0

    async def _terminate_all(self) -> None:
        live = [c.process for c in self._children if c.process and c.process.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in live)), timeout=STOP_GRACE_S
            )
        except TimeoutError:
            for process in live:
                if process.returncode is None:
                    self._say(f"pid {process.pid} did not stop in {STOP_GRACE_S:.0f}s; killing")
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
        self._say("all services stopped")
