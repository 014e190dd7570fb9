"""The signature of a WooCommerce webhook delivery: base64 HMAC-SHA256 of the raw body, compared
in constant time (shared.woocommerce.webhooks), and the delivery-to-change parsing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from uuid import uuid4

import pytest

from services.api.webhooks import change_of
from shared.logs import redact
from shared.woocommerce import webhooks as wh
from tools.woosim.webhooks import signature as simulator_signature

SECRET = "s3cretLettersAndDigits0123456789"
# As WooCommerce sends it: wp_json_encode, slashes escaped, non-ASCII as \u escapes.
BODY = b'{"id":7,"email":"zo\\u00eb@example.com","avatar_url":"https:\\/\\/x.example\\/a"}'


def test_signature_is_base64_hmac_sha256_of_the_raw_body() -> None:
    expected = base64.b64encode(hmac.new(SECRET.encode(), BODY, hashlib.sha256).digest()).decode()
    assert wh.sign(SECRET, BODY) == expected
    assert simulator_signature(SECRET, BODY) == expected  # the simulator signs as WooCommerce
    assert wh.signature_valid(SECRET, BODY, expected)
    assert wh.signature_valid(SECRET, BODY, f"  {expected} ")  # header whitespace


@pytest.mark.parametrize(
    "header",
    [None, "", "not-base64!", "ü" * 44, base64.b64encode(b"\x00" * 32).decode()],
)
def test_a_missing_or_wrong_signature_is_refused(header: str | None) -> None:
    assert not wh.signature_valid(SECRET, BODY, header)


def test_the_raw_bytes_are_signed_not_the_json() -> None:
    """The same JSON re-encoded (unescaped slashes, UTF-8) has another signature: a receiver
    must hash the bytes it received."""
    reencoded = json.dumps(json.loads(BODY), ensure_ascii=False, separators=(",", ":")).encode()
    assert json.loads(reencoded) == json.loads(BODY)
    assert not wh.signature_valid(SECRET, reencoded, wh.sign(SECRET, BODY))
    assert not wh.signature_valid("other" + SECRET, BODY, wh.sign(SECRET, BODY))


def test_the_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(wh.hmac, "compare_digest", spy)
    assert not wh.signature_valid(SECRET, BODY, "AAAA")
    assert wh.signature_valid(SECRET, BODY, wh.sign(SECRET, BODY))
    assert len(calls) == 2


def test_secrets_are_letters_and_digits_and_tokens_hash() -> None:
    secret = wh.new_secret()
    assert len(secret) == wh.SECRET_LENGTH and secret.isalnum() and secret.isascii()
    assert wh.new_secret() != secret
    token = wh.new_token()
    assert len(wh.hash_token(token)) == 32 and wh.hash_token(token) != wh.hash_token(token + "x")


def test_a_delivery_becomes_one_change() -> None:
    org, conn = uuid4(), uuid4()
    body = b'{"id":7,"email":"a@example.com","_links":{"self":[{"href":"x"}]}}'
    change = change_of("customer.updated", body, org_id=org, connection_id=conn)
    assert change is not None
    assert (change.event, change.woo_id, change.customer) == (
        "updated",
        7,
        {"id": 7, "email": "a@example.com"},
    )
    deleted = change_of("customer.deleted", b'{"id":7}', org_id=org, connection_id=conn)
    assert deleted is not None and (deleted.event, deleted.customer) == ("deleted", None)


@pytest.mark.parametrize(
    "body",
    [
        b'{"code":"woocommerce_rest_invalid_id","message":"Invalid ID.","data":{"status":404}}',
        b"[1]",
        b"not json",
        b'{"id":true}',
        b'{"id":"7"}',
        b'{"id":0}',
    ],
)
def test_a_delivery_without_a_customer_id_is_no_change(body: bytes) -> None:
    assert change_of("customer.updated", body, org_id=uuid4(), connection_id=uuid4()) is None


def test_delivery_url_tokens_are_masked_in_logs() -> None:
    token = wh.new_token()
    line = f'127.0.0.1:5 - "POST /api/v1/integrations/woocommerce/webhooks/{token} HTTP/1.1" 200'
    masked = redact(line)
    assert token not in masked and "/woocommerce/webhooks/***" in masked
