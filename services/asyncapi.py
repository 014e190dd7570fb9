"""The AsyncAPI document of the whole system: every service's subscribers and publishers.

FastStream generates it from the brokers the four services declare (their subscribers in their
app modules, their publishers from ``shared.topology.Topology.publications``), so it shows the
models of ``shared/messages.py`` on the queues and routing keys of ``shared/topology.py``. The api
and the tracker serve it at ``GET /asyncapi.json`` (an API key required, as for
``/openapi.json``); a copy generated with the default namespace is committed as
``docs/asyncapi.json`` and ``tests/unit/test_asyncapi.py`` fails when that copy drifts:

    python -m services.asyncapi docs/asyncapi.json

FastStream's HTML page loads its scripts from a CDN at view time, so only the JSON is served;
any AsyncAPI viewer (AsyncAPI Studio, the ``asyncapi`` CLI) renders it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from faststream import FastStream
from faststream.rabbit import RabbitBroker
from faststream.specification import AsyncAPI

from shared.messages import SCHEMA_VERSION
from shared.settings import Settings

TITLE = "woosync"
DESCRIPTION = (
    "The messages woosync's services exchange over RabbitMQ, generated from their FastStream "
    "subscribers and publishers: the models are shared/messages.py, the queues, bindings and "
    "routing keys shared/topology.py. Channels are named `<service>` (what it consumes) and "
    "`<service>:<routing key or queue>` (what it publishes). Every message is persistent JSON "
    "with the model's `schema_version`; consumers ack by hand after their effect is committed."
)


def documented_settings() -> Settings:
    """The settings of the committed copy: the defaults that shape the document, whatever the
    environment says (namespace, retry tiers, broker address)."""
    defaults = Settings.model_fields
    return Settings(
        namespace=defaults["namespace"].default,
        amqp_url=defaults["amqp_url"].default,
        retry_delays_ms=defaults["retry_delays_ms"].default,
    )


def brokers(settings: Settings) -> list[RabbitBroker]:
    """Each service's broker, with its subscribers and publishers declared (nothing connects)."""
    # Imported here: the api and the tracker serve this document and are among what it describes.
    from services.api.app import build_app as build_api
    from services.fetcher.app import build_app as build_fetcher
    from services.syncer.app import build_app as build_syncer
    from services.tracker.app import build_app as build_tracker

    found: list[RabbitBroker] = []
    for build in (build_api, build_fetcher, build_syncer, build_tracker):
        app = build(settings)
        found.append(app.broker if isinstance(app, FastStream) else app.state.runtime.broker)
    return found


def document(settings: Settings) -> dict[str, Any]:
    """The AsyncAPI 3.0 document, as JSON data."""
    specification = AsyncAPI(
        *brokers(settings), title=TITLE, version=str(SCHEMA_VERSION), description=DESCRIPTION
    )
    data: dict[str, Any] = json.loads(specification.to_specification().to_json())
    return data


class Served:
    """The document one serving process answers with: generated on the first request, in a
    thread (it builds every service's app, a few hundred milliseconds), then kept."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._data: dict[str, Any] | None = None

    async def get(self) -> dict[str, Any]:
        if self._data is None:
            self._data = await asyncio.to_thread(document, self._settings)
        return self._data


def render(data: dict[str, Any]) -> str:
    """The committed form: indented, keys sorted (FastStream's order of channels follows how its
    publishers hash, which may differ between processes), one trailing newline."""
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m services.asyncapi [PATH]``: write the document (default settings) to PATH, or
    print it."""
    args = sys.argv[1:] if argv is None else argv
    text = render(document(documented_settings()))
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
