"""Starting a simulator from tests, benchmarks and the demo, with bounded waits.

- ``running_simulator(...)``: uvicorn inside the current event loop (fast; for async tests).
- ``spawn_simulator(...)``: ``python -m tools.woosim`` as a real subprocess (for end-to-end
  runs where the store must be a separate process, or code that blocks the loop).

Both give a ``SimHandle``: ``url``, ``consumer_key``, ``consumer_secret``, ``ca_cert`` and the
control-API helpers (async; a spawned simulator also has ``*_sync`` variants).
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx

from tools.woosim import data
from tools.woosim.app import Simulator
from tools.woosim.faults import FIVE_XX, FaultConfig
from tools.woosim.server import SimOptions, serve

_ROOT = Path(__file__).resolve().parents[2]
_CONTROL_TIMEOUT_S = 60.0
_FAULT_FLAGS = {
    "rate_429": "--rate-429",
    "retry_after": "--retry-after",
    "rate_5xx": "--rate-5xx",
    "rate_cut": "--rate-cut",
    "rate_slow": "--rate-slow",
    "slow_ms": "--slow-ms",
    "rate_bad_json": "--rate-bad-json",
    "rate_trickle": "--rate-trickle",
    "trickle_ms": "--trickle-ms",
    "latency_ms": "--latency-ms",
    "flat_in_flight": "--flat-in-flight",
    "max_in_flight": "--max-in-flight",
    "seed": "--fault-seed",
}

_HOSTILE_SETTINGS = (
    "per_page_cap", "claimed_total", "unordered_pages", "ignore_offset", "hide_totals", "bad_ids",
)


class ControlError(RuntimeError):
    """The control API refused a call (unknown id, duplicate email, bad fault setting)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"woosim control API answered {status}: {message}")
        self.status = status


def _decode(response: httpx.Response) -> Any:
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": response.text[:200]}
    if response.status_code >= 400:
        message = payload.get("error") if isinstance(payload, dict) else None
        raise ControlError(response.status_code, str(message or payload))
    return payload


