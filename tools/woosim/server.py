"""Assembling a simulator and serving it with uvicorn inside the current event loop.

The listening socket is bound before uvicorn starts, so ``port=0`` yields the real port up
front. uvicorn's own signal handling is disabled: the CLI decides what a signal means, and an
embedded server (tests) must not touch the host process' handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import uvicorn

from tools.woosim import data
from tools.woosim.app import Simulator, create_app
from tools.woosim.auth import KeyRing, default_credentials
from tools.woosim.bulk import BULK_BASE, BulkStore
from tools.woosim.faults import FaultConfig, FaultInjector
from tools.woosim.store import CustomerStore

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SimOptions:
    """Everything that shapes one simulated store (the CLI flags, as a value)."""

    host: str = "127.0.0.1"
    port: int = 8100
    customers: int = 10_000
    seed: int = 1
    tls: bool = False
    ca_out: Path | None = None
    consumer_key: str | None = None
    consumer_secret: str | None = None
    allow_basic_over_http: bool = False
    tz_offset: str = data.DEFAULT_TZ_OFFSET
    base_time: datetime | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    # Customers made odd at start, one per kind (tools.woosim.data.odd_customer).
    odd_customers: tuple[str, ...] = ()
    # Serve ``customers`` cycled from a generated base (tools.woosim.bulk): flat memory, read only.
    bulk: bool = False


@dataclass(frozen=True)
class RunningSimulator:
    """A serving simulator: where it is, how to authenticate, and its live state."""

    url: str
    consumer_key: str
    consumer_secret: str
    ca_cert: str | None
    customers: int
    sim: Simulator
    server: uvicorn.Server
    task: asyncio.Task[None]

    def announcement(self) -> dict[str, Any]:
        """The JSON line the CLI prints once it is ready."""
        return {
            "url": self.url,
            "consumer_key": self.consumer_key,
            "consumer_secret": self.consumer_secret,
            "customers": self.customers,
            "ca_cert": self.ca_cert,
        }


def build_simulator(options: SimOptions) -> Simulator:
    """Generate the users and wire store, keys and faults (CPU-bound: seconds for 100k)."""
    default_key, default_secret = default_credentials(options.seed)
    store: CustomerStore
    if options.bulk:
        store = BulkStore(
            options.customers,
            data.iter_users(
                min(options.customers, BULK_BASE),
                options.seed,
                options.base_time,
                tz_offset=options.tz_offset,
            ),
            tz_offset=options.tz_offset,
        )
    else:
        store = CustomerStore(
            data.iter_users(
                options.customers, options.seed, options.base_time, tz_offset=options.tz_offset
            ),
            tz_offset=options.tz_offset,
        )
    if options.odd_customers:
        store.make_odd(options.odd_customers)
    keys = KeyRing(options.consumer_key or default_key, options.consumer_secret or default_secret)
    return Simulator(
        store=store,
        keys=keys,
        faults=FaultInjector(options.faults),
        allow_basic_over_http=options.allow_basic_over_http,
    )


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    cert_chain: Path
    private_key: Path


@contextlib.contextmanager
def tls_files(ca_out: Path | None = None) -> Iterator[TlsFiles]:
    """A fresh CA and a localhost/127.0.0.1/::1 certificate in a temporary directory."""
    import trustme

    ca = trustme.CA(organization_name="woosim test CA")
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    with tempfile.TemporaryDirectory(prefix="woosim-tls-") as directory:
        root = Path(directory)
        files = TlsFiles(root / "ca.pem", root / "server-chain.pem", root / "server-key.pem")
        ca.cert_pem.write_to_path(str(files.ca_cert))
        cert.private_key_pem.write_to_path(str(files.private_key))
        files.cert_chain.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
        if ca_out is not None:
            ca_out.parent.mkdir(parents=True, exist_ok=True)
            ca.cert_pem.write_to_path(str(ca_out))
        yield files


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, and TCP_NODELAY set, so that every accepted connection has Nagle's
    # algorithm off: asyncio sets TCP_NODELAY only on sockets whose protocol says TCP, and a
    # socket made with protocol 0 does not. With Nagle on, a response written in two parts (the
    # headers, then the body) waited for the client's delayed ACK: 44 ms on every kept-alive
    # request whose body fits in a few segments, which a real store's web server does not do.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _url(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


@contextlib.asynccontextmanager
async def serve(
    options: SimOptions,
    *,
    sim: Simulator | None = None,
    log_config: dict[str, Any] | None = None,
    log_level: str = "warning",
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> AsyncIterator[RunningSimulator]:
    """Serve ``sim`` (built from ``options`` in a worker thread if not given) until exit."""
    if sim is None:
        sim = await asyncio.to_thread(build_simulator, options)
    with contextlib.ExitStack() as stack:
        tls = stack.enter_context(tls_files(options.ca_out)) if options.tls else None
        sock = stack.enter_context(contextlib.closing(_bind(options.host, options.port)))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(sim),
            host=options.host,
            port=port,
            log_config=log_config,
            log_level=log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(SHUTDOWN_TIMEOUT_S),
            ssl_certfile=str(tls.cert_chain) if tls else None,
            ssl_keyfile=str(tls.private_key) if tls else None,
        )
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="woosim-server")
        try:
            await _wait_started(server, task, startup_timeout_s)
            ca_cert = None
            if tls is not None:
                ca_cert = str(options.ca_out or tls.ca_cert)
            yield RunningSimulator(
                url=_url("https" if tls else "http", options.host, port),
                consumer_key=sim.keys.consumer_key,
                consumer_secret=sim.keys.consumer_secret,
                ca_cert=ca_cert,
                customers=len(sim.store),
                sim=sim,
                server=server,
                task=task,
            )
        finally:
            await _stop(server, task)


async def _wait_started(server: uvicorn.Server, task: asyncio.Task[None], timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not server.started:
        if task.done():
            task.result()  # Raises the startup error.
            raise RuntimeError("woosim server exited during startup")
        if loop.time() > deadline:
            raise TimeoutError(f"woosim server did not start within {timeout_s:.0f}s")
        await asyncio.sleep(0.01)


async def _stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Graceful shutdown, bounded; then forced."""
    server.should_exit = True
    done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_TIMEOUT_S + 2)
    if not done:
        server.force_exit = True
        task.cancel()
        await asyncio.wait({task}, timeout=2)
    if task.done() and not task.cancelled():
        task.exception()  # Retrieved: a crash after startup is not worth a second traceback.
