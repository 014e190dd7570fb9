"""The append-only audit log, ``woo_sync_activity``: its writer, and who wrote a row.

A row names its actor in ``details.by`` (``api`` with its ``api_key_id``, ``cli``, a migration);
the services' own rows name none, as each kind is written by one service: :data:`WRITERS` says
which, for the history's ``by`` (services.api.actions.history).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
from uuid import UUID

import asyncpg

from shared.db import OrgScope

Level = Literal["debug", "info", "warning", "error"]

INSERT_ACTIVITY = """
INSERT INTO woo_sync_activity (job_id, org_id, level, event, details)
VALUES ($1, $2, $3, $4, $5)
"""


async def record(
    conn: asyncpg.Connection | OrgScope,
    *,
    org_id: UUID,
    job_id: UUID | None,
    event: str,
    level: Level = "info",
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(INSERT_ACTIVITY, job_id, org_id, level, event, details or {})


# Events that do not say who wrote them, by prefix: the one service that writes each.
WRITERS: tuple[tuple[str, str], ...] = (
    ("fetch.", "fetcher"),
    ("job.completed", "tracker"),
    ("job.failed", "tracker"),
    ("job.stalled", "tracker"),
)


def who(event: str, details: Mapping[str, Any]) -> str | None:
    """Who did it: the row's own ``by``, else the service that writes such events, else None."""
    by = details.get("by")
    if isinstance(by, str):
        return by
    return next((writer for prefix, writer in WRITERS if event.startswith(prefix)), None)
