"""The simulator over real HTTP(S): query semantics, headers, auth modes, faults, control API."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from oauthlib.oauth1 import (
    SIGNATURE_HMAC_SHA1,
    SIGNATURE_HMAC_SHA256,
    SIGNATURE_TYPE_AUTH_HEADER,
    SIGNATURE_TYPE_QUERY,
    Client,
)

from tools.woosim.store import collate
from tools.woosim.testing import ControlError, SimHandle, running_simulator, spawn_simulator

pytestmark = pytest.mark.timeout(60)

LIST = "/wp-json/wc/v3/customers"
CUSTOMERS = 130


class OAuth1(httpx.Auth):
    """One-legged OAuth 1.0a signed by oauthlib, as woosync's client does it."""

    def __init__(
        self,
        key: str,
        secret: str,
        method: str = SIGNATURE_HMAC_SHA256,
        where: str = SIGNATURE_TYPE_QUERY,
    ) -> None:
        self.key, self.secret, self.method, self.where = key, secret, method, where

    def auth_flow(self, request: httpx.Request) -> Any:
        client = Client(
            self.key,
            client_secret=self.secret,
            signature_method=self.method,
            signature_type=self.where,
        )
        url, headers, _ = client.sign(str(request.url), http_method=request.method)
        request.url = httpx.URL(url)
        if "Authorization" in headers:
            request.headers["Authorization"] = headers["Authorization"]
        yield request


@pytest.fixture
async def sim() -> AsyncIterator[SimHandle]:
    """Plain HTTP with Basic auth allowed (a proxy that sets HTTPS=on), for query semantics."""
    async with running_simulator(customers=CUSTOMERS, seed=7, allow_basic_over_http=True) as s:
        yield s


@pytest.fixture
async def http(sim: SimHandle) -> AsyncIterator[httpx.AsyncClient]:
    auth = httpx.BasicAuth(sim.consumer_key, sim.consumer_secret)
    async with httpx.AsyncClient(base_url=sim.url, auth=auth, timeout=10) as client:
        yield client


