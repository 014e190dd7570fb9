"""Real-process harness for end-to-end and fault tests.

``Stack`` runs each service (and any number of replicas) as its own ``python -m services.<name>``
process, with its output in a per-process log file, so a test can SIGKILL, SIGTERM or restart any
one of them mid-sync. The helpers start a sync through the HTTP API, wait for the job to end, and
check the exact final state of ``customer`` and the lines against the simulated store.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr

from shared import db
from shared.auth import create_org
from shared.crypto import SecretBox
from shared.settings import Settings
from shared.storeurl import normalize_store_url

ROUTE = "/api/v1/integrations/woocommerce/sync/customers"
E2E_SECRET_KEY = "e2e-secret-key"  # the stack's WOOSYNC_SECRET_KEY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    settings: Settings
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[tuple[str, int], subprocess.Popen[bytes]] = field(default_factory=dict)
    # The HTTP port (/healthz, /readyz, /metrics) of each fetcher and syncer process, and of
    # each api and tracker replica after the first (which use WOOSYNC_API_PORT / _TRACKER_PORT).
    ports: dict[tuple[str, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {
            **os.environ,
            "WOOSYNC_DATABASE_URL": self.settings.database_url,
            "WOOSYNC_AMQP_URL": self.settings.amqp_url,
            "WOOSYNC_NAMESPACE": self.settings.namespace,
            "WOOSYNC_SECRET_KEY": E2E_SECRET_KEY,
            "WOOSYNC_API_PORT": str(free_port()),
            "WOOSYNC_TRACKER_PORT": str(free_port()),
            "WOOSYNC_RETRY_DELAYS_MS": "[200,400,800]",
            "WOOSYNC_ALLOW_PRIVATE_URLS": "true",
            "PYTHONUNBUFFERED": "1",
            # The tests read these logs as text; tests/e2e/test_json_logs.py runs them as JSON.
            "WOOSYNC_LOG_FORMAT": "text",
            **self.extra_env,
        }

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['WOOSYNC_API_PORT']}"

    @property
    def tracker_url(self) -> str:
        return f"http://127.0.0.1:{self.env['WOOSYNC_TRACKER_PORT']}"

    def url(self, service: str, replica: int = 0) -> str:
        """The base URL of a process's HTTP port."""
        if service in ("api", "tracker") and replica == 0:
            return self.api_url if service == "api" else self.tracker_url
        return f"http://127.0.0.1:{self.ports[(service, replica)]}"

    def start(self, service: str, replica: int = 0) -> subprocess.Popen[bytes]:
        key = (service, replica)
        old = self.processes.get(key)
        assert old is None or old.poll() is not None, f"{service}[{replica}] is still running"
        env = self.env
        port_key = f"WOOSYNC_{service.upper()}_PORT"
        if service in ("fetcher", "syncer"):  # replicas on one host: a port each
            self.ports[key] = int(self.extra_env.get(port_key) or free_port())
            env = {**env, port_key: str(self.ports[key])}
        elif replica > 0:  # another api or tracker: its own port (kept across restarts)
            self.ports.setdefault(key, free_port())
            env = {**env, port_key: str(self.ports[key])}
        log = (self.log_dir / f"{service}-{replica}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes[key] = process
        return process

    def start_all(
        self, *, fetchers: int = 1, syncers: int = 1, apis: int = 1, trackers: int = 1
    ) -> None:
        for n in range(apis):
            self.start("api", n)
        for n in range(trackers):
            self.start("tracker", n)
        for n in range(fetchers):
            self.start("fetcher", n)
        for n in range(syncers):
            self.start("syncer", n)

    def signal(self, service: str, replica: int = 0, sig: int = signal.SIGKILL) -> None:
        process = self.processes[(service, replica)]
        if process.poll() is None:
            process.send_signal(sig)

    def kill(self, service: str, replica: int = 0) -> None:
        self.signal(service, replica, signal.SIGKILL)
        self.processes[(service, replica)].wait(timeout=10)

    def restart(self, service: str, replica: int = 0) -> None:
        self.kill(service, replica)
        self.start(service, replica)

    def stop(self, service: str, replica: int = 0, timeout_s: float = 15.0) -> float:
        """SIGTERM and wait; returns how long the process took to exit."""
        process = self.processes[(service, replica)]
        started = time.monotonic()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=timeout_s)
        return time.monotonic() - started

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        http = [(s, r) for s, r in self.processes if s in ("api", "tracker")]
        async with httpx.AsyncClient(timeout=2) as client:
            for url in [self.url(s, r) for s, r in sorted(http)]:
                while True:
                    try:
                        if (await client.get(url + "/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{url} never became ready")
                    await asyncio.sleep(0.2)
        # Another process may hold a port we picked and answer /readyz in our place.
        dead = [f"{s}[{r}]" for (s, r), p in self.processes.items() if p.poll() is not None]
        assert not dead, f"{', '.join(dead)} exited while starting:\n{self.logs()[-3000:]}"


@dataclass(frozen=True)
class Org:
    org_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


async def new_org(settings: Settings, name: str = "e2e") -> Org:
    pool = await db.create_pool(settings.admin_database_url, min_size=1, max_size=1)
    try:
        org_id, key = await create_org(pool, name)
    finally:
        await pool.close()
    return Org(str(org_id), key)


async def start_sync(
    stack: Stack, org: Org, sim: Any, *, auth: str = "oauth1", api: int = 0, **options: Any
) -> dict[str, Any]:
    """Start a sync of ``sim`` through the api replica ``api``; its 202 answer."""
    body = {
        "action": "start",
        "org_id": org.org_id,
        "config": {
            "url": sim.url, "consumer_key": sim.consumer_key,
            "consumer_secret": sim.consumer_secret, "auth": auth,
        },
        "options": {"batch_size": 100, "concurrency": 4, **options},
    }
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(stack.url("api", api) + ROUTE, json=body, headers=org.headers)
    assert response.status_code == 202, response.text
    return response.json()


async def action(stack: Stack, org: Org, name: str, job_id: str, **fields: Any) -> httpx.Response:
    body = {"action": name, "org_id": org.org_id, "job_id": job_id, **fields}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(stack.api_url + ROUTE, json=body, headers=org.headers)


async def job_status(settings: Settings, job_id: str) -> asyncpg.Record:
    """Read straight from the database, so it works while the api is down."""
    conn = await asyncpg.connect(settings.admin_database_url)
    try:
        return await conn.fetchrow(
            "SELECT * FROM woo_customer_sync_queue WHERE id = $1::uuid", job_id
        )
    finally:
        await conn.close()


async def wait_final(settings: Settings, job_id: str, timeout_s: float = 120.0) -> asyncpg.Record:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            row = await job_status(settings, job_id)
            if row["state"] in ("done", "failed", "cancelled"):
                return row
        except (OSError, asyncpg.PostgresError):
            pass  # the database may be restarting
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not final after {timeout_s:.0f}s")
        await asyncio.sleep(0.25)


def _gmt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value).replace(tzinfo=UTC) if value else None


