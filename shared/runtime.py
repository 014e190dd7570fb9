"""How every service is wired: one runtime opens settings, logging, the database pool, the broker
and its topology in one order and closes them in the reverse one.

``start_process(service)`` is a process's first step (settings, logging, the database role check
that exits 2 on a wrong role); ``Runtime`` holds the broker from the start, so subscribers can be
declared on it before anything connects (and the AsyncAPI document can be generated from it),
and opens the rest when the service starts:

    open:  pool -> broker connection -> topology declared -> (subscribers consume)
    close: (the service's own stop: subscribers, loops, crawls) -> broker stopped -> pool closed

The api and the tracker run ``serving()`` as their Starlette lifespan; the fetcher and the syncer
run ``faststream_app()``, whose startup and shutdown hooks call the same ``open`` and ``close``,
served over HTTP by ``asgi_app()`` (FastStream's ``AsgiFastStream``) for ``/healthz``,
``/readyz`` and ``/metrics``.

Each runtime has its own Prometheus ``registry`` (``shared.metrics``); FastStream's
``RabbitPrometheusMiddleware`` on the broker fills it with every consumer's and publisher's
message counts and durations, labelled ``app_name`` = the service.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from types import FrameType

import asyncpg
import tenacity
import uvicorn
from faststream import FastStream
from faststream.asgi import AsgiFastStream
from faststream.rabbit import RabbitBroker
from faststream.rabbit.prometheus import RabbitPrometheusMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared import db, web
from shared.broker import make_broker
from shared.logs import configure
from shared.metrics import Refresh, metrics_endpoint, new_registry
from shared.settings import Settings
from shared.topology import Topology, declare_publishers, declare_topology

POOL_CLOSE_TIMEOUT_S = 3.0

Hook = Callable[[], Awaitable[None]]
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")


def start_process(service: str) -> tuple[Settings, logging.Logger]:
    """A service process's first steps: settings, logging, and the database role check (exit 2
    on a role row-level security does not bind, exit 1 when the database cannot be asked)."""
    settings = Settings()
    log = configure(service, settings.log_level, settings.log_format)
    yield_cpu(service, settings, log)
    db.require_app_role(
        settings.database_url, log, statement_cache_size=settings.db_statement_cache_size
    )
    return settings, log


# Batch work: under a busy CPU, it waits for the api and the tracker (WOOSYNC_BATCH_NICE).
BATCH_SERVICES = frozenset({"fetcher", "syncer"})


AUTOGROUP = "/proc/self/autogroup"


def yield_cpu(service: str, settings: Settings, log: logging.Logger) -> None:
    """A batch service lowers its CPU priority by ``WOOSYNC_BATCH_NICE``; the others keep theirs.

    Linux's scheduler autogroups (on by default) share the CPU between sessions first and apply
    a process's niceness only within its session: a niced syncer still weighs as much as the
    whole of PostgreSQL. So a batch service that leads a session of its own (``woosync up``,
    systemd and container runtimes start each service so) lowers its session's weight too; in a
    shared session that would lower its neighbours', so it leaves the group alone there.
    """
    if service not in BATCH_SERVICES or not settings.batch_nice:
        return
    niceness = os.nice(settings.batch_nice)
    group = "no autogroup of its own"
    if os.getsid(0) == os.getpid() and os.path.exists(AUTOGROUP):
        try:
            _set_autogroup_nice(niceness)
            group = f"its session's autogroup at nice {niceness}"
        except OSError as error:  # a kernel that refuses: the niceness alone still ranks it
            group = f"autogroup unchanged ({error.strerror})"
    log.info("%s runs at nice %d, %s (WOOSYNC_BATCH_NICE)", service, niceness, group)


@tenacity.retry(
    retry=tenacity.retry_if_exception(lambda e: isinstance(e, OSError) and e.errno == errno.EAGAIN),
    wait=tenacity.wait_fixed(0.11),
    stop=tenacity.stop_after_attempt(10),
    reraise=True,
)
def _set_autogroup_nice(niceness: int) -> None:
    """Linux lets an unprivileged process change an autogroup's niceness once per 100 ms across
    the whole machine (EAGAIN otherwise): the fetcher and the syncer start together."""
    with open(AUTOGROUP, "w") as autogroup:
        autogroup.write(str(niceness))


class Runtime:
    """One service's settings, topology, broker and (once open) pool."""

    def __init__(self, service: str, settings: Settings, *, prefetch: int | None = None) -> None:
        """``prefetch``: the messages each of the service's consumers holds at once, when not
        ``WOOSYNC_PREFETCH`` (the fetcher's crawls)."""
        self.service = service
        self.settings = settings
        self.log = logging.getLogger(f"woosync.{service}")
        self.topology = Topology(settings.namespace, tuple(settings.retry_delays_ms))
        self.broker: RabbitBroker = make_broker(
            settings, logger=logging.getLogger(f"woosync.{service}.broker"), prefetch=prefetch
        )
        declare_publishers(self.broker, self.topology, service)  # for the AsyncAPI document
        self.registry = new_registry()
        self.broker.add_middleware(
            RabbitPrometheusMiddleware(registry=self.registry, app_name=service)
        )
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"the {self.service} runtime is not open")
        return self._pool

    async def open(self) -> asyncpg.Pool:
        """Pool, broker connection, topology; subscribers start consuming only afterwards."""
        self._pool = await db.create_pool(
            self.settings.database_url,
            name=f"woosync-{self.service}",
            min_size=self.settings.db_pool_min_size,
            max_size=self.settings.db_pool_max_size,
            statement_cache_size=self.settings.db_statement_cache_size,
        )
        await self.broker.connect()
        await declare_topology(self.broker, self.topology)
        return self._pool

    async def start_consuming(self) -> None:
        """Start the subscribers declared on the broker (FastStream apps do this themselves)."""
        await self.broker.start()

    async def stop_consuming(self) -> None:
        """Stop taking messages; the connection stays up for what is still to publish."""
        for subscriber in self.broker.subscribers:
            await subscriber.stop()

    async def close(self) -> None:
        """Broker, then pool (bounded: a connection stuck on a dead server is terminated)."""
        try:
            await self.broker.stop()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT_S)
                except TimeoutError:
                    pool.terminate()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[asyncpg.Pool]:
        """``open`` ... ``close``, for a Starlette lifespan."""
        try:
            yield await self.open()
        finally:
            await self.close()

    def faststream_app(
        self, *, started: Sequence[Hook] = (), stopping: Sequence[Hook] = ()
    ) -> FastStream:
        """A consumer process: ``open`` then ``started`` (the service's deps) before the
        subscribers consume; ``stopping`` before FastStream's graceful stop waits for running
        handlers; ``close`` after it."""

        async def startup() -> None:
            await self.open()
            for hook in started:
                await hook()

        return FastStream(
            self.broker,
            logger=self.log,
            on_startup=[startup],
            on_shutdown=list(stopping),
            after_shutdown=[self.close],
        )

    async def readiness(self) -> tuple[bool, bool]:
        """(PostgreSQL answers, the broker connection is up); both False before ``open``."""
        if self._pool is None:
            return False, False
        return await web.readiness(self._pool, self.broker)

    def probes(self, *, refresh: Refresh | None = None) -> Starlette:
        """``/healthz`` (no I/O), ``/readyz`` (200 or 503) and ``/metrics`` of a consumer
        process; ``refresh`` reads scrape-time values first."""

        async def readyz(request: Request) -> Response:
            database, broker = await self.readiness()
            return JSONResponse(
                web.readiness_body(database, broker),
                status_code=200 if database and broker else 503,
            )

        return Starlette(
            routes=[
                Route("/healthz", web.healthz, methods=["GET"]),
                Route("/readyz", readyz, methods=["GET"]),
                Route("/metrics", metrics_endpoint(self.registry, refresh), methods=["GET"]),
            ]
        )

    def asgi_app(self, app: FastStream, *, refresh: Refresh | None = None) -> AsgiFastStream:
        """``app`` (from ``faststream_app``) as an ASGI app: its hooks run as the lifespan, the
        probe routes answer HTTP. The process serves it with uvicorn."""
        probes = self.probes(refresh=refresh)
        return AsgiFastStream.from_app(app, asgi_routes=[(path, probes) for path in PROBE_PATHS])


class _ConsumerServer(uvicorn.Server):
    """uvicorn's server, except that a stop asked for by SIGTERM or SIGINT exits with status 0,
    as FastStream's own runner did: the stop was graceful (uvicorn re-raises the signal once shut
    down, which would report the process as killed)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


def serve_asgi(app: AsgiFastStream, host: str, port: int) -> None:
    """Serve a consumer's ASGI app until SIGTERM; port 0 lets the system pick one (logged)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # keep the handler configure() installed
        access_log=False,  # probes and scrapes every few seconds are not news
        server_header=False,
        lifespan="on",
    )
    _ConsumerServer(config).run()
