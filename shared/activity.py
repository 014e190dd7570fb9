"""The append-only audit log, ``woo_sync_activity``."""

from __future__ import annotations

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