async def assert_exact(
    settings: Settings, org: Org, job_id: str, store: list[dict[str, Any]]
) -> None:
    """Every store customer is in ``customer`` exactly once, equal field by field; every line of
    the job is done; the job's counts say so."""
    conn = await db.connect(settings.admin_database_url)
    try:
        rows = await conn.fetch(
            "SELECT * FROM customer WHERE org_id = $1::uuid ORDER BY woo_id", org.org_id
        )
        lines = await conn.fetch(
            "SELECT state, count(*) AS n FROM woo_customer_sync_queue_line "
            "WHERE job_id = $1::uuid GROUP BY state", job_id,
        )
        job = await conn.fetchrow(
            "SELECT * FROM woo_customer_sync_queue WHERE id = $1::uuid", job_id
        )
    finally:
        await conn.close()
    by_id = {c["id"]: c for c in store}
    assert [r["woo_id"] for r in rows] == sorted(by_id), "missing or extra customers"
    for row in rows:
        source = by_id[row["woo_id"]]
        assert row["raw"] == source, f"customer {row['woo_id']} differs from the store"
        assert row["email"] == source["email"]
        assert row["woo_date_modified"] == _gmt(source["date_modified_gmt"])
    assert {r["state"]: r["n"] for r in lines} == {"done": len(store)}
    assert job["state"] == "done", (job["state"], job["last_error"])
    assert (job["total"], job["done_count"], job["failed_count"]) == (len(store), len(store), 0)


