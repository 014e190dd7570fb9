"""Request validation of the api, without a server: URL rules and the error message wording."""

from __future__ import annotations

from uuid import uuid4

import pytest
from pydantic import ValidationError

from services.api.actions import ACTION_MODELS
from services.api.errors import describe_validation_error
from services.api.schemas import (
    ForceDoneRequest,
    StartRequest,
    StoreConfigIn,
    normalise_store_url,
)

SECRET = "cs_0123456789abcdef0123456789abcdef"


def _start(**config: object) -> dict[str, object]:
    base: dict[str, object] = {"url": "https://shop.example", "consumer_key": "ck_1"}
    base["consumer_secret"] = SECRET
    return {"action": "start", "org_id": str(uuid4()), "config": base | config}


def _message(payload: dict[str, object]) -> str:
    model = ACTION_MODELS[str(payload["action"])]
    with pytest.raises(ValidationError) as caught:
        model.model_validate(payload)
    return describe_validation_error(caught.value)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("https://shop.example", "https://shop.example"),
        ("https://shop.example/", "https://shop.example"),
        ("HTTPS://Shop.Example/Store/", "https://shop.example/Store"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://[::1]:8080/wp", "http://[::1]:8080/wp"),
    ],
)
def test_store_url_is_normalised(raw: str, normalised: str) -> None:
    assert normalise_store_url(raw) == normalised


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("ftp://shop.example", "http or https"),
        ("shop.example", "http or https"),
        ("https://", "host"),
        ("https://user:pw@shop.example", "user name or password"),
        ("https://shop.example/?a=1", "query or fragment"),
        ("https://shop.example/#top", "query or fragment"),
        ("https://shop.example:99999", "invalid port"),
        (" https://shop.example", "whitespace"),
        ("https://shop.example/a b", "whitespace"),
        ("https://shop.example/" + "a" * 3000, "at most"),
    ],
)
def test_bad_store_urls_are_refused(raw: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        normalise_store_url(raw)


def test_start_defaults() -> None:
    request = StartRequest.model_validate(_start())
    assert request.config.auth == "basic"
    assert request.config.verify_tls is True
    assert request.options.batch_size is None
    assert request.options.idempotency_key is None


def test_messages_name_fields_and_never_echo_the_secret() -> None:
    payload = _start(verify_tls="no", extra=SECRET)
    payload["org_id"] = "not-a-uuid"
    del payload["config"]["url"]  # type: ignore[attr-defined]
    message = _message(payload)
    assert "org_id: invalid UUID" in message
    assert "config.url: field required" in message
    assert "config.verify_tls:" in message
    assert "config.extra: unexpected field" in message
    assert SECRET not in message


def test_secret_of_wrong_type_or_length_is_not_echoed() -> None:
    long_secret = "cs_" + "f" * 300
    for bad in (long_secret, "", 12345):
        message = _message(_start(consumer_secret=bad))
        assert message.startswith("config.consumer_secret:")
        assert long_secret not in message


def test_options_are_bounded_and_strict() -> None:
    base = _start()
    for options, field in [
        ({"batch_size": 0}, "options.batch_size"),
        ({"batch_size": 101}, "options.batch_size"),
        ({"batch_size": "10"}, "options.batch_size"),
        ({"concurrency": 17}, "options.concurrency"),
        ({"idempotency_key": "k" * 201}, "options.idempotency_key"),
        ({"idempotency_key": ""}, "options.idempotency_key"),
        ({"colour": "blue"}, "options.colour"),
    ]:
        assert _message(base | {"options": options}).startswith(f"{field}:")


def test_force_done_needs_a_reason() -> None:
    payload = {"action": "force-done", "org_id": str(uuid4()), "job_id": str(uuid4())}
    assert _message(payload) == "reason: field required"
    assert _message(payload | {"reason": ""}).startswith("reason:")
    assert _message(payload | {"reason": "r" * 501}).startswith("reason:")
    assert ForceDoneRequest.model_validate(payload | {"reason": "store closed"}).reason


def test_every_action_has_a_model() -> None:
    assert set(ACTION_MODELS) == {
        "start",
        "status",
        "retry",
        "force-done",
        "replay",
        "pause",
        "resume",
        "cancel",
        "resolve-conflicts",
    }


def test_resolve_conflicts_names_one_or_all_and_a_side() -> None:
    base = {"action": "resolve-conflicts", "org_id": str(uuid4()), "job_id": str(uuid4())}
    one_or_all = "body: give either woo_id (one conflict) or all: true (every conflict)"
    assert _message(base | {"take": "woo"}) == one_or_all
    assert _message(base | {"take": "woo", "woo_id": 5, "all": True}) == one_or_all
    assert _message(base | {"woo_id": 5}) == "take: field required"
    assert _message(base | {"take": "store", "woo_id": 5}).startswith("take:")
    assert _message(base | {"take": "woo", "woo_id": 0}).startswith("woo_id:")
    assert _message(base | {"take": "woo", "woo_id": "5"}).startswith("woo_id:")
    assert _message(base | {"take": "woo", "all": "yes"}).startswith("all:")
    model = ACTION_MODELS["resolve-conflicts"]
    assert model.model_validate(base | {"take": "mantis", "all": True})


def test_start_names_a_bad_conflict_policy() -> None:
    message = _message(_start() | {"options": {"conflict_policy": "store_wins"}})
    assert message.startswith("options.conflict_policy:") and "manual" in message


@pytest.mark.parametrize("auth", ["basic", "query"])
def test_plain_http_refuses_auth_that_sends_the_secret(auth: str) -> None:
    with pytest.raises(ValidationError) as caught:
        StoreConfigIn(
            url="http://shop.example", consumer_key="ck", consumer_secret=SECRET, auth=auth
        )
    message = describe_validation_error(caught.value)
    assert "https" in message and "oauth1" in message
    assert SECRET not in message


def test_plain_http_allows_oauth1_and_https_allows_all() -> None:
    StoreConfigIn(url="http://shop.example", consumer_key="ck", consumer_secret="s", auth="oauth1")
    for auth in ("basic", "query", "oauth1"):
        StoreConfigIn(url="https://shop.example", consumer_key="ck", consumer_secret="s", auth=auth)
