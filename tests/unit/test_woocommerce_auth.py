"""The store client without a network: auth applied to requests, Retry-After, safe errors.

Where a store is needed, an ``httpx.MockTransport`` plays it, to reach answers the simulator
does not give (a store echoing the secret, a redirect, missing totals).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from shared.woocommerce import (
    RetryPolicy,
    StoreAuthError,
    StoreBadResponse,
    StoreConfig,
    StoreError,
    StoreUnavailable,
    WooClient,
    parse_retry_after,
)
from shared.woocommerce.auth import (
    OAuth1Auth,
    QueryCredentialsTransport,
    request_auth,
    with_query_credentials,
)

KEY = "ck_" + "1" * 40
SECRET = "cs_" + "abcdef0123" * 4
FAST = RetryPolicy(max_attempts=4, backoff_base_s=0.001, backoff_max_s=0.01, budget_s=5.0)


def config(auth: str = "oauth1", url: str = "https://shop.example") -> StoreConfig:
    return StoreConfig(url=url, consumer_key=KEY, consumer_secret=SecretStr(SECRET), auth=auth)


def flow_once(auth: httpx.Auth, request: httpx.Request) -> httpx.Request:
    return next(auth.auth_flow(request))


def rfc3986(text: str) -> str:
    return quote(text, safe="~")


def independent_hmac_sha256(method: str, url: str, secret: str) -> str:
    """OAuth 1.0a signature computed the way WooCommerce's server does, from the wire URL."""
    parts = urlsplit(url)
    params = [(k, v) for k, v in parse_qsl(parts.query) if k != "oauth_signature"]
    normalized = "&".join(
        f"{k}={v}" for k, v in sorted((rfc3986(k), rfc3986(v)) for k, v in params)
    )
    base_url = f"{parts.scheme}://{parts.netloc}{parts.path}"
    base_string = "&".join((method, rfc3986(base_url), rfc3986(normalized)))
    digest = hmac.new(f"{secret}&".encode(), base_string.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


# --- credentials -------------------------------------------------------------------------------


def test_store_config_never_shows_the_secret() -> None:
    cfg = config("query")
    assert SECRET not in repr(cfg)
    assert SECRET not in str(cfg)
    assert SECRET not in cfg.model_dump_json()
    assert cfg.consumer_secret.get_secret_value() == SECRET


def test_store_config_normalises_and_checks_the_url() -> None:
    assert config(url="https://shop.example/store/ ").url == "https://shop.example/store"
    for bad in ("shop.example", "ftp://shop.example", "https://shop.example/?a=1", "https://"):
        with pytest.raises(ValidationError):
            config(url=bad)


def test_store_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        config().auth = "basic"  # type: ignore[misc]


# --- auth modes --------------------------------------------------------------------------------


def test_basic_auth_sets_the_authorization_header() -> None:
    auth = request_auth(config("basic"))
    assert auth is not None
    request = flow_once(auth, httpx.Request("GET", "https://shop.example/wp-json/wc/v3/customers"))
    expected = base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert "consumer_secret" not in str(request.url)


def test_query_auth_adds_key_and_secret_to_a_copy_of_the_request() -> None:
    original = httpx.Request("GET", "https://shop.example/wp-json/wc/v3/customers?role=all&page=2")
    wire = with_query_credentials(original, KEY, SecretStr(SECRET))
    assert dict(wire.url.params) == {
        "role": "all",
        "page": "2",
        "consumer_key": KEY,
        "consumer_secret": SECRET,
    }
    assert wire.url.path == original.url.path
    assert "consumer_secret" not in str(original.url)
    assert request_auth(config("query")) is None  # Applied by the transport, not httpx.Auth.


async def test_query_transport_keeps_the_secret_out_of_the_client_visible_url() -> None:
    seen: list[httpx.Request] = []

    def store(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    transport = QueryCredentialsTransport(httpx.MockTransport(store), KEY, SecretStr(SECRET))
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.get("https://shop.example/wp-json/wc/v3/customers?role=all")
    assert seen[0].url.params["consumer_secret"] == SECRET
    assert SECRET not in str(response.request.url)


def test_oauth1_signature_matches_an_independent_hmac_sha256() -> None:
    auth = OAuth1Auth(KEY, SecretStr(SECRET))
    url = "http://127.0.0.1:8123/wp-json/wc/v3/customers"
    params = {"role": "all", "orderby": "id", "per_page": 100, "email": "a+b c@example.com"}
    signed = flow_once(auth, httpx.Request("GET", url, params=params))
    query = dict(parse_qsl(urlsplit(str(signed.url)).query))
    assert query["oauth_consumer_key"] == KEY
    assert query["oauth_signature_method"] == "HMAC-SHA256"
    assert query["email"] == "a+b c@example.com"
    assert query["oauth_signature"] == independent_hmac_sha256("GET", str(signed.url), SECRET)
    assert query["oauth_signature"] != independent_hmac_sha256("GET", str(signed.url), "cs_other")
    assert SECRET not in str(signed.url)


def test_oauth1_signs_each_send_with_a_fresh_nonce() -> None:
    auth = OAuth1Auth(KEY, SecretStr(SECRET))
    url = "https://shop.example/wp-json/wc/v3/customers?role=all"
    first = flow_once(auth, httpx.Request("GET", url))
    second = flow_once(auth, httpx.Request("GET", url))
    assert first.url.params["oauth_nonce"] != second.url.params["oauth_nonce"]
    assert abs(int(first.url.params["oauth_timestamp"]) - datetime.now(UTC).timestamp()) < 3600


# --- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # In the past: no extra wait.
        ("soon", None),
        ("", None),
        ("-5", None),
        ("nan", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=now) == expected


# --- the client against a stand-in store -------------------------------------------------------


def store_error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(
        status, json={"code": code, "message": message, "data": {"status": status}}
    )


async def test_list_customers_sends_the_paging_contract_and_strips_links() -> None:
    seen: list[httpx.URL] = []

    def store(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        body = [{"id": 7, "email": "a@example.com", "_links": {"self": []}}]
        return httpx.Response(200, json=body, headers={"X-WP-Total": "1", "X-WP-TotalPages": "1"})

    async with WooClient(config("basic"), transport=httpx.MockTransport(store)) as client:
        page = await client.list_customers(page=3, per_page=50)
    assert page.customers == [{"id": 7, "email": "a@example.com"}]
    assert (page.total, page.total_pages, page.page) == (1, 1, 3)
    params = dict(seen[0].params)
    assert params == {"role": "all", "orderby": "id", "order": "asc", "per_page": "50", "page": "3"}
    assert seen[0].path == "/wp-json/wc/v3/customers"


async def test_missing_totals_are_none_and_fail_the_connection_check() -> None:
    def store(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[])

    async with WooClient(config("basic"), transport=httpx.MockTransport(store)) as client:
        page = await client.list_customers(page=1, per_page=100)
        assert (page.total, page.total_pages) == (None, None)
        with pytest.raises(StoreBadResponse, match="X-WP-Total"):
            await client.check_connection()


@pytest.mark.parametrize("per_page", [0, 101])
async def test_per_page_outside_woocommerce_limits_is_refused(per_page: int) -> None:
    async with WooClient(config(), transport=httpx.MockTransport(lambda r: None)) as client:
        with pytest.raises(ValueError, match="per_page"):
            await client.list_customers(page=1, per_page=per_page)


async def test_auth_error_is_not_retried_and_hides_an_echoed_secret() -> None:
    calls = 0

    def store(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return store_error(401, "woocommerce_rest_authentication_error", f"Bad secret {SECRET}.")

    async with WooClient(config("query"), policy=FAST, transport=httpx.MockTransport(store)) as c:
        with pytest.raises(StoreAuthError) as caught:
            await c.check_connection()
    err = caught.value
    assert calls == 1
    assert (err.status, err.code) == (401, "woocommerce_rest_authentication_error")
    assert "GET /wp-json/wc/v3/customers" in str(err)
    for text in (str(err), repr(err), err.message, err.store_message or ""):
        assert SECRET not in text
        assert "consumer_secret" not in text


async def test_redirect_is_reported_without_the_echoed_query() -> None:
    def store(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            301, headers={"Location": f"https://www.shop.example{request.url.raw_path.decode()}"}
        )

    async with WooClient(config("query"), transport=httpx.MockTransport(store)) as client:
        with pytest.raises(StoreBadResponse) as caught:
            await client.list_customers(page=1, per_page=10)
    assert "https://www.shop.example/wp-json/wc/v3/customers" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert "?" not in str(caught.value)


async def test_not_found_is_a_bad_response_with_the_store_message() -> None:
    def store(request: httpx.Request) -> httpx.Response:
        return store_error(404, "rest_no_route", "No route was found matching the URL.")

    async with WooClient(
        config(url="https://example.com/shop"), transport=httpx.MockTransport(store)
    ) as c:
        with pytest.raises(StoreBadResponse) as caught:
            await c.list_customers()
    assert caught.value.status == 404
    assert "rest_no_route" in str(caught.value)
    assert "GET /shop/wp-json/wc/v3/customers" in str(caught.value)


async def test_transient_failures_are_retried_and_honour_retry_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "0.05"}),
            httpx.Response(200, content=b"<html>upstream cut"),
            httpx.Response(200, json={"not": "a list"}),
            httpx.Response(200, json=[{"id": 1}], headers={"X-WP-Total": "1"}),
        ]
    )
    policy = RetryPolicy(max_attempts=4, backoff_base_s=0.0, backoff_max_s=0.1, budget_s=5.0)
    caplog.set_level(logging.DEBUG)
    async with WooClient(
        config("query"), policy=policy, transport=httpx.MockTransport(lambda r: next(answers))
    ) as client:
        page = await client.list_customers()
    assert [c["id"] for c in page.customers] == [1]
    retries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(retries) == 3
    for message, kind in zip(
        retries, ("HTTP 429", "invalid JSON body", "body is not a JSON array"), strict=True
    ):
        assert f"({kind})" in message
    # With no backoff, the only wait is the one the 429's Retry-After asked for.
    assert re.search(r"retrying in 0\.05s", retries[0])
    assert re.search(r"retrying in 0\.00s", retries[1])
    assert SECRET not in caplog.text


async def test_exhausted_retries_raise_unavailable_without_httpx_text() -> None:
    calls = 0

    def store(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    async with WooClient(config("query"), policy=FAST, transport=httpx.MockTransport(store)) as c:
        with pytest.raises(StoreUnavailable) as caught:
            await c.list_customers()
    err = caught.value
    assert calls == FAST.max_attempts == err.attempts
    assert (err.last_kind, err.last_status) == ("ConnectError", None)
    assert SECRET not in str(err) and "consumer_secret" not in str(err)
    assert err.__suppress_context__


def test_every_store_error_is_a_store_error_with_str_equal_to_message() -> None:
    errors: list[StoreError] = [
        StoreAuthError(method="GET", path="/p", status=403, code="c", store_message="m"),
        StoreBadResponse("plain"),
        StoreUnavailable(
            method="GET",
            path="/p",
            attempts=1,
            elapsed_s=0.1,
            last_kind="HTTP 503",
            last_status=503,
        ),
    ]
    for err in errors:
        assert str(err) == err.message
