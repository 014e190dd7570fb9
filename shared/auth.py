"""API keys: who is calling, and for which org. Shared by the api, the tracker's SSE route and
the ``woosync key`` commands.

A key is 256 random bits (``wsk_`` + URL-safe base64), shown once when it is created and stored
only as its SHA-256 (plus its first characters, to recognise it in a list). Keys are found by
that hash through a unique index, so no secret is ever compared byte by byte in Python or SQL,
and every refusal (no header, a malformed one, an unknown or a revoked key) costs the same: one
hash and one indexed lookup that returns no row.

Creating and revoking a key is recorded in the activity log, with who did it. A key's
``last_used_at`` is exact to within a minute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from shared import activity
from shared.crypto import API_KEY_PREFIX, hash_api_key, new_api_key
from shared.db import for_org

# Before the org is known, so through the one security-definer function that may look across
# orgs (migration 0005): an unrevoked key's id and org. A read: the key's last-used time is
# refreshed in the same statement only when it is more than a minute old (migration 0024), so
# a key asked 200 times a second does not write its row 200 times a second.
AUTHENTICATE_KEY = "SELECT id, org_id FROM woosync_authenticate($1)"

INSERT_ORG = "INSERT INTO orgs (id, name) VALUES ($1, $2)"

# No row back means there is no such org.
INSERT_KEY = """
INSERT INTO api_keys (id, org_id, name, key_hash, key_prefix)
SELECT $1, id, $3, $4, $5 FROM orgs WHERE id = $2
RETURNING id, org_id, name, key_prefix, created_at, last_used_at, revoked_at
"""

SELECT_KEYS = """
SELECT id, org_id, name, key_prefix, created_at, last_used_at, revoked_at
FROM api_keys
WHERE $1::uuid IS NULL OR org_id = $1
ORDER BY org_id, created_at, id
"""

# Revoking twice keeps the first revocation time; the row tells whether this call revoked it.
REVOKE_KEY = """
WITH target AS (
    SELECT id, revoked_at IS NULL AS active FROM api_keys WHERE id = $1 FOR UPDATE
), revoked AS (
    UPDATE api_keys AS k SET revoked_at = now()
    FROM target
    WHERE k.id = target.id AND target.active
)
SELECT k.id, k.org_id, k.name, k.key_prefix, k.created_at, k.last_used_at,
       CASE WHEN target.active THEN now() ELSE k.revoked_at END AS revoked_at,
       target.active AS revoked_now
FROM api_keys AS k JOIN target ON target.id = k.id
"""

# The actor of commands run by an operator on the host (``woosync org create``, ``key ...``).
CLI_ACTOR: Mapping[str, str] = {"by": "cli"}

KEY_NAME_MAX = 200
PREFIX_LENGTH = 10  # "wsk_" and six characters of the random part


@dataclass(frozen=True)
class Caller:
    key_id: UUID
    org_id: UUID

    def actor(self) -> dict[str, str]:
        """Who did it, for activity rows."""
        return {"by": "api", "api_key_id": str(self.key_id)}


@dataclass(frozen=True)
class ApiKeyInfo:
    """Everything known about a key except the key itself, which is never stored."""

    id: UUID
    org_id: UUID
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ApiKeyInfo:
        return cls(
            id=row["id"],
            org_id=row["org_id"],
            name=row["name"],
            prefix=row["key_prefix"],
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
            revoked_at=row["revoked_at"],
        )

    def as_json(self) -> dict[str, Any]:
        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "key_id": str(self.id),
            "org_id": str(self.org_id),
            "name": self.name,
            "prefix": self.prefix,
            "created_at": when(self.created_at),
            "last_used_at": when(self.last_used_at),
            "revoked_at": when(self.revoked_at),
        }


class UnknownOrg(LookupError):
    pass


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(API_KEY_PREFIX):
        return None
    return token


async def authenticate(pool: asyncpg.Pool, authorization: str | None) -> Caller | None:
    """The caller behind an ``Authorization: Bearer`` header, or None for any kind of bad key."""
    token = bearer_token(authorization)
    # Hash and look up even when the header is unusable, so every refusal costs the same.
    row = await pool.fetchrow(AUTHENTICATE_KEY, hash_api_key(token or ""))
    if row is None or token is None:
        return None
    return Caller(key_id=row["id"], org_id=row["org_id"])


def _check_name(name: str) -> None:
    if not 1 <= len(name) <= KEY_NAME_MAX:
        raise ValueError(f"a key name must be 1 to {KEY_NAME_MAX} characters")


async def _insert_key(
    conn: asyncpg.Connection, org_id: UUID, name: str, actor: Mapping[str, str]
) -> tuple[ApiKeyInfo, str]:
    key = new_api_key()
    row = await conn.fetchrow(
        INSERT_KEY, uuid4(), org_id, name, hash_api_key(key), key[:PREFIX_LENGTH]
    )
    if row is None:
        raise UnknownOrg(f"no org {org_id}")
    info = ApiKeyInfo.from_row(row)
    await activity.record(
        conn,
        org_id=org_id,
        job_id=None,
        event="key.created",
        details={**actor, "key_id": str(info.id), "name": name, "prefix": info.prefix},
    )
    return info, key


async def create_org(
    pool: asyncpg.Pool, name: str, *, actor: Mapping[str, str] = CLI_ACTOR
) -> tuple[UUID, str]:
    """A new org and its first API key; the key is returned once and stored only as a hash."""
    org_id = uuid4()
    async with for_org(pool, org_id).transaction() as conn:
        await conn.execute(INSERT_ORG, org_id, name)
        _, key = await _insert_key(conn, org_id, "default", actor)
    return org_id, key


async def create_key(
    pool: asyncpg.Pool, org_id: UUID, name: str, *, actor: Mapping[str, str] = CLI_ACTOR
) -> tuple[ApiKeyInfo, str]:
    """Another key for an org (say one per client, to revoke separately); shown only here."""
    _check_name(name)
    async with for_org(pool, org_id).transaction() as conn:
        return await _insert_key(conn, org_id, name, actor)


async def list_keys(pool: asyncpg.Pool, org_id: UUID | None = None) -> list[ApiKeyInfo]:
    """The keys of one org, or of every org; revoked ones included (they say when).

    Listing every org's, like revoking a key by its id alone, is for the operator's CLI, which
    connects as the schema's owner; under the services' role these see nothing."""
    return [ApiKeyInfo.from_row(row) for row in await pool.fetch(SELECT_KEYS, org_id)]


async def revoke_key(
    pool: asyncpg.Pool, key_id: UUID, *, actor: Mapping[str, str] = CLI_ACTOR
) -> ApiKeyInfo | None:
    """Revoke a key at once (its next request is a 401); None if there is no such key.

    Revoking a revoked key changes nothing and records nothing.
    """
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(REVOKE_KEY, key_id)
        if row is None:
            return None
        info = ApiKeyInfo.from_row(row)
        if row["revoked_now"]:
            await activity.record(
                conn,
                org_id=info.org_id,
                job_id=None,
                event="key.revoked",
                level="warning",
                details={**actor, "key_id": str(info.id), "name": info.name},
            )
    return info