@dataclass
class SimHandle:
    """A running simulator: where it listens, its credentials and its control API."""

    url: str
    consumer_key: str
    consumer_secret: str
    ca_cert: str | None
    customer_count: int
    simulator: Simulator | None = None  # The live state, for in-process simulators only.
    process: subprocess.Popen[bytes] | None = None  # For spawned simulators only.
    _client: httpx.AsyncClient | None = field(default=None, repr=False)
    _sync_client: httpx.Client | None = field(default=None, repr=False)

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx needs to trust this simulator (its CA over TLS)."""
        if self.ca_cert is None:
            return True
        return ssl.create_default_context(cafile=self.ca_cert)

    # -- transport ---------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._client is not None:
            return _decode(await self._client.request(method, path, json=body))
        async with httpx.AsyncClient(
            base_url=self.url, verify=self.verify(), timeout=_CONTROL_TIMEOUT_S
        ) as client:
            return _decode(await client.request(method, path, json=body))

    def _call_sync(self, method: str, path: str, body: Any = None) -> Any:
        if self.simulator is not None:
            raise RuntimeError(
                "an in-process simulator shares the caller's event loop: use the async helpers"
            )
        if self._sync_client is None:
            self._sync_client = httpx.Client(
                base_url=self.url, verify=self.verify(), timeout=_CONTROL_TIMEOUT_S
            )
        return _decode(self._sync_client.request(method, path, json=body))

    def close_sync(self) -> None:
        if self._sync_client is not None:
            self._sync_client.close()
            self._sync_client = None

    # -- async helpers -----------------------------------------------------------------------

    async def customers(self) -> list[dict[str, Any]]:
        """Every user (all roles), ascending id, without ``_links``."""
        result: list[dict[str, Any]] = await self._call("GET", "/__sim/customers")
        return result

    async def customer(self, user_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/__sim/customers/{user_id}")
        return result

    async def add_customer(self, **fields: Any) -> dict[str, Any]:
        """Creates a user with the next id; any customer field (plus ``roles``, ``user_url``)."""
        result: dict[str, Any] = await self._call("POST", "/__sim/customers", fields)
        return result

    async def update_customer(self, user_id: int, **fields: Any) -> dict[str, Any]:
        """Partial update; billing/shipping merged; date_modified bumped unless given."""
        result: dict[str, Any] = await self._call("PUT", f"/__sim/customers/{user_id}", fields)
        return result

    async def delete_customer(self, user_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("DELETE", f"/__sim/customers/{user_id}")
        return result

    async def add_orders(self, *orders: dict[str, Any]) -> list[dict[str, Any]]:
        """Adds orders (ids follow the highest; ``customer_id`` 0, a guest, unless given)."""
        result: list[dict[str, Any]] = await self._call(
            "POST", "/__sim/orders", {"orders": list(orders)}
        )
        return result

    async def delete_orders(self, *order_ids: int) -> int:
        result: dict[str, int] = await self._call(
            "POST", "/__sim/orders", {"delete": list(order_ids)}
        )
        return result["deleted"]

    async def orders(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call("GET", "/__sim/orders")
        return result

    async def make_odd(self, *kinds: str) -> dict[str, int]:
        """Turns one customer per kind into an odd one (``nul``, ``long_name``, ``unicode``,
        ``lone_surrogate``, ``deep_meta:N``); returns each kind's id."""
        result: dict[str, int] = await self._call(
            "POST", "/__sim/odd-customers", {"kinds": list(kinds)}
        )
        return result

    async def set_faults(self, **config: Any) -> dict[str, Any]:
        """Changes only the given fault settings; returns the whole configuration."""
        result: dict[str, Any] = await self._call("PUT", "/__sim/faults", config)
        return result

    async def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/__sim/faults")
        return result

    async def stats(self) -> dict[str, Any]:
        """``{"requests", "by_status", "by_path", "by_fault", "by_auth"}`` of /wp-json calls."""
        result: dict[str, Any] = await self._call("GET", "/__sim/stats")
        return result

    async def requests(self) -> list[dict[str, Any]]:
        """The store's request log: ``arrived_at``, ``answered_at`` (Unix time), ``path``,
        ``params`` (paging only), ``status`` of each answered /wp-json call, oldest first."""
        result: list[dict[str, Any]] = await self._call("GET", "/__sim/requests")
        return result

    async def reset_stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("DELETE", "/__sim/stats")
        return result

    async def webhooks(self) -> dict[str, Any]:
        """``{"config", "webhooks" (with failure_count), "deliveries", "queued"}``."""
        result: dict[str, Any] = await self._call("GET", "/__sim/webhooks")
        return result

    async def set_webhook_config(self, **config: Any) -> dict[str, Any]:
        """``delivery_delay_ms``, ``duplicate``, ``reorder``, ``same_delivery_id``,
        ``max_failures``; returns what ``webhooks()`` does."""
        result: dict[str, Any] = await self._call("PUT", "/__sim/webhooks/config", config)
        return result

    async def update_webhook(self, webhook_id: int, **fields: Any) -> dict[str, Any]:
        """Change a webhook as an admin would in wp-admin (``secret``, ``status``, ...)."""
        result: dict[str, Any] = await self._call("PUT", f"/__sim/webhooks/{webhook_id}", fields)
        return result

    async def revoke_keys(self, mode: str = "secret") -> None:
        """``secret`` (401 bad secret), ``deleted``, ``no_read`` (401) or ``no_caps`` (403)."""
        await self._call("POST", "/__sim/keys/revoke", {"mode": mode})

    async def restore_keys(self) -> None:
        await self._call("POST", "/__sim/keys/restore")

    async def add_key(self, **fields: str) -> tuple[str, str]:
        """Another working key (``consumer_key``/``consumer_secret`` random unless given):
        ``(consumer_key, consumer_secret)``. The existing keys keep working."""
        result = await self._call("POST", "/__sim/keys/add", fields)
        return result["consumer_key"], result["consumer_secret"]

    async def remove_key(self, consumer_key: str) -> None:
        """Deletes a key (also the store's first one): requests with it are unauthenticated."""
        await self._call("POST", "/__sim/keys/remove", {"consumer_key": consumer_key})

    # -- sync helpers (spawned simulators) ---------------------------------------------------

    def customers_sync(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call_sync("GET", "/__sim/customers")
        return result

    def customer_sync(self, user_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call_sync("GET", f"/__sim/customers/{user_id}")
        return result

    def add_customer_sync(self, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call_sync("POST", "/__sim/customers", fields)
        return result

    def update_customer_sync(self, user_id: int, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call_sync("PUT", f"/__sim/customers/{user_id}", fields)
        return result

    def delete_customer_sync(self, user_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call_sync("DELETE", f"/__sim/customers/{user_id}")
        return result

    def set_faults_sync(self, **config: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call_sync("PUT", "/__sim/faults", config)
        return result

    def stats_sync(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call_sync("GET", "/__sim/stats")
        return result

    def revoke_keys_sync(self, mode: str = "secret") -> None:
        self._call_sync("POST", "/__sim/keys/revoke", {"mode": mode})

    def restore_keys_sync(self) -> None:
        self._call_sync("POST", "/__sim/keys/restore")

    def add_key_sync(self, **fields: str) -> tuple[str, str]:
        result = self._call_sync("POST", "/__sim/keys/add", fields)
        return result["consumer_key"], result["consumer_secret"]

    def remove_key_sync(self, consumer_key: str) -> None:
        self._call_sync("POST", "/__sim/keys/remove", {"consumer_key": consumer_key})


def _fault_config(
    faults: FaultConfig | Mapping[str, Any] | None, latency_ms: int
) -> FaultConfig:
    if isinstance(faults, FaultConfig):
        config = faults
    else:
        config = FaultConfig().updated(dict(faults or {}))
    return config.updated({"latency_ms": latency_ms}) if latency_ms else config


@contextlib.asynccontextmanager
async def running_simulator(
    customers: int = 100,
    seed: int = 1,
    *,
    tls: bool = False,
    latency_ms: int = 0,
    allow_basic_over_http: bool = False,
    faults: FaultConfig | Mapping[str, Any] | None = None,
    consumer_key: str | None = None,
    consumer_secret: str | None = None,
    tz_offset: str = data.DEFAULT_TZ_OFFSET,
    base_time: datetime | None = None,
    host: str = "127.0.0.1",
    startup_timeout_s: float = 30.0,
) -> AsyncIterator[SimHandle]:
    """An in-process simulator on a free port, served by the current event loop."""
    options = SimOptions(
        host=host,
        port=0,
        customers=customers,
        seed=seed,
        tls=tls,
        consumer_key=consumer_key,
        consumer_secret=consumer_secret,
        allow_basic_over_http=allow_basic_over_http,
        tz_offset=tz_offset,
        base_time=base_time,
        faults=_fault_config(faults, latency_ms),
    )
    async with serve(options, startup_timeout_s=startup_timeout_s) as running:
        handle = SimHandle(
            url=running.url,
            consumer_key=running.consumer_key,
            consumer_secret=running.consumer_secret,
            ca_cert=running.ca_cert,
            customer_count=running.customers,
            simulator=running.sim,
        )
        async with httpx.AsyncClient(
            base_url=running.url, verify=handle.verify(), timeout=_CONTROL_TIMEOUT_S
        ) as client:
            handle._client = client
            yield handle


def _read_line(stream: IO[bytes], timeout_s: float) -> bytes | None:
    """One line from a pipe, or None after ``timeout_s``; the reader thread is a daemon."""
    lines: queue.Queue[bytes] = queue.Queue(maxsize=1)
    reader = threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True)
    reader.start()
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        return None


def _stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


@contextlib.contextmanager
def spawn_simulator(
    customers: int = 100,
    seed: int = 1,
    *,
    tls: bool = False,
    latency_ms: int = 0,
    allow_basic_over_http: bool = False,
    faults: FaultConfig | Mapping[str, Any] | None = None,
    consumer_key: str | None = None,
    consumer_secret: str | None = None,
    tz_offset: str = data.DEFAULT_TZ_OFFSET,
    host: str = "127.0.0.1",
    port: int = 0,
    ca_out: Path | None = None,
    startup_timeout_s: float = 180.0,
    bulk: bool = False,
) -> Iterator[SimHandle]:
    """``python -m tools.woosim`` as a subprocess; terminated (SIGTERM, then SIGKILL) on exit.

    Startup includes generating the users: about a second per 10,000 on a slow machine.
    ``bulk``: the read-only store of ``tools.woosim.bulk``, at most 10,000 of them generated.
    """
    config = _fault_config(faults, latency_ms)
    argv = [
        sys.executable, "-m", "tools.woosim", "--host", host, "--port", str(port),
        "--customers", str(customers), "--seed", str(seed), "--tz-offset", tz_offset,
    ]
    for name, flag in _FAULT_FLAGS.items():
        argv += [flag, str(getattr(config, name))]
    if config.retry_after_http_date:
        argv.append("--retry-after-http-date")
    if tls:
        argv.append("--tls")
    if bulk:
        argv.append("--bulk")
    if ca_out is not None:
        argv += ["--ca-out", str(ca_out)]
    if allow_basic_over_http:
        argv.append("--allow-basic-over-http")
    if consumer_key:
        argv += ["--consumer-key", consumer_key]
    if consumer_secret:
        argv += ["--consumer-secret", consumer_secret]
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            argv, cwd=_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # a store is another machine: the scheduler weighs it apart
        )
        handle: SimHandle | None = None
        try:
            assert process.stdout is not None
            line = _read_line(process.stdout, startup_timeout_s)
            if not line:
                _stop_process(process)
                stderr.seek(0)
                tail = stderr.read()[-2000:].decode("utf-8", "replace")
                reason = "timed out" if line is None else f"exited ({process.returncode})"
                raise RuntimeError(f"woosim subprocess {reason} before it was ready:\n{tail}")
            info = json.loads(line)
            handle = SimHandle(
                url=info["url"],
                consumer_key=info["consumer_key"],
                consumer_secret=info["consumer_secret"],
                ca_cert=info["ca_cert"],
                customer_count=info["customers"],
                process=process,
            )
            late: dict[str, Any] = {}  # Settings without a CLI flag.
            if config.script:
                late["script"] = list(config.script)
            if config.statuses_5xx != FIVE_XX:
                late["statuses_5xx"] = list(config.statuses_5xx)
            for name in _HOSTILE_SETTINGS:  # hostile stores: set through the control API
                value = getattr(config, name)
                if value != getattr(FaultConfig(), name):
                    late[name] = list(value) if isinstance(value, tuple) else value
            if late:
                handle.set_faults_sync(**late)
            yield handle
        finally:
            if handle is not None:
                handle.close_sync()
            _stop_process(process)
            if process.stdout is not None:
                process.stdout.close()
