"""``woosync key create|list|revoke``: an org's API keys, from the operator's shell.

A new key is printed once and never again (only its SHA-256 is stored). Creating and revoking a
key is written to the activity log with actor ``cli``. Output is JSON, for scripts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar
from uuid import UUID

import asyncpg
import click

from shared import db
from shared.auth import KEY_NAME_MAX, UnknownOrg, create_key, list_keys, revoke_key
from shared.settings import Settings

T = TypeVar("T")


def _with_pool(work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    async def run() -> T:
        pool = await db.create_pool(
            Settings().admin_database_url, min_size=1, max_size=1, operator=True
        )
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(run())


@click.group()
def key() -> None:
    """API keys: create (shown once), list, revoke."""


@key.command("create")
@click.argument("org_id", type=click.UUID)
@click.option(
    "--name",
    default="default",
    show_default=True,
    type=click.STRING,
    help=f"What the key is for (1 to {KEY_NAME_MAX} characters).",
)
def create_command(org_id: UUID, name: str) -> None:
    """Create a key for ORG_ID; prints it once, with its id (store it now)."""
    if not 1 <= len(name) <= KEY_NAME_MAX:
        raise click.BadParameter(f"must be 1 to {KEY_NAME_MAX} characters", param_hint="--name")
    try:
        info, secret = _with_pool(lambda pool: create_key(pool, org_id, name))
    except UnknownOrg:
        click.echo(f"error: no org {org_id}", err=True)
        sys.exit(1)
    click.echo(json.dumps(info.as_json() | {"api_key": secret}))


@key.command("list")
@click.option("--org", "org_id", type=click.UUID, help="Only this org's keys.")
def list_command(org_id: UUID | None) -> None:
    """One JSON line per key: id, org, name, prefix, created, last used, revoked (never the key)."""
    for info in _with_pool(lambda pool: list_keys(pool, org_id)):
        click.echo(json.dumps(info.as_json()))


@key.command("revoke")
@click.argument("key_id", type=click.UUID)
def revoke_command(key_id: UUID) -> None:
    """Revoke KEY_ID at once; its next request is refused. Repeating it is harmless."""
    info = _with_pool(lambda pool: revoke_key(pool, key_id))
    if info is None:
        click.echo(f"error: no key {key_id}", err=True)
        sys.exit(1)
    click.echo(json.dumps(info.as_json()))
