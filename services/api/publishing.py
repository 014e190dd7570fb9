"""Publishing from the api: confirmed, bounded in time, and a failure answered as 503."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from services.api.deps import Deps
from services.api.errors import ApiError
from shared.broker import publish
from shared.messages import Envelope

log = logging.getLogger("woosync.api.actions")

# A confirm that takes longer than this means the broker is not really there.
PUBLISH_TIMEOUT_S = 10.0


def broker_unavailable() -> ApiError:
    return ApiError(503, "broker_unavailable", "the message broker is unavailable; try again")


async def publish_all(
    deps: Deps,
    messages: Sequence[Envelope],
    *,
    timeout_s: float = PUBLISH_TIMEOUT_S,
    context: str = "publish",
) -> None:
    """Publish with confirms, or raise 503 ``broker_unavailable``; ``context`` names it in logs."""
    try:
        async with asyncio.timeout(timeout_s):
            for message in messages:
                await publish(deps.broker, deps.topology, message)
    except Exception as exc:  # any failure means the messages are not known to be queued
        log.warning("%s failed: %s", context, type(exc).__name__)
        raise broker_unavailable() from None