async def all_pages(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        response = await http.get(LIST, params={**params, "page": page})
        assert response.status_code == 200, response.text
        if not response.json():
            return items
        items += response.json()
        page += 1


# --- list semantics ---------------------------------------------------------------------------


async def test_paging_headers_link_and_items(sim: SimHandle, http: httpx.AsyncClient) -> None:
    params = {"role": "all", "orderby": "id", "order": "asc", "per_page": 25, "page": 2}
    response = await http.get(LIST, params=params)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    assert response.headers["x-wp-total"] == str(CUSTOMERS)
    assert response.headers["x-wp-totalpages"] == str(math.ceil(CUSTOMERS / 25))
    base = f"{sim.url}{LIST}?role=all&orderby=id&order=asc&per_page=25"
    assert response.headers["link"] == (
        f'<{base}&page=1>; rel="prev", <{base}&page=3>; rel="next"'
    )
    items = response.json()
    expected = (await sim.customers())[25:50]
    assert [{k: v for k, v in item.items() if k != "_links"} for item in items] == expected
    assert items[0]["_links"]["self"][0]["href"] == f"{sim.url}{LIST}/{items[0]['id']}"
    assert items[0]["_links"]["collection"] == [{"href": f"{sim.url}{LIST}"}]
    assert "\\/" in response.text  # Slashes escaped as PHP's json_encode does.


async def test_page_past_the_end_is_an_empty_200(sim: SimHandle, http: httpx.AsyncClient) -> None:
    response = await http.get(LIST, params={"role": "all", "per_page": 50, "page": 9})
    assert (response.status_code, response.json()) == (200, [])
    assert response.headers["x-wp-total"] == str(CUSTOMERS)
    assert response.headers["link"] == (
        f'<{sim.url}{LIST}?role=all&per_page=50&page=3>; rel="prev"'
    )


async def test_offset_overrides_page_and_stays_in_links(http: httpx.AsyncClient) -> None:
    by_id = {"role": "all", "orderby": "id", "per_page": 10}
    by_offset = await http.get(LIST, params={**by_id, "page": 5, "offset": 20})
    by_page = await http.get(LIST, params={**by_id, "page": 3})
    assert by_offset.json() == by_page.json()
    links = by_offset.headers["link"]  # Current page = ceil(20 / 10 + 1) = 3, replaced in place.
    assert "per_page=10&page=2&offset=20>" in links and "per_page=10&page=4&offset=20>" in links


async def test_per_page_above_100_is_a_400(http: httpx.AsyncClient) -> None:
    response = await http.get(LIST, params={"per_page": 101})
    assert response.status_code == 400
    assert response.json() == {
        "code": "rest_invalid_param",
        "message": "Invalid parameter(s): per_page",
        "data": {
            "status": 400,
            "params": {"per_page": "per_page must be between 1 (inclusive) and 100 (inclusive)"},
            "details": {
                "per_page": {
                    "code": "rest_out_of_bounds",
                    "message": "per_page must be between 1 (inclusive) and 100 (inclusive)",
                    "data": None,
                }
            },
        },
    }


async def test_role_defaults_to_customer(sim: SimHandle, http: httpx.AsyncClient) -> None:
    default = await all_pages(http, per_page=100, orderby="id")
    everyone = await all_pages(http, per_page=100, orderby="id", role="all")
    assert [c["id"] for c in everyone] == [c["id"] for c in await sim.customers()]
    assert len(default) < len(everyone)
    assert {c["role"] for c in default} == {"customer"}
    assert {"administrator", "shop_manager", "subscriber"} < {c["role"] for c in everyone}
    managers = await http.get(LIST, params={"role": "shop_manager"})
    assert [c["role"] for c in managers.json()] == ["shop_manager"]
    # A user without a role shows as "customer" under role=all but is not a customer.
    default_ids = {c["id"] for c in default}
    assert any(c["role"] == "customer" and c["id"] not in default_ids for c in everyone)
    # role matches any of a user's roles; the API shows only the first.
    subscribers = await http.get(LIST, params={"role": "subscriber", "per_page": 100})
    assert "customer" in {c["role"] for c in subscribers.json()}


async def test_enums_are_case_sensitive(http: httpx.AsyncClient) -> None:
    for params, message in [
        ({"order": "ASC"}, "order is not one of asc and desc."),
        ({"orderby": "ID"}, "orderby is not one of id, include, name, and registered_date."),
    ]:
        response = await http.get(LIST, params=params)
        assert response.status_code == 400
        name = next(iter(params))
        assert response.json()["data"]["params"] == {name: message}


async def test_orderings(http: httpx.AsyncClient) -> None:
    newest = (await http.get(
        LIST, params={"role": "all", "orderby": "registered_date", "order": "desc", "per_page": 100}
    )).json()
    dates = [c["date_created_gmt"] for c in newest]
    assert dates == sorted(dates, reverse=True)
    chosen = (await http.get(
        LIST, params={"role": "all", "orderby": "include", "include": "9,1,5", "exclude": "1"}
    )).json()
    ids = {c["id"] for c in chosen}
    assert [c["id"] for c in chosen] == [i for i in (9, 1, 5) if i in ids]
    assert 1 in ids  # include wins over exclude
    named = (await http.get(LIST, params={"role": "all", "per_page": 100})).json()
    names = [f"{c['first_name']} {c['last_name']}".strip() or c["username"] for c in named]
    keys = [collate(name) for name in names]  # Accent- and case-insensitive, like MySQL.
    assert keys == sorted(keys)


async def test_email_filter_is_exact_on_account_email(
    sim: SimHandle, http: httpx.AsyncClient
) -> None:
    customers = await sim.customers()
    target = customers[10]
    response = await http.get(LIST, params={"role": "all", "email": target["email"].upper()})
    assert [c["id"] for c in response.json()] == [target["id"]]
    partial = await http.get(LIST, params={"role": "all", "email": "x" + target["email"]})
    assert partial.json() == []
    invalid = await http.get(LIST, params={"email": "not-an-email"})
    assert invalid.json()["data"]["params"] == {"email": "Invalid email address."}


async def test_unknown_params_are_ignored(http: httpx.AsyncClient) -> None:
    plain = await http.get(LIST, params={"role": "all", "orderby": "id"})
    filtered = await http.get(
        LIST, params={"role": "all", "orderby": "id", "modified_after": "2030-01-01T00:00:00"}
    )
    assert filtered.json() == plain.json()
    fields = await http.get(LIST, params={"role": "all", "_fields": "email,billing.city"})
    assert all(set(c) == {"id", "email", "billing"} for c in fields.json())
    assert all(set(c["billing"]) == {"city"} for c in fields.json())


async def test_single_customer_and_namespace_index(sim: SimHandle, http: httpx.AsyncClient) -> None:
    admin = await http.get(f"{LIST}/1")
    assert admin.status_code == 200 and admin.json()["role"] == "administrator"
    async with httpx.AsyncClient(base_url=sim.url) as anonymous:
        missing = await anonymous.get(f"{LIST}/999999")
        assert (missing.status_code, missing.json()["code"]) == (404, "wc_user_invalid_id")
        assert (await anonymous.get(f"{LIST}/1")).status_code == 401
        assert (await anonymous.get(f"{LIST}/abc")).json()["code"] == "rest_no_route"
        index = await anonymous.get("/wp-json/wc/v3")
        assert index.status_code == 200 and index.json()["namespace"] == "wc/v3"


# --- authentication ---------------------------------------------------------------------------


async def test_https_basic_and_query_auth_with_the_ca() -> None:
    async with running_simulator(customers=12, seed=2, tls=True) as sim:
        assert sim.url.startswith("https://") and sim.ca_cert
        async with httpx.AsyncClient(base_url=sim.url, verify=sim.verify()) as client:
            basic = await client.get(
                LIST, params={"role": "all"}, auth=(sim.consumer_key, sim.consumer_secret)
            )
            assert basic.status_code == 200 and len(basic.json()) == 10
            query = await client.get(
                LIST,
                params={"role": "all", "consumer_key": sim.consumer_key,
                        "consumer_secret": sim.consumer_secret},
            )
            assert query.status_code == 200
            assert f"consumer_secret={sim.consumer_secret}" in query.headers["link"]
            wrong = await client.get(LIST, auth=(sim.consumer_key, "cs_" + "0" * 40))
            assert (wrong.status_code, wrong.json()["message"]) == (
                401, "Consumer secret is invalid.",
            )  # fmt: skip
            unknown = await client.get(LIST, auth=("ck_" + "1" * 40, sim.consumer_secret))
            assert (unknown.status_code, unknown.json()["code"]) == (
                401, "woocommerce_rest_cannot_view",
            )  # fmt: skip
        stats = await sim.stats()
        assert stats["by_auth"]["basic"] == 3 and stats["by_auth"]["query"] == 1


async def test_basic_over_plain_http_is_ignored() -> None:
    async with running_simulator(customers=5, seed=2) as sim, httpx.AsyncClient() as client:
        response = await client.get(sim.url + LIST, auth=(sim.consumer_key, sim.consumer_secret))
    assert response.status_code == 401
    assert response.json() == {
        "code": "woocommerce_rest_cannot_view",
        "message": "Sorry, you cannot list resources.",
        "data": {"status": 401},
    }


@pytest.mark.parametrize(
    ("method", "where"),
    [
        (SIGNATURE_HMAC_SHA256, SIGNATURE_TYPE_QUERY),
        (SIGNATURE_HMAC_SHA1, SIGNATURE_TYPE_QUERY),
        (SIGNATURE_HMAC_SHA256, SIGNATURE_TYPE_AUTH_HEADER),
    ],
)
async def test_oauth1_signed_by_oauthlib_is_accepted(
    sim: SimHandle, method: str, where: str
) -> None:
    auth = OAuth1(sim.consumer_key, sim.consumer_secret, method, where)
    async with httpx.AsyncClient(base_url=sim.url, auth=auth) as client:
        params = {"role": "all", "orderby": "id", "per_page": 100, "search": "a b"}
        response = await client.get(LIST, params=params)
        assert response.status_code == 200, response.text
    wrong = OAuth1(sim.consumer_key, "cs_" + "0" * 40, method, where)
    async with httpx.AsyncClient(base_url=sim.url, auth=wrong) as client:
        refused = await client.get(LIST)
    assert refused.status_code == 401
    assert refused.json()["message"] == "Invalid signature - provided signature does not match."


async def test_oauth1_replayed_url_is_refused(sim: SimHandle) -> None:
    client = Client(
        sim.consumer_key,
        client_secret=sim.consumer_secret,
        signature_method=SIGNATURE_HMAC_SHA256,
        signature_type=SIGNATURE_TYPE_QUERY,
    )
    url, _, _ = client.sign(f"{sim.url}{LIST}?role=all", http_method="GET")
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).status_code == 200
        replay = await http.get(url)
    assert replay.json()["message"] == "Invalid nonce - nonce has already been used."


