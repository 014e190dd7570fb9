"""The AsyncAPI document is the message contract, published: generated from every service's
subscribers and publishers, it names every model of shared/messages.py and every queue, binding
and routing key of shared/topology.py, and the copy in docs/asyncapi.json is what the code
generates today (regenerate: ``python -m services.asyncapi docs/asyncapi.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.asyncapi import document, documented_settings, render
from shared.messages import (
    ALL_MESSAGES,
    TRACKER_EVENTS,
    CustomerBatch,
    CustomerChanged,
    Envelope,
    SyncRequested,
)
from shared.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.json"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document(documented_settings())


def resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def payload_titles(doc: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    """The titles of the models an operation's message may be."""
    titles: set[str] = set()
    for ref in operation["messages"]:
        message = resolve(doc, resolve(doc, ref["$ref"])["$ref"])
        payload = resolve(doc, message["payload"]["$ref"])
        options = payload.get("oneOf", [payload])
        titles |= {resolve(doc, o["$ref"])["title"] if "$ref" in o else o["title"] for o in options}
    return titles


def operations(doc: dict[str, Any], action: str) -> dict[str, dict[str, Any]]:
    return {name: op for name, op in doc["operations"].items() if op["action"] == action}


def test_the_committed_copy_is_what_the_code_generates(doc: dict[str, Any]) -> None:
    committed = json.loads(COMMITTED.read_text())
    assert committed == doc, (
        "docs/asyncapi.json drifted from the code: python -m services.asyncapi docs/asyncapi.json"
    )
    assert COMMITTED.read_text() == render(doc)  # and it is in the generated form


def test_every_message_model_is_in_it_with_every_field(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for model in ALL_MESSAGES:
        assert model.__name__ in schemas, model.__name__
        assert set(schemas[model.__name__]["properties"]) == set(model.model_fields)
    sent = set().union(*(payload_titles(doc, op) for op in operations(doc, "send").values()))
    assert sent == {model.__name__ for model in ALL_MESSAGES}  # every model has a publisher


@pytest.mark.parametrize(
    ("channel", "models"),
    [
        ("fetcher", (SyncRequested,)),
        ("syncer", (CustomerBatch, CustomerChanged)),
        ("tracker", TRACKER_EVENTS),
    ],
)
def test_each_consumer_receives_its_models(
    doc: dict[str, Any], channel: str, models: tuple[type[Envelope], ...]
) -> None:
    received = operations(doc, "receive")
    assert set(received) == {"fetcher", "syncer", "tracker"}
    assert payload_titles(doc, received[channel]) == {model.__name__ for model in models}


def test_every_queue_binding_and_routing_key_of_the_topology_is_in_it(
    doc: dict[str, Any],
) -> None:
    settings = documented_settings()
    topology = Topology(settings.namespace, tuple(settings.retry_delays_ms))
    addresses = {spec["address"] for spec in doc["channels"].values()}
    for model in ALL_MESSAGES:  # published under its routing key to the topic exchange
        assert model.routing_key in addresses, model.routing_key
    for work in topology.work_queues:
        assert work.name in addresses
        assert topology.parking(work).name in addresses
        description = doc["channels"][work.name.split(".")[1]]["description"]
        for key in topology.bindings[work.name]:
            assert f"`{key}`" in description, (work.name, key)
    for tier in topology.retry_tiers:
        assert tier.name in addresses
    assert set(topology.queue_names()) <= addresses
    exchanges = {
        spec["bindings"]["amqp"].get("exchange", {}).get("name")
        for spec in doc["channels"].values()
    }
    assert topology.exchange.name in exchanges


def test_publishers_follow_the_routes_the_services_use(doc: dict[str, Any]) -> None:
    sends = operations(doc, "send")
    # What each service sends, by channel; a change here is a change of the contract.
    by_service = {
        service: {name.split(":", 1)[1] for name in sends if name.startswith(service + ":")}
        for service in ("api", "fetcher", "syncer", "tracker")
    }
    assert by_service["api"] == {"sync.requested", "customer.batch", "customer.changed"}
    assert by_service["fetcher"] == {
        "sync.requested", "customer.batch", "fetch.completed", "fetch.failed",
        "woosync.fetcher.sync-requested.parking",
    }
    assert by_service["syncer"] == {
        "line.done", "line.failed", "woosync.syncer.customer-batch.parking",
        *(f"woosync.syncer.customer-batch.retry.{d}ms" for d in (5000, 30000, 120000)),
    }
    assert by_service["tracker"] == {
        "sync.completed", "sync.requested", "woosync.tracker.events.parking"
    }
    for name, op in sends.items():  # every message is persistent
        assert op["bindings"]["amqp"]["deliveryMode"] == 2, name
