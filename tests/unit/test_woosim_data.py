"""The simulator's pure parts: generated data, WordPress/PHP quirks, OAuth base string, store."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA1, SIGNATURE_HMAC_SHA256, SIGNATURE_TYPE_QUERY, Client
from oauthlib.oauth1.rfc5849 import signature as rfc5849

from tools.woosim import oauth, php, wp
from tools.woosim.auth import AuthRequest, KeyRing, authenticate, default_credentials
from tools.woosim.data import (
    BILLING_KEYS,
    CUSTOMER_KEYS,
    REGISTERED_ROLES,
    SHIPPING_KEYS,
    GeneratedUser,
    generate_customers,
    generate_users,
    parse_tz_offset,
)
from tools.woosim.faults import FaultConfig, FaultInjector
from tools.woosim.store import CustomerStore, ListQuery, StoreError

DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")


@pytest.fixture(scope="module")
def customers() -> list[dict[str, Any]]:
    return generate_customers(3000, seed=42)


# --- generator --------------------------------------------------------------------------------


def test_same_seed_same_store_other_seed_other_store() -> None:
    assert generate_customers(300, seed=5) == generate_customers(300, seed=5)
    assert generate_customers(300, seed=5) != generate_customers(300, seed=6)


def test_fields_come_in_the_v3_order(customers: list[dict[str, Any]]) -> None:
    assert CUSTOMER_KEYS == (
        "id", "date_created", "date_created_gmt", "date_modified", "date_modified_gmt", "email",
        "first_name", "last_name", "role", "username", "billing", "shipping",
        "is_paying_customer", "avatar_url", "meta_data",
    )  # fmt: skip
    assert BILLING_KEYS[6:9] == ("postcode", "country", "state")  # data-model order
    for customer in customers:
        assert tuple(customer) == CUSTOMER_KEYS
        assert tuple(customer["billing"]) == BILLING_KEYS
        assert tuple(customer["shipping"]) == SHIPPING_KEYS
        assert "_links" not in customer
        assert all(tuple(meta) == ("id", "key", "value") for meta in customer["meta_data"])
        assert all(isinstance(v, str) for v in customer["billing"].values())
        assert isinstance(customer["is_paying_customer"], bool)


def test_ids_ascend_with_gaps(customers: list[dict[str, Any]]) -> None:
    ids = [c["id"] for c in customers]
    assert ids == sorted(set(ids))
    assert ids[0] == 1
    assert ids[-1] > len(ids)  # Some ids are missing, as on a real site.


def test_every_role_appears_and_customers_dominate(customers: list[dict[str, Any]]) -> None:
    roles = Counter(c["role"] for c in customers)
    assert set(roles) == set(REGISTERED_ROLES)
    assert roles["customer"] > len(customers) * 0.8
    assert customers[0]["role"] == "administrator"


def test_hidden_roles_include_multi_role_and_role_less_users() -> None:
    users = generate_users(400, seed=1)
    role_sets = {user.roles for user in users}
    assert ("customer", "subscriber") in role_sets
    assert () in role_sets
    for user in users:
        assert user.customer["role"] == (user.roles[0] if user.roles else "customer")


def test_small_stores_still_have_every_role() -> None:
    assert {c["role"] for c in generate_customers(40, seed=9)} == set(REGISTERED_ROLES)


def test_dates_are_wordpress_formatted_and_local_is_offset(
    customers: list[dict[str, Any]],
) -> None:
    nulls = 0
    for c in customers:
        assert DATE_RE.match(c["date_created"]) and DATE_RE.match(c["date_created_gmt"])
        local = datetime.fromisoformat(c["date_created"])
        assert local - datetime.fromisoformat(c["date_created_gmt"]) == timedelta(hours=2)
        assert (c["date_modified"] is None) == (c["date_modified_gmt"] is None)
        if c["date_modified"] is None:
            nulls += 1
        else:
            assert DATE_RE.match(c["date_modified"])
            assert c["date_modified_gmt"] >= c["date_created_gmt"]
    assert 0 < nulls < len(customers) / 2


def test_timezone_offset_is_configurable() -> None:
    first = generate_customers(1, seed=1, tz_offset="-03:30")[0]
    local = datetime.fromisoformat(first["date_created"])
    gmt = datetime.fromisoformat(first["date_created_gmt"])
    assert gmt - local == timedelta(hours=3, minutes=30)
    assert parse_tz_offset("+0530") == 19_800
    with pytest.raises(ValueError):
        parse_tz_offset("2 hours")


def test_base_time_bounds_every_date() -> None:
    base = datetime(2020, 6, 1, tzinfo=UTC)
    for c in generate_customers(200, seed=3, base_time=base):
        assert c["date_created_gmt"] < "2020-06-01T00:00:00"
        assert (c["date_modified_gmt"] or "") <= "2020-06-01T00:00:00"


def test_names_span_scripts_and_emoji(customers: list[dict[str, Any]]) -> None:
    names = " ".join(f"{c['first_name']} {c['last_name']}" for c in customers)
    assert any(unicodedata.combining(ch) == 0 and ch in "éöüñøłç" for ch in names)
    assert re.search(r"[\u4e00-\u9fff]", names)  # CJK
    assert re.search(r"[\u0590-\u05ff\u0600-\u06ff]", names)  # Hebrew / Arabic (RTL)
    assert re.search(r"[\U0001F300-\U0001FAFF]", names)  # emoji
    assert any(c["first_name"] == "" and c["last_name"] == "" for c in customers)


def test_account_emails_unique_but_billing_emails_repeat(
    customers: list[dict[str, Any]],
) -> None:
    accounts = [c["email"].lower() for c in customers]
    assert len(set(accounts)) == len(accounts)
    billing = Counter(c["billing"]["email"] for c in customers if c["billing"]["email"])
    assert any(count > 1 for count in billing.values())
    assert any(c["billing"]["email"] not in ("", c["email"]) for c in customers)
    usernames = [c["username"] for c in customers]
    assert len(set(usernames)) == len(usernames)


def test_addresses_are_sometimes_empty(customers: list[dict[str, Any]]) -> None:
    assert any(set(c["billing"].values()) == {""} for c in customers)
    assert any(c["shipping"]["address_1"] == "" and c["billing"]["address_1"] for c in customers)
    assert any(c["shipping"]["phone"] for c in customers)


def test_meta_values_have_every_json_type(customers: list[dict[str, Any]]) -> None:
    kinds = {type(meta["value"]) for c in customers for meta in c["meta_data"]}
    assert {str, int, float, list, dict} <= kinds
    meta_ids = [meta["id"] for c in customers for meta in c["meta_data"]]
    assert len(set(meta_ids)) == len(meta_ids)


# --- WordPress / PHP behaviour ----------------------------------------------------------------


def test_json_is_encoded_like_wp_json_encode() -> None:
    assert wp.dumps({"a": "é/😀"}) == '{"a":"\\u00e9\\/\\ud83d\\ude00"}'


def test_sprintf_l_lists_like_wordpress() -> None:
    assert wp.sprintf_l(["asc", "desc"]) == "asc and desc"
    assert wp.sprintf_l(["id", "include", "name"]) == "id, include, and name"


def test_parse_str_follows_php() -> None:
    parsed = php.parse_str("a=1&b.c=2&a=3&include[]=4&include[]=5&q=x+y%2Bz&e=")
    assert parsed == {"a": "3", "b_c": "2", "include": {"0": "4", "1": "5"}, "q": "x y+z", "e": ""}
    assert list(parsed) == ["a", "b_c", "include", "q", "e"]


def test_add_query_arg_reencodes_like_wordpress() -> None:
    base = php.add_query_arg(
        {"per_page": "10", "search": "john doe", "email": "a+b@x.test", "include": {"0": "4"},
         "e": ""},
        "https://shop.test/wp-json/wc/v3/customers",
    )
    link = php.add_query_arg({"page": 2}, base)
    assert link == (
        "https://shop.test/wp-json/wc/v3/customers?per_page=10&search=john+doe"
        "&email=a+b%40x.test&include%5B0%5D=4&e&page=2"
    )


def test_validation_reports_every_invalid_param_in_registration_order() -> None:
    with pytest.raises(wp.WPError) as caught:
        wp.validate_list_params({"role": "x", "per_page": "101", "page": "0"}, REGISTERED_ROLES)
    error = caught.value
    assert (error.status, error.code) == (400, "rest_invalid_param")
    assert error.message == "Invalid parameter(s): page, per_page, role"
    body = error.body()
    assert body["data"]["params"]["page"] == "page must be greater than or equal to 1"
    assert body["data"]["details"]["per_page"] == {
        "code": "rest_out_of_bounds",
        "message": "per_page must be between 1 (inclusive) and 100 (inclusive)",
        "data": None,
    }


def test_validation_type_errors_and_sanitising() -> None:
    with pytest.raises(wp.WPError) as caught:
        wp.validate_list_params({"per_page": "abc", "include": "1,x"}, REGISTERED_ROLES)
    details = caught.value.body()["data"]["details"]
    assert details["per_page"]["data"] == {"param": "per_page"}
    assert details["include"]["message"] == "include[1] is not of type integer."
    params = wp.validate_list_params(
        {"per_page": "1e2", "offset": "-5", "include": "3,3,1", "search": " a \n b "},
        REGISTERED_ROLES,
    )
    assert (params.per_page, params.offset, params.include, params.search) == (
        100, 5, (3, 1), "a b",
    )  # fmt: skip


# --- OAuth 1.0a -------------------------------------------------------------------------------

URL = "http://127.0.0.1:8100/wp-json/wc/v3/customers"


def test_signature_base_string_follows_woocommerce() -> None:
    params: dict[str, php.PhpValue] = {
        "per_page": "10",
        "oauth_consumer_key": "ck_x",
        "oauth_nonce": "abc",
        "oauth_signature_method": "HMAC-SHA256",
        "oauth_timestamp": "1700000000",
        "search": "a b+c",
        "oauth_signature": "ignored",
    }
    assert oauth.signature_base_string("get", URL, params) == (
        "GET&http%3A%2F%2F127.0.0.1%3A8100%2Fwp-json%2Fwc%2Fv3%2Fcustomers&"
        "oauth_consumer_key%3Dck_x%26oauth_nonce%3Dabc%26oauth_signature_method%3DHMAC-SHA256"
        "%26oauth_timestamp%3D1700000000%26per_page%3D10%26search%3Da%2520b%252Bc"
    )


def test_base_string_matches_oauthlib_for_plain_params() -> None:
    params = {"role": "all", "orderby": "id", "per_page": "100", "oauth_nonce": "n",
              "oauth_timestamp": "1", "oauth_version": "1.0", "oauth_consumer_key": "ck",
              "oauth_signature_method": "HMAC-SHA1", "email": "x@y.test"}
    normalized = rfc5849.normalize_parameters(list(params.items()))
    expected = rfc5849.signature_base_string("GET", rfc5849.base_string_uri(URL), normalized)
    assert oauth.signature_base_string("GET", URL, dict(params)) == expected


def test_array_params_are_signed_the_php_way() -> None:
    base = oauth.signature_base_string("GET", URL, {"include": {"0": "1", "1": "2"}})
    assert base.endswith("&include%255B0%255D%3D1%26include%255B1%255D%3D2")


@pytest.mark.parametrize("method", [SIGNATURE_HMAC_SHA1, SIGNATURE_HMAC_SHA256])
def test_oauthlib_signed_requests_verify(method: str) -> None:
    key, secret = default_credentials(1)
    signed, _, _ = Client(
        key, client_secret=secret, signature_method=method, signature_type=SIGNATURE_TYPE_QUERY
    ).sign(f"{URL}?role=all&per_page=100&search=%C3%A9+x", http_method="GET")
    query = php.parse_str(signed.split("?", 1)[1])
    keys = KeyRing(key, secret)
    request = AuthRequest("GET", URL, query, None, is_ssl=False)
    result = authenticate(keys, request)
    assert (result.error, result.method) == (None, "oauth1")
    replay = authenticate(keys, request)
    assert replay.error is not None
    assert replay.error.message == "Invalid nonce - nonce has already been used."
    wrong = authenticate(KeyRing(key, "cs_" + "0" * 40), request)
    assert wrong.error is not None
    assert wrong.error.message == "Invalid signature - provided signature does not match."


def test_oauth_errors_name_what_is_wrong() -> None:
    key, secret = default_credentials(1)
    keys = KeyRing(key, secret, clock=lambda: 1_700_000_000.0)
    partial = {"oauth_consumer_key": key, "oauth_nonce": "n"}
    result = authenticate(keys, AuthRequest("GET", URL, partial, None, is_ssl=False))
    assert result.error is not None
    assert result.error.code == "woocommerce_rest_authentication_missing_parameter"
    assert result.error.message == (
        "Missing OAuth parameters oauth_timestamp, oauth_signature, oauth_signature_method"
    )
    assert keys.use_nonce("1699990000", "n1") is not None  # 2h47m early: out of the window
    assert keys.use_nonce("1700000100", "n1") is None


def test_basic_and_query_credentials_only_count_over_https() -> None:
    key, secret = default_credentials(2)
    keys = KeyRing(key, secret)
    import base64

    header = "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()
    assert authenticate(keys, AuthRequest("GET", URL, {}, header, is_ssl=True)).key is not None
    plain = authenticate(keys, AuthRequest("GET", URL, {}, header, is_ssl=False))
    assert (plain.key, plain.error) == (None, None)  # Ignored: unauthenticated, no error.
    query = {"consumer_key": key, "consumer_secret": "cs_wrong"}
    wrong = authenticate(keys, AuthRequest("GET", URL, query, None, is_ssl=True))
    assert wrong.error is not None and wrong.error.message == "Consumer secret is invalid."
    unknown = {"consumer_key": "ck_unknown", "consumer_secret": secret}
    assert authenticate(keys, AuthRequest("GET", URL, unknown, None, is_ssl=True)).error is None


def test_default_credentials_look_like_woocommerce_keys() -> None:
    key, secret = default_credentials(7)
    assert re.fullmatch(r"ck_[0-9a-f]{40}", key) and re.fullmatch(r"cs_[0-9a-f]{40}", secret)
    assert default_credentials(7) == (key, secret) != default_credentials(8)


# --- faults -----------------------------------------------------------------------------------


def test_faults_are_reproducible_by_seed_and_scriptable() -> None:
    config = FaultConfig(rate_429=0.2, rate_5xx=0.2, rate_cut=0.2, seed=3)
    first = [FaultInjector(config).decide().kind for _ in range(1)]
    run = FaultInjector(config)
    kinds = [run.decide().kind for _ in range(200)]
    again = FaultInjector(config)
    assert kinds == [again.decide().kind for _ in range(200)]
    assert {"none", "429", "5xx", "cut"} <= set(kinds) and first[0] == kinds[0]
    scripted = FaultInjector(FaultConfig(script=("503", "cut")))
    assert [(f.kind, f.status) for f in (scripted.decide(), scripted.decide())] == [
        ("5xx", 503), ("cut", 200),
    ]  # fmt: skip
    assert scripted.decide().kind == "none"
    with pytest.raises(ValueError):
        FaultConfig().updated({"rate_429": 2})
    with pytest.raises(ValueError):
        FaultConfig().updated({"nonsense": 1})


# --- store ------------------------------------------------------------------------------------


def _twins(count: int) -> list[GeneratedUser]:
    """Users who all share one display name: every page boundary cuts a tie group."""
    users = []
    for customer in generate_customers(count, seed=1):
        customer.update(first_name="Sam", last_name="Lee", role="customer")
        users.append(GeneratedUser(customer, ("customer",), ""))
    return users


def test_paging_by_id_is_exact_but_by_name_is_not() -> None:
    store = CustomerStore(_twins(60))
    by_id: list[int] = []
    by_name: list[int] = []
    for offset in range(0, 60, 10):
        records, total = store.page(ListQuery(role="all", orderby="id", offset=offset, number=10))
        by_id += [r.id for r in records]
        named, _ = store.page(ListQuery(role="all", offset=offset, number=10))
        by_name += [r.id for r in named]
        assert total == 60
    assert by_id == sorted(by_id) and len(set(by_id)) == 60
    assert len(by_name) == 60 and len(set(by_name)) < 60  # Ties: repeats and omissions.
    again = [r.id for r in store.page(ListQuery(role="all", offset=10, number=10))[0]]
    assert again == by_name[10:20]  # The same request gives the same answer.


def test_store_writes_validate_and_invalidate_cached_queries() -> None:
    store = CustomerStore(generate_users(50, seed=2), clock=lambda: 1_800_000_000.0)
    before = store.page(ListQuery(role="all", orderby="id", number=100))[1]
    last_id = store.records()[-1].id
    created = store.create({"email": "New@Example.com", "billing": {"city": "Durban"}})
    assert created["id"] == last_id + 1
    assert created["username"] == "new" and created["billing"]["city"] == "Durban"
    assert tuple(created) == CUSTOMER_KEYS
    assert store.page(ListQuery(role="all", orderby="id", number=100))[1] == before + 1
    with pytest.raises(StoreError):
        store.create({"email": "new@example.com"})  # Case-insensitive duplicate.
    updated = store.update(created["id"], {"shipping": {"city": "Tokyo"}, "role": "subscriber"})
    assert updated["date_modified_gmt"] == "2027-01-15T08:00:00"
    assert updated["date_modified"] == "2027-01-15T10:00:00"
    assert (updated["billing"]["city"], updated["shipping"]["city"]) == ("Durban", "Tokyo")
    assert updated["role"] == "subscriber"
    found = store.page(ListQuery(role="subscriber", email="NEW@example.com"))[0]
    assert [r.id for r in found] == [created["id"]]
    store.delete(created["id"])
    assert store.page(ListQuery(role="all", orderby="id", number=100))[1] == before
    with pytest.raises(StoreError):
        store.update(created["id"], {})


def test_odd_customers_from_the_command_line() -> None:
    from tools.woosim.cli import build_parser, options_from_args
    from tools.woosim.server import build_simulator

    args = build_parser().parse_args(
        ["--customers", "60", "--odd-customers", "nul, long_name,deep_meta:300"]
    )
    options = options_from_args(args)
    assert options.odd_customers == ("nul", "long_name", "deep_meta:300")
    store = build_simulator(options).store
    texts = {record.id: record.json_open for record in store.records()}
    assert sum("\\u0000" in text for text in texts.values()) == 1
    assert sum("[" * 300 in text for text in texts.values()) == 1
    assert sum(text.count("\\u0141") == 70_000 for text in texts.values()) == 1  # "Ł"
