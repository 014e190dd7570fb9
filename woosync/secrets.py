"""``woosync secrets rotate``: re-encrypt every stored store secret under the current key, and
every webhook secret (migration 0019) likewise.

Run it after every service has been restarted with the new ``WOOSYNC_SECRET_KEY`` and the old
one in ``WOOSYNC_SECRET_KEY_PREVIOUS`` (SECURITY.md, "Rotating the secret key"). Rows are read
in id order, a batch at a time, locked, and rewritten with one statement per batch, all in one
transaction: a crash changes nothing, and a second run finds nothing left to do. Only counts and
connection ids are printed, never a secret.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
import click

from shared import db
from shared.crypto import SecretBox, UndecryptableSecret
from shared.settings import Settings

# Locks what it reads, so a connection the api refreshes meanwhile is written after us, not lost.
SELECT_SECRETS_AFTER = """
SELECT id, consumer_secret_enc
FROM woo_connections
WHERE id > $1
ORDER BY id
LIMIT $2
FOR UPDATE
"""

UPDATE_SECRETS = """
UPDATE woo_connections AS c
SET consumer_secret_enc = r.secret_enc, updated_at = now()
FROM unnest($1::uuid[], $2::bytea[]) AS r (id, secret_enc)
WHERE c.id = r.id
"""

# The same for the secrets of registered webhooks (shared.webhooks).
SELECT_WEBHOOK_SECRETS_AFTER = """
SELECT id, secret_enc
FROM woo_webhook
WHERE id > $1
ORDER BY id
LIMIT $2
FOR UPDATE
"""

UPDATE_WEBHOOK_SECRETS = """
UPDATE woo_webhook AS w
SET secret_enc = r.secret_enc, updated_at = now()
FROM unnest($1::uuid[], $2::bytea[]) AS r (id, secret_enc)
WHERE w.id = r.id
"""

_BEFORE_EVERY_ID = UUID(int=0)


@dataclass
class RotationReport:
    checked: int = 0
    rotated: int = 0  # decrypted under a previous key, now under the current one
    current: int = 0  # already under the current key: left as they are
    undecryptable: list[UUID] = field(default_factory=list)  # no configured key opens them
    # The webhook secrets, counted apart (None until rotate_secrets has gone through them).
    webhooks: RotationReport | None = None


async def rotate_secrets(
    conn: asyncpg.Connection, box: SecretBox, *, batch_size: int = 500, dry_run: bool = False
) -> RotationReport:
    """Re-encrypt, under ``box``'s current key, every secret that another key encrypted.

    Rows no key decrypts are left untouched and listed. ``dry_run`` rolls everything back.
    """
    report = RotationReport(webhooks=RotationReport())
    transaction = conn.transaction()
    await transaction.start()
    try:
        await _rotate(
            conn,
            box,
            report,
            SELECT_SECRETS_AFTER,
            UPDATE_SECRETS,
            "consumer_secret_enc",
            batch_size,
        )
        assert report.webhooks is not None
        await _rotate(
            conn,
            box,
            report.webhooks,
            SELECT_WEBHOOK_SECRETS_AFTER,
            UPDATE_WEBHOOK_SECRETS,
            "secret_enc",
            batch_size,
        )
    except BaseException:
        await transaction.rollback()
        raise
    if dry_run:
        await transaction.rollback()
    else:
        await transaction.commit()
    return report


async def _rotate(
    conn: asyncpg.Connection,
    box: SecretBox,
    report: RotationReport,
    select: str,
    update: str,
    column: str,
    batch_size: int,
) -> None:
    after = _BEFORE_EVERY_ID
    while rows := await conn.fetch(select, after, batch_size):
        ids: list[UUID] = []
        tokens: list[bytes] = []
        for row in rows:
            token = row[column]
            if box.is_current(token):
                report.current += 1
                continue
            try:
                tokens.append(box.rotate(token))
            except UndecryptableSecret:
                report.undecryptable.append(row["id"])
                continue
            ids.append(row["id"])
        if ids:
            await conn.execute(update, ids, tokens)
        report.checked += len(rows)
        report.rotated += len(ids)
        after = rows[-1]["id"]


@click.group()
def secrets() -> None:
    """Store secrets encrypted at rest (see SECURITY.md)."""


@secrets.command()
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--dry-run", is_flag=True, help="Count what would change; write nothing.")
def rotate(batch_size: int, dry_run: bool) -> None:
    """Re-encrypt every store secret with WOOSYNC_SECRET_KEY.

    Secrets under a key in WOOSYNC_SECRET_KEY_PREVIOUS are re-encrypted; those no key decrypts
    are listed and left alone (exit code 1). Safe to repeat.
    """
    settings = Settings()

    async def run() -> RotationReport:
        conn = await db.connect(settings.admin_database_url, operator=True)
        try:
            return await rotate_secrets(
                conn, SecretBox.from_settings(settings), batch_size=batch_size, dry_run=dry_run
            )
        finally:
            await conn.close()

    report = asyncio.run(run())
    verb = "would re-encrypt" if dry_run else "re-encrypted"
    click.echo(
        f"checked {report.checked} connections: {verb} {report.rotated}, "
        f"already current {report.current}, undecryptable {len(report.undecryptable)}"
    )
    for connection_id in report.undecryptable:
        click.echo(
            f"connection {connection_id}: no configured key decrypts its secret; "
            "add the key that encrypted it to WOOSYNC_SECRET_KEY_PREVIOUS, "
            "or have its org start a sync with the store's credentials again",
            err=True,
        )
    hooks = report.webhooks
    if hooks is not None and hooks.checked:
        click.echo(
            f"checked {hooks.checked} webhook secrets: {verb} {hooks.rotated}, "
            f"already current {hooks.current}, undecryptable {len(hooks.undecryptable)}"
        )
        for webhook_id in hooks.undecryptable:
            click.echo(
                f"webhook {webhook_id}: no configured key decrypts its secret; its deliveries "
                "are refused until its connection's webhooks are disabled and enabled again",
                err=True,
            )
    if report.undecryptable or (hooks is not None and hooks.undecryptable):
        sys.exit(1)
