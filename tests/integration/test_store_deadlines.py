"""Deadlines on the way to a store: a trickling body, a huge body, and a name server that
never answers, against the simulator and real sockets.

Figures (time to cut off a trickling store, time for a hung look-up to give up) are printed,
not asserted: run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psutil
import pytest
from pydantic import SecretStr

from shared.urlsafety import (
    StoreUrlNotAllowed,
    StoreUrlUnresolvable,
    cares_resolve,
    ensure_public_url,
    system_resolve,
)
from shared.woocommerce import (
    RetryPolicy,
    StoreBadResponse,
    StoreConfig,
    StoreUnavailable,
    WooClient,
)
from tools.woosim.testing import SimHandle, running_simulator

pytestmark = pytest.mark.timeout(90)

QUICK = RetryPolicy(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05, budget_s=30.0)


def config(sim: SimHandle) -> StoreConfig:
    return StoreConfig(
        url=sim.url,
        consumer_key=sim.consumer_key,
        consumer_secret=SecretStr(sim.consumer_secret),
        auth="oauth1",
    )


@pytest.fixture
async def sim() -> AsyncIterator[SimHandle]:
    async with running_simulator(customers=120, seed=5) as handle:
        yield handle


async def test_a_trickling_store_is_cut_at_the_deadline_though_each_read_is_quick(
    sim: SimHandle,
) -> None:
    # A byte every 50 ms: far inside the 30 s read timeout, yet a page takes minutes.
    await sim.set_faults(rate_trickle=1.0, trickle_ms=50)
    started = time.monotonic()
    async with WooClient(config(sim), timeout_s=30.0, deadline_s=1.0, policy=QUICK) as client:
        with pytest.raises(StoreUnavailable) as raised:
            await client.list_customers(page=1, per_page=100)
    cut_after_s = time.monotonic() - started
    message = str(raised.value)
    assert "failed after 3 attempts" in message, message
    assert "no complete response within the 1s request deadline" in message, message
    assert (await sim.stats())["by_fault"] == {"trickle": 3}
    print(f"\ntime to cut off a trickling store: {cut_after_s:.2f}s for 3 attempts "
          f"with a 1s deadline (a byte every 50 ms)")  # fmt: skip


async def test_the_deadline_covers_the_wait_for_headers_too(sim: SimHandle) -> None:
    """No byte for 3 s: inside the 30 s read timeout, past the 1 s deadline."""
    await sim.set_faults(rate_slow=1.0, slow_ms=3000)
    async with WooClient(config(sim), timeout_s=30.0, deadline_s=1.0, policy=QUICK) as client:
        with pytest.raises(StoreUnavailable, match="within the 1s request deadline"):
            await client.list_customers(page=1, per_page=10)


async def test_a_store_that_trickles_once_is_read_exactly_on_the_retry(sim: SimHandle) -> None:
    expected = await sim.customers()
    await sim.set_faults(script=["ok", "trickle"], trickle_ms=50)
    async with WooClient(config(sim), timeout_s=30.0, deadline_s=1.0, policy=QUICK) as client:
        first = await client.list_customers(page=1, per_page=100)
        second = await client.list_customers(page=2, per_page=100)  # trickled, then retried
    assert first.customers + second.customers == expected
    stats = await sim.stats()
    assert (stats["requests"], stats["by_fault"].get("trickle")) == (3, 1), stats


async def test_a_body_past_the_size_limit_is_refused_without_retrying(sim: SimHandle) -> None:
    async with WooClient(config(sim), max_response_bytes=20_000, policy=QUICK) as client:
        small = await client.list_customers(page=1, per_page=5)
        with pytest.raises(StoreBadResponse, match="larger than") as raised:
            await client.list_customers(page=1, per_page=100)
    assert len(small.customers) == 5
    assert "WOOSYNC_STORE_MAX_RESPONSE_BYTES" in str(raised.value)
    assert (await sim.stats())["requests"] == 2  # one each: a size refusal is not retried


async def test_a_compressed_body_is_measured_as_decoded() -> None:
    """A gzip bomb: a few kB on the wire (within the limit by its Content-Length), megabytes once
    decoded. The count of decoded bytes stops it, chunk by chunk."""
    decoded = b"[" + b" " * 5_000_000 + b"]"
    wire = gzip.compress(decoded)

    def store(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json",
                   "X-WP-Total": "0", "X-WP-TotalPages": "0"}  # fmt: skip
        return httpx.Response(200, headers=headers, content=wire)

    shop = StoreConfig(
        url="https://shop.example", consumer_key="ck_x", consumer_secret=SecretStr("cs_x"),
        auth="basic",
    )
    transport = httpx.MockTransport(store)
    async with WooClient(shop, max_response_bytes=1_000_000, transport=transport) as client:
        with pytest.raises(StoreBadResponse, match="larger than 0.953674 MiB"):
            await client.list_customers()
    assert len(wire) < 1_000_000
    async with WooClient(shop, max_response_bytes=6_000_000, transport=transport) as client:
        assert (await client.list_customers()).customers == []  # decoded as before


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default thread pool, counting what is handed to it."""

    submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        CountingExecutor.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def os_threads_settle(baseline: int, limit_s: float = 10.0) -> int:
    """The process' OS thread count once c-ares has torn its channels down (or at the limit)."""
    process = psutil.Process()
    give_up = time.monotonic() + limit_s
    while process.num_threads() > baseline and time.monotonic() < give_up:
        await asyncio.sleep(0.05)
    return process.num_threads()


