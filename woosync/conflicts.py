"""``woosync conflicts policy``: a store connection's conflict policy, from the operator's shell.

The policy decides what a sync does with a customer edited in MantisNXT and in the store since
its last sync (``shared.conflicts``); a start may override it for its own job (the start option
``conflict_policy``). Without POLICY the command prints the connection's policy; with one it sets
it and writes a ``connection.conflict_policy`` row to the activity log (actor ``cli``). Output is
JSON, for scripts; an unknown connection exits 1.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from uuid import UUID

import click

from shared import activity, db
from shared.conflicts import ConflictPolicy
from shared.settings import Settings

SELECT_CONNECTION = """
SELECT id, org_id, store_url, conflict_policy FROM woo_connections WHERE id = $1 FOR UPDATE
"""
SET_POLICY = "UPDATE woo_connections SET conflict_policy = $2, updated_at = now() WHERE id = $1"


async def set_policy(
    admin_url: str, connection_id: UUID, policy: ConflictPolicy | None
) -> dict[str, Any] | None:
    """The connection's policy after the change (None: no such connection)."""
    conn = await db.connect(admin_url, operator=True)
    try:
        async with conn.transaction():
            row = await conn.fetchrow(SELECT_CONNECTION, connection_id)
            if row is None:
                return None
            answer = {
                "connection_id": str(row["id"]),
                "org_id": str(row["org_id"]),
                "store_url": row["store_url"],
                "conflict_policy": row["conflict_policy"],
            }
            if policy is None or policy == row["conflict_policy"]:
                return answer
            await conn.execute(SET_POLICY, connection_id, policy.value)
            await activity.record(
                conn,
                org_id=row["org_id"],
                job_id=None,
                event="connection.conflict_policy",
                details={
                    "connection_id": str(connection_id),
                    "previous": row["conflict_policy"],
                    "conflict_policy": policy.value,
                    "by": "cli",
                },
            )
            return answer | {"conflict_policy": policy.value, "previous": row["conflict_policy"]}
    finally:
        await conn.close()


@click.group()
def conflicts() -> None:
    """Conflicts between MantisNXT and the stores: each connection's policy."""


@conflicts.command("policy")
@click.argument("connection_id", type=click.UUID)
@click.argument("policy", required=False, type=click.Choice([p.value for p in ConflictPolicy]))
def policy_command(connection_id: UUID, policy: str | None) -> None:
    """Print CONNECTION_ID's conflict policy, or set it to POLICY."""
    chosen = ConflictPolicy(policy) if policy else None
    answer = asyncio.run(set_policy(Settings().admin_database_url, connection_id, chosen))
    if answer is None:
        click.echo(f"error: no connection {connection_id}", err=True)
        sys.exit(1)
    click.echo(json.dumps(answer))