async def assert_good_synced(settings: Settings, org: Org, good: list[dict[str, Any]]) -> None:
    """Exactly the ``good`` customers are in ``customer`` for the org, each as the store sent it."""
    conn = await db.connect(settings.admin_database_url)
    try:
        rows = await conn.fetch(
            "SELECT woo_id, raw FROM customer WHERE org_id = $1::uuid ORDER BY woo_id", org.org_id
        )
    finally:
        await conn.close()
    assert [r["woo_id"] for r in rows] == sorted(c["id"] for c in good)
    by_id = {c["id"]: c for c in good}
    for row in rows:
        assert row["raw"] == by_id[row["woo_id"]]


@dataclass(frozen=True)
class Scrape:
    """One ``/metrics`` answer, parsed: sample name and labels -> value."""

    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def has(self, name: str, **labels: str) -> bool:
        wanted = set(labels.items())
        return any(n == name and wanted <= ls for n, ls in self.samples)


async def scrape(base_url: str) -> Scrape:
    """GET ``base_url``/metrics and parse it with prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(base_url + "/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    return Scrape(response.text, samples)


ORCHESTRATE_ROUTE = "/api/v1/integrations/sync/orchestrate"


async def store_connection(settings: Settings, org: Org, sim: Any) -> str:
    """A stored connection of ``org`` to the simulated store (as a start would have left it),
    its secret encrypted with the stack's key; its id."""
    box = SecretBox.from_settings(
        settings.model_copy(update={"secret_key": SecretStr(E2E_SECRET_KEY)})
    )
    conn = await db.connect(settings.admin_database_url)
    try:
        connection_id = await conn.fetchval(
            """INSERT INTO woo_connections (id, org_id, store_url, auth_mode, verify_tls,
                                            consumer_key, consumer_secret_enc)
               VALUES (gen_random_uuid(), $1::uuid, $2, 'oauth1', false, $3, $4)
               RETURNING id""",
            org.org_id,
            normalize_store_url(sim.url),
            sim.consumer_key,
            box.encrypt(sim.consumer_secret),
        )
    finally:
        await conn.close()
    return str(connection_id)


async def orchestrate(
    stack: Stack, org: Org, connection_ids: list[str], **options: Any
) -> httpx.Response:
    body = {"org_id": org.org_id, "connection_ids": connection_ids, "options": options}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(stack.api_url + ORCHESTRATE_ROUTE, json=body, headers=org.headers)


async def assert_store_exact(
    settings: Settings, connection_id: str, job_id: str, store: list[dict[str, Any]]
) -> None:
    """The connection's customers are exactly the store's, and its job's every line is done."""
    conn = await db.connect(settings.admin_database_url)
    try:
        rows = await conn.fetch(
            "SELECT woo_id, raw FROM customer WHERE connection_id = $1::uuid ORDER BY woo_id",
            connection_id,
        )
        lines = await conn.fetch(
            "SELECT state, count(*) AS n FROM woo_customer_sync_queue_line "
            "WHERE job_id = $1::uuid GROUP BY state",
            job_id,
        )
    finally:
        await conn.close()
    by_id = {c["id"]: c for c in store}
    assert [r["woo_id"] for r in rows] == sorted(by_id), "missing or extra customers"
    assert all(r["raw"] == by_id[r["woo_id"]] for r in rows), "a customer differs from the store"
    assert {r["state"]: r["n"] for r in lines} == {"done": len(store)}
