"""``woosync connections list|show|update|delete``: store connections, from the operator's shell.

Operator commands over the schema owner's database (``WOOSYNC_ADMIN_DATABASE_URL``), like
``woosync key`` and ``woosync dlq``: an operator acts for any org and holds no org's API key.
(An org's own users have the api's routes, with their key.) They run the api's own functions
(``services.api.actions.connections``), so the rules are the same: the store tests new
credentials before they are stored, a connection with an open job is not deleted, every change
is in the activity log with actor ``cli``, and no output carries a secret. The new secret is
read from standard input (or a hidden prompt), never from the command line. Output is JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar
from uuid import UUID

import asyncpg
import click
from pydantic import SecretStr, ValidationError

from services.api.actions import connections as actions
from services.api.errors import ApiError, describe_validation_error
from services.api.schemas import ConnectionUpdate
from services.api.store_probe import StoreChecks, StoreClientFactory, store_client_factory
from shared import db
from shared.crypto import SecretBox
from shared.settings import Settings

T = TypeVar("T")
ACTOR = {"by": "cli"}
ORG_OF_CONNECTION = "SELECT org_id FROM woo_connections WHERE id = $1"
ORGS = "SELECT id FROM orgs ORDER BY created_at, id"


@dataclass(frozen=True)
class OperatorDeps:
    """What the connection actions need, over the owner's pool (``actions.ConnectionDeps``)."""

    settings: Settings
    pool: asyncpg.Pool
    secrets: SecretBox
    store_client: StoreClientFactory
    store_checks: StoreChecks = field(init=False)

    def __post_init__(self) -> None:
        checks = StoreChecks(1, 1)  # one command tests one store
        object.__setattr__(self, "store_checks", checks)


def _run(work: Callable[[OperatorDeps], Awaitable[T]]) -> T:
    async def run() -> T:
        settings = Settings()
        pool = await db.create_pool(
            settings.admin_database_url, min_size=1, max_size=1, operator=True
        )
        try:
            deps = OperatorDeps(
                settings, pool, SecretBox.from_settings(settings), store_client_factory(settings)
            )
            return await work(deps)
        finally:
            await pool.close()

    try:
        return asyncio.run(run())
    except ApiError as exc:
        click.echo(f"error: {exc.code}: {exc.message}", err=True)
        sys.exit(1)


async def _org_of(deps: OperatorDeps, connection_id: UUID) -> UUID:
    org_id: UUID | None = await deps.pool.fetchval(ORG_OF_CONNECTION, connection_id)
    if org_id is None:
        raise actions.connection_not_found()
    return org_id


@click.group()
def connections() -> None:
    """Store connections: list, show, update credentials, delete."""


@connections.command("list")
@click.option("--org", "org_id", type=click.UUID, help="Only this org's connections.")
def list_command(org_id: UUID | None) -> None:
    """One JSON line per connection (with its org): never its secret."""

    async def work(deps: OperatorDeps) -> list[str]:
        orgs = [org_id] if org_id else [r["id"] for r in await deps.pool.fetch(ORGS)]
        lines: list[str] = []
        for org in orgs:
            cursor: str | None = None
            while True:
                page = await actions.list_connections(
                    org, deps, limit=actions.MAX_PAGE_SIZE, cursor=cursor
                )
                for found in page.connections:
                    lines.append(json.dumps({"org_id": str(org), **found.model_dump(mode="json")}))
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        return lines

    for line in _run(work):
        click.echo(line)


@connections.command("show")
@click.argument("connection_id", type=click.UUID)
def show_command(connection_id: UUID) -> None:
    """CONNECTION_ID as JSON: its store, auth, key ending, customers, jobs (never its secret)."""

    async def work(deps: OperatorDeps) -> str:
        org = await _org_of(deps, connection_id)
        found = await actions.show_connection(org, deps, connection_id)
        return json.dumps({"org_id": str(org), **found.model_dump(mode="json")})

    click.echo(_run(work))


@connections.command("update")
@click.argument("connection_id", type=click.UUID)
@click.option("--consumer-key", required=True, help="The new consumer key (ck_...).")
@click.option("--auth", type=click.Choice(["basic", "query", "oauth1"]), help="Default: kept.")
@click.option("--verify-tls/--no-verify-tls", default=None, help="Default: kept.")
@click.option(
    "--secret-stdin",
    is_flag=True,
    help="Read the consumer secret from standard input (else a hidden prompt).",
)
def update_command(
    connection_id: UUID,
    consumer_key: str,
    auth: Literal["basic", "query", "oauth1"] | None,
    verify_tls: bool | None,
    secret_stdin: bool,
) -> None:
    """New credentials for CONNECTION_ID, tested against its store before they are stored."""
    if secret_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
    else:
        secret = click.prompt("consumer secret", hide_input=True)
    try:
        update = ConnectionUpdate(
            consumer_key=consumer_key,
            consumer_secret=SecretStr(secret),
            auth=auth,
            verify_tls=verify_tls,
        )
    except ValidationError as exc:
        click.echo(f"error: {describe_validation_error(exc)}", err=True)
        sys.exit(2)

    async def work(deps: OperatorDeps) -> str:
        org = await _org_of(deps, connection_id)
        updated = await actions.update_credentials(org, ACTOR, deps, connection_id, update)
        return json.dumps({"org_id": str(org), **updated.model_dump(mode="json")})

    click.echo(_run(work))


@connections.command("delete")
@click.argument("connection_id", type=click.UUID)
@click.option(
    "--with-customers", is_flag=True, help="Remove its customers too (else they stay, detached)."
)
def delete_command(connection_id: UUID, with_customers: bool) -> None:
    """Delete CONNECTION_ID and its finished jobs; refused while one of its jobs is open."""

    async def work(deps: OperatorDeps) -> str:
        org = await _org_of(deps, connection_id)
        deleted = await actions.delete_connection(
            org, ACTOR, deps, connection_id, with_customers=with_customers
        )
        return json.dumps({"org_id": str(org), **deleted.model_dump(mode="json")})

    click.echo(_run(work))