async def test_revoked_and_capability_less_keys(sim: SimHandle, http: httpx.AsyncClient) -> None:
    await sim.revoke_keys()
    revoked = await http.get(LIST)
    assert (revoked.status_code, revoked.json()["code"], revoked.json()["message"]) == (
        401, "woocommerce_rest_authentication_error", "Consumer secret is invalid.",
    )  # fmt: skip
    await sim.revoke_keys("no_caps")
    assert (await http.get(LIST)).status_code == 403
    await sim.revoke_keys("no_read")
    no_read = await http.get(LIST)
    assert no_read.json()["message"] == "The API key provided does not have read permissions."
    await sim.restore_keys()
    assert (await http.get(LIST)).status_code == 200


async def test_a_key_rotation_adds_a_key_then_removes_the_old_one(
    sim: SimHandle, http: httpx.AsyncClient
) -> None:
    new_key, new_secret = await sim.add_key()
    assert new_key.startswith("ck_") and new_secret.startswith("cs_")
    assert new_key != sim.consumer_key
    rotated = httpx.BasicAuth(new_key, new_secret)
    async with httpx.AsyncClient(base_url=sim.url, auth=rotated, timeout=10) as new_http:
        assert (await http.get(LIST)).status_code == 200  # both keys work during the rotation
        assert (await new_http.get(LIST)).status_code == 200
        signed = OAuth1(new_key, new_secret)
        assert (await new_http.get(LIST, auth=signed)).status_code == 200
        await sim.remove_key(sim.consumer_key)
        assert (await http.get(LIST)).status_code == 401  # the old key is unknown now
        assert (await new_http.get(LIST)).status_code == 200
        wrong = httpx.BasicAuth(new_key, sim.consumer_secret)
        assert (await new_http.get(LIST, auth=wrong)).json()["message"] == (
            "Consumer secret is invalid."
        )
        await sim.remove_key(new_key)
        assert (await new_http.get(LIST)).status_code == 401
    with pytest.raises(ControlError, match="no such key"):
        await sim.remove_key("ck_nobody")
    given = await sim.add_key(consumer_key="ck_given", consumer_secret="cs_given")
    assert given == ("ck_given", "cs_given")
    with pytest.raises(ControlError, match="exists already"):
        await sim.add_key(consumer_key="ck_given")