async def test_a_name_server_that_never_answers_holds_no_thread_past_the_deadline() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    silent.setblocking(False)
    server = f"127.0.0.1:{silent.getsockname()[1]}"

    async def resolve(host: str, port: int) -> list[str]:
        # c-ares alone would wait 60 s; the caller's deadline must end it.
        return await cares_resolve(host, port, nameservers=[server], timeout_s=60.0)

    await cares_resolve("localhost", 80)  # pycares starts its one teardown thread on first use
    loop = asyncio.get_running_loop()
    loop.set_default_executor(CountingExecutor(max_workers=2))
    CountingExecutor.submitted = 0
    python_threads, os_threads = threading.active_count(), psutil.Process().num_threads()

    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(
            ensure_public_url(
                f"https://shop{n}.example", allow_private=False, resolve=resolve, timeout_s=0.5
            )
            for n in range(20)
        ),
        return_exceptions=True,
    )
    gave_up_after_s = time.monotonic() - started
    threads_after = await os_threads_settle(os_threads)

    assert all(isinstance(o, StoreUrlUnresolvable) for o in outcomes), outcomes
    queries = 0
    while True:
        try:
            silent.recv(4096)
        except BlockingIOError:
            break
        queries += 1
    silent.close()
    assert queries >= 20, "the look-ups never reached the silent name server"
    assert CountingExecutor.submitted == 0, "a look-up went through the thread pool"
    assert threading.active_count() == python_threads
    assert threads_after <= os_threads, (threads_after, os_threads)
    print(f"\n20 look-ups against a silent name server gave up after {gave_up_after_s:.2f}s "
          f"(deadline 0.5s); {queries} queries sent; threads: python {python_threads} -> "
          f"{threading.active_count()}, os {os_threads} -> {threads_after}; "
          f"thread-pool submissions: {CountingExecutor.submitted}")  # fmt: skip


async def test_hosts_file_names_and_numeric_hosts_resolve_without_a_name_server() -> None:
    asyncio.get_running_loop().set_default_executor(CountingExecutor(max_workers=1))
    CountingExecutor.submitted = 0
    assert (await system_resolve("localhost", 80))[0] == "127.0.0.1"
    with pytest.raises(StoreUrlNotAllowed):
        await ensure_public_url("http://localhost:8080", allow_private=False)
    assert CountingExecutor.submitted == 0, "the system resolver used the thread pool"
    assert (await cares_resolve("localhost", 80))[0] == "127.0.0.1"  # /etc/hosts, IPv4 first
    assert await cares_resolve("127.0.0.1", 80) == ["127.0.0.1"]
    assert await cares_resolve("::1", 80) == ["::1"]
    # Read as the socket layer reads them, not as names (nor 0177 as decimal 177).
    assert await cares_resolve("0177.0.0.1", 80) == ["127.0.0.1"]
    assert await cares_resolve("2130706433", 80) == ["127.0.0.1"]
    assert await cares_resolve("0x7f.1", 80) == ["127.0.0.1"]
    with pytest.raises(OSError):
        await cares_resolve("no-such-host.invalid", 80)


async def test_a_client_allowed_private_addresses_resolves_without_the_thread_pool(
    sim: SimHandle,
) -> None:
    """With WOOSYNC_ALLOW_PRIVATE_URLS (the demo) the client still resolves the name itself."""
    asyncio.get_running_loop().set_default_executor(CountingExecutor(max_workers=1))
    CountingExecutor.submitted = 0
    by_name = config(sim).model_copy(update={"url": sim.url.replace("127.0.0.1", "localhost")})
    async with WooClient(by_name, pin_public_address=False, policy=QUICK) as client:
        assert await client.check_connection() == 120
    assert CountingExecutor.submitted == 0, "a look-up went through the thread pool"
