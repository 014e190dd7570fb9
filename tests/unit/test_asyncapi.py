"""Each consuming service's AsyncAPI document names the message models it reads (the contract of
shared/messages.py), although the subscribers take the raw body and decode it themselves."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from faststream import FastStream
from faststream.specification import AsyncAPI

from services.fetcher.app import build_app as build_fetcher
from services.syncer.app import build_app as build_syncer
from services.tracker.app import build_app as build_tracker
from shared.messages import TRACKER_EVENTS, CustomerBatch, Message, SyncRequested
from shared.settings import Settings


def schema_of(build: Callable[[Settings], Any]) -> dict[str, Any]:
    settings = Settings(namespace="asyncapi-test")
    built = build(settings)
    # FastStream apps carry their broker; the tracker's Starlette app its runtime.
    broker = built.broker if isinstance(built, FastStream) else built.state.runtime.broker
    return json.loads(AsyncAPI(broker).to_specification().to_json())


def payload_titles(schema: dict[str, Any]) -> dict[str, set[str]]:
    """Channel title -> the titles of the message models its payload may be."""
    schemas = schema["components"]["schemas"]
    found: dict[str, set[str]] = {}
    for channel, spec in schema["channels"].items():
        for ref in spec["messages"].values():
            message = schema["components"]["messages"][ref["$ref"].rsplit("/", 1)[-1]]
            payload = schemas[message["payload"]["$ref"].rsplit("/", 1)[-1]]
            found[channel] = {option["title"] for option in payload["oneOf"]}
    return found


@pytest.mark.parametrize(
    ("build", "channel", "models"),
    [
        (build_fetcher, "fetcher", (SyncRequested,)),
        (build_syncer, "syncer", (CustomerBatch,)),
        (build_tracker, "tracker", TRACKER_EVENTS),
    ],
)
def test_each_service_schema_names_its_message_models(
    build: Callable[[Settings], Any], channel: str, models: tuple[type[Message], ...]
) -> None:
    schema = schema_of(build)
    assert payload_titles(schema) == {channel: {model.__name__ for model in models}}
    properties = set().union(*(model.model_fields for model in models))
    text = json.dumps(schema)
    for name in properties:  # every field of the contract is in the document
        assert f'"{name}"' in text