# --- faults -----------------------------------------------------------------------------------


async def test_429_carries_retry_after(sim: SimHandle, http: httpx.AsyncClient) -> None:
    await sim.set_faults(script=["429"], retry_after=3)
    limited = await http.get(LIST)
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    await sim.set_faults(script=["429"], retry_after_http_date=True)
    dated = await http.get(LIST)
    assert parsedate_to_datetime(dated.headers["retry-after"]).tzinfo is not None
    assert (await http.get(LIST)).status_code == 200  # The script is used up.


async def test_5xx_statuses(sim: SimHandle, http: httpx.AsyncClient) -> None:
    await sim.set_faults(script=["500", "502", "503", "504"])
    statuses = [(await http.get(LIST)).status_code for _ in range(4)]
    assert statuses == [500, 502, 503, 504]
    await sim.set_faults(rate_5xx=1.0, statuses_5xx=[502])
    assert (await http.get(LIST)).status_code == 502
    stats = await sim.stats()
    assert stats["by_fault"]["5xx"] == 5 and stats["by_status"]["502"] == 2


async def test_cut_body_is_a_transport_error(sim: SimHandle, http: httpx.AsyncClient) -> None:
    await sim.set_faults(script=["cut"])
    with pytest.raises(httpx.TransportError):
        await http.get(LIST, params={"per_page": 100, "role": "all"})
    assert (await http.get(LIST)).status_code == 200  # The next connection is fine.


