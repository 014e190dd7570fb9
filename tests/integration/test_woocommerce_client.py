"""The store client against the WooCommerce simulator over real HTTP and TLS."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from shared import urlsafety
from shared.woocommerce import (
    AuthMode,
    RetryPolicy,
    StoreAuthError,
    StoreConfig,
    StoreError,
    StoreTLSError,
    StoreUnavailable,
    WooClient,
)
from tools.woosim.testing import SimHandle, running_simulator

pytestmark = pytest.mark.timeout(60)

# Milliseconds of backoff; enough attempts that a 30 % fault rate cannot plausibly exhaust them
# (0.3 ** 12 per request).
FAST = RetryPolicy(max_attempts=12, backoff_base_s=0.002, backoff_max_s=0.02, budget_s=20.0)


def store(sim: SimHandle, auth: AuthMode, *, secret: str | None = None) -> StoreConfig:
    return StoreConfig(
        url=sim.url,
        consumer_key=sim.consumer_key,
        consumer_secret=SecretStr(secret or sim.consumer_secret),
        auth=auth,
        verify_tls=sim.ca_cert or True,
    )


async def read_all(client: WooClient, per_page: int = 100) -> list[dict[str, Any]]:
    customers: list[dict[str, Any]] = []
    page = 1
    while True:
        result = await client.list_customers(page=page, per_page=per_page)
        customers.extend(result.customers)
        if not result.customers or len(result.customers) < per_page:
            return customers
        page += 1


async def requests_served(sim: SimHandle) -> int:
    return (await sim.stats())["requests"]


@pytest.fixture
async def sim() -> AsyncIterator[SimHandle]:
    async with running_simulator(customers=250, seed=11) as handle:
        yield handle


async def test_paging_returns_every_user_once_in_id_order(sim: SimHandle) -> None:
    await sim.add_customer(email="manager@example.com", role="shop_manager")
    expected = await sim.customers()
    async with WooClient(store(sim, "oauth1"), policy=FAST) as client:
        first = await client.list_customers(page=1, per_page=100)
        customers = await read_all(client, per_page=100)
    ids = [c["id"] for c in customers]
    assert ids == sorted(set(ids))
    assert customers == expected
    assert (first.total, first.total_pages) == (251, 3)
    assert {c["role"] for c in customers} > {"customer"}
    assert all("_links" not in c for c in customers)


@pytest.mark.parametrize("auth", ["basic", "query"])
async def test_https_auth_modes_reach_the_store(auth: AuthMode) -> None:
    async with running_simulator(customers=7, seed=3, tls=True) as sim:
        client = WooClient(store(sim, auth), policy=FAST)
        async with client:
            assert await client.check_connection() == 7
            assert len(await read_all(client, per_page=5)) == 7


async def test_oauth1_over_http_checks_the_connection(sim: SimHandle) -> None:
    async with WooClient(store(sim, "oauth1"), policy=FAST) as client:
        assert await client.check_connection() == 250


async def test_wrong_secret_fails_at_once_without_retries(sim: SimHandle) -> None:
    before = await requests_served(sim)
    async with WooClient(store(sim, "oauth1", secret="cs_" + "0" * 40), policy=FAST) as client:
        with pytest.raises(StoreAuthError) as caught:
            await client.list_customers(page=1, per_page=10)
    err = caught.value
    assert (err.status, err.code) == (401, "woocommerce_rest_authentication_error")
    assert err.store_message and "signature" in err.store_message
    assert await requests_served(sim) - before == 1


@pytest.mark.parametrize(
    ("mode", "status"), [("secret", 401), ("deleted", 401), ("no_read", 401), ("no_caps", 403)]
)
async def test_revoked_keys_fail_at_once(sim: SimHandle, mode: str, status: int) -> None:
    await sim.revoke_keys(mode)
    await sim.reset_stats()
    async with WooClient(store(sim, "oauth1"), policy=FAST) as client:
        with pytest.raises(StoreAuthError) as caught:
            await client.check_connection()
    assert caught.value.status == status
    assert caught.value.code
    assert await requests_served(sim) == 1


async def test_basic_auth_over_plain_http_is_refused(sim: SimHandle) -> None:
    async with WooClient(store(sim, "basic"), policy=FAST) as client:
        with pytest.raises(StoreAuthError) as caught:
            await client.check_connection()
    assert caught.value.code == "woocommerce_rest_cannot_view"


async def test_untrusted_certificate_is_a_tls_error_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="shared.woocommerce")
    async with running_simulator(customers=1, seed=1, tls=True) as sim:
        config = store(sim, "basic").model_copy(update={"verify_tls": True})
        async with WooClient(config, policy=FAST) as client:
            with pytest.raises(StoreTLSError):
                await client.check_connection()
    assert not [r for r in caplog.records if r.name.startswith("shared.woocommerce")]


@pytest.mark.parametrize(
    "faults",
    [
        {"rate_429": 0.3, "retry_after": 0},
        {"rate_5xx": 0.3},
        {"rate_cut": 0.3},
        {"rate_bad_json": 0.3},
    ],
    ids=["429", "5xx", "cut", "bad-json"],
)
async def test_transient_faults_still_yield_every_customer(
    sim: SimHandle, faults: dict[str, Any]
) -> None:
    expected = await sim.customers()
    await sim.set_faults(**faults)
    async with WooClient(store(sim, "oauth1"), policy=FAST) as client:
        customers = await read_all(client, per_page=25)
    assert customers == expected
    met = (await sim.stats())["by_fault"]
    assert sum(count for kind, count in met.items() if kind != "none") > 0


async def test_each_retry_is_signed_afresh(sim: SimHandle) -> None:
    """Cut and garbled answers come after authentication, so the store has seen each nonce:
    a retry that reused one would be refused as a replay."""
    expected = await sim.customers()
    await sim.set_faults(script=["cut", "bad_json", "503", "cut", "ok"], retry_after=0)
    await sim.reset_stats()
    async with WooClient(store(sim, "oauth1"), policy=FAST) as client:
        page = await client.list_customers(page=2, per_page=100)
    assert page.customers == expected[100:200]
    stats = await sim.stats()
    assert stats["requests"] == 5
    assert stats["by_fault"] == {"cut": 2, "bad_json": 1, "5xx": 1, "none": 1}


async def test_offset_overrides_page(sim: SimHandle) -> None:
    expected = await sim.customers()
    async with WooClient(store(sim, "oauth1"), policy=FAST) as client:
        page = await client.list_customers(page=1, per_page=10, offset=95)
    assert page.customers == expected[95:105]


async def test_permanent_503_gives_up_after_max_attempts(sim: SimHandle) -> None:
    await sim.set_faults(rate_5xx=1.0)
    policy = RetryPolicy(max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05, budget_s=10.0)
    before = await requests_served(sim)
    async with WooClient(store(sim, "oauth1"), policy=policy) as client:
        with pytest.raises(StoreUnavailable) as caught:
            await client.list_customers(page=1, per_page=10)
    err = caught.value
    assert err.attempts == 4
    assert err.last_status is not None and err.last_status >= 500
    assert err.elapsed_s < policy.budget_s
    assert await requests_served(sim) - before == 4


async def test_query_auth_secret_stays_out_of_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    raised: list[StoreError] = []
    async with running_simulator(customers=30, seed=5, tls=True) as sim:
        secret = sim.consumer_secret
        async with WooClient(store(sim, "query"), policy=FAST) as client:
            await sim.set_faults(rate_5xx=0.3, rate_cut=0.2)
            assert len(await read_all(client, per_page=10)) == 30
            await sim.set_faults(rate_5xx=1.0)
            with pytest.raises(StoreUnavailable) as unavailable:
                await client.list_customers(page=1, per_page=10)
            raised.append(unavailable.value)
        wrong = store(sim, "query", secret=secret[:-4] + "beef")
        await sim.set_faults(rate_5xx=0.0, rate_cut=0.0)
        async with WooClient(wrong, policy=FAST) as client:
            with pytest.raises(StoreAuthError) as refused:
                await client.check_connection()
            raised.append(refused.value)
    assert "HTTP Request" in caplog.text  # httpx did log its requests, at INFO.
    # The store echoes the secret in its Link header, which httpcore logs at DEBUG.
    assert "consumer_secret=***" in caplog.text
    assert secret not in caplog.text
    for text in [*map(str, raised), *map(repr, raised)]:
        assert secret not in text
        assert "consumer_secret" not in text


@pytest.mark.parametrize("auth", ["oauth1", "query"])
async def test_pinned_client_connects_to_the_checked_address_by_name(
    auth: AuthMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store listens on 127.0.0.2 only, while the system resolves ``localhost`` to
    127.0.0.1: the sync succeeds only if every request goes to the address our resolver gave and
    was checked, with TLS still verifying the certificate for the name."""
    monkeypatch.setattr(urlsafety, "is_public_address", lambda address: True)  # loopback only
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.2"]

    async with running_simulator(customers=7, seed=3, tls=True, host="127.0.0.2") as sim:
        port = sim.url.rsplit(":", 1)[1]
        config = store(sim, auth).model_copy(update={"url": f"https://localhost:{port}"})
        async with WooClient(config, policy=FAST, pin_public_address=True, resolve=resolve) as c:
            assert await c.check_connection() == 7
            assert len(await read_all(c, per_page=2)) == 7
    assert lookups == ["localhost"]  # resolved once for the client's whole life


async def test_pinned_client_refuses_a_store_that_resolves_inside() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["10.0.0.7"]

    async with running_simulator(customers=1, seed=1) as sim:
        config = store(sim, "oauth1")
        async with WooClient(config, policy=FAST, pin_public_address=True, resolve=resolve) as c:
            with pytest.raises(urlsafety.StoreUrlNotAllowed):
                await c.check_connection()
        assert await requests_served(sim) == 0