async def test_bad_json_is_a_200_that_does_not_parse(
    sim: SimHandle, http: httpx.AsyncClient
) -> None:
    await sim.set_faults(script=["bad_json", "bad_json"], seed=1)
    for _ in range(2):
        response = await http.get(LIST, params={"per_page": 20})
        assert response.status_code == 200
        with pytest.raises(ValueError):
            response.json()


async def test_trickle_sends_headers_at_once_then_the_body_byte_by_byte(
    sim: SimHandle, http: httpx.AsyncClient
) -> None:
    whole = (await http.get(LIST, params={"per_page": 1})).content
    await sim.set_faults(script=["trickle"], trickle_ms=2)
    async with http.stream("GET", LIST, params={"per_page": 1}) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(whole))
        chunks = [chunk async for chunk in response.aiter_raw()]
    assert b"".join(chunks) == whole
    assert len(chunks) > len(whole) // 4, "the body came in a few large pieces"
    assert (await sim.stats())["by_fault"]["trickle"] == 1


async def test_faults_leave_the_control_api_alone(sim: SimHandle) -> None:
    config = await sim.set_faults(rate_5xx=1.0)
    assert config["rate_5xx"] == 1.0
    assert len(await sim.customers()) == CUSTOMERS
    with pytest.raises(Exception, match="unknown fault setting"):
        await sim.set_faults(rate_nonsense=1)


# --- control API ------------------------------------------------------------------------------


async def test_control_writes_show_in_lists(sim: SimHandle, http: httpx.AsyncClient) -> None:
    last_id = (await sim.customers())[-1]["id"]
    created = await sim.add_customer(email="late@example.com", first_name="Zoë")
    assert created["id"] == last_id + 1
    newest = await http.get(LIST, params={"orderby": "id", "order": "desc", "per_page": 1})
    assert newest.json()[0]["email"] == "late@example.com"
    assert newest.headers["x-wp-total"] == str(int(newest.headers["x-wp-total"]))

    updated = await sim.update_customer(created["id"], billing={"city": "Ghent"}, last_name="Ng")
    assert updated["billing"]["city"] == "Ghent" and updated["billing"]["country"] == ""
    assert updated["date_modified_gmt"] >= created["date_created_gmt"]
    fetched = (await http.get(f"{LIST}/{created['id']}")).json()
    assert fetched["last_name"] == "Ng"

    removed = await sim.delete_customer(created["id"])
    assert removed["id"] == created["id"]
    assert (await http.get(f"{LIST}/{created['id']}")).status_code == 404
    assert len(await sim.customers()) == CUSTOMERS


async def test_stats_count_only_store_requests(sim: SimHandle, http: httpx.AsyncClient) -> None:
    await sim.reset_stats()
    await http.get(LIST)
    await http.get(f"{LIST}/1")
    await sim.customers()
    stats = await sim.stats()
    assert stats["requests"] == 2
    assert stats["by_path"] == {LIST: 1, f"{LIST}/1": 1}


async def test_the_request_log_keeps_paging_and_no_key(sim: SimHandle) -> None:
    await sim.reset_stats()
    auth = OAuth1(sim.consumer_key, sim.consumer_secret)  # signed in the query string
    async with httpx.AsyncClient(base_url=sim.url, auth=auth, timeout=10) as client:
        params = {"per_page": 20, "offset": 19, "orderby": "id", "order": "asc", "role": "all"}
        assert (await client.get(LIST, params=params)).status_code == 200
        assert (await client.get(LIST, params={"page": 2, "search": "x"})).status_code == 200
    log = await sim.requests()
    assert [r["params"] for r in log] == [
        {k: str(v) for k, v in params.items()},
        {"page": "2"},
    ]
    assert all(r["path"] == LIST and r["status"] == 200 for r in log)
    assert all(r["arrived_at"] <= r["answered_at"] for r in log)
    assert sim.consumer_key not in str(log) and "oauth_signature" not in str(log)
    await sim.reset_stats()
    assert await sim.requests() == []


def test_spawned_simulator_serves_and_stops() -> None:
    with spawn_simulator(customers=40, seed=3, faults={"script": ["503"]}) as sim:
        assert sim.process is not None and sim.process.poll() is None
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sim.url)
        auth = OAuth1(sim.consumer_key, sim.consumer_secret)
        with httpx.Client(base_url=sim.url, timeout=10) as client:
            assert client.get(LIST, auth=auth).status_code == 503
            params = {"role": "all", "orderby": "id", "per_page": 100}
            response = client.get(LIST, params=params, auth=auth)
        assert response.status_code == 200
        assert [c["id"] for c in response.json()] == [c["id"] for c in sim.customers_sync()]
        assert sim.stats_sync()["requests"] == 2
        process = sim.process
    assert process.returncode == 0


async def test_odd_customers_are_served_as_a_broken_database_would(
    sim: SimHandle, http: httpx.AsyncClient
) -> None:
    """Issue 8's content: NUL, 70,000-character names, emoji and RTL, a lone surrogate, deep
    meta_data; set through the control API (the CLI's --odd-customers does the same at start)."""
    chosen = await sim.make_odd(
        "nul", "long_name", "unicode", "lone_surrogate", "deep_meta:200", "deep_meta:2000"
    )
    assert len(set(chosen.values())) == 6
    # json parses up to about 990 levels; 2000 is spliced text, so it is read as text only
    by_id = {
        user_id: (await http.get(f"/wp-json/wc/v3/customers/{user_id}")).json()
        for kind, user_id in chosen.items()
        if kind != "deep_meta:2000"
    }
    assert "\x00" in by_id[chosen["nul"]]["first_name"]
    assert by_id[chosen["long_name"]]["last_name"] == "Ł" * 70_000
    assert by_id[chosen["unicode"]]["first_name"] == "👩🏽‍🚀 Zoë 𝕏"
    assert by_id[chosen["lone_surrogate"]]["last_name"] == "D\udc80e"
    value = by_id[chosen["deep_meta:200"]]["meta_data"][-1]["value"]
    depth = 0
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    assert (depth, value) == (200, "deep")
    response = await http.get(f"/wp-json/wc/v3/customers/{chosen['deep_meta:2000']}")
    assert response.status_code == 200 and response.text.count("[") >= 2000
    with pytest.raises(ControlError) as info:
        await sim.make_odd("deep_meta:x")
    assert info.value.status == 400
