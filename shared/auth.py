"""API keys: who is calling, and for which org. Shared by the api and the tracker's SSE route."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg

from shared.crypto import API_KEY_PREFIX, hash_api_key, new_api_key

# A valid, unrevoked key also gets its last-used time refreshed, in the same round trip.
AUTHENTICATE_KEY = """
UPDATE api_keys SET last_used_at = now()
WHERE key_hash = $1 AND revoked_at IS NULL
RETURNING id, org_id
"""

INSERT_ORG = "INSERT INTO orgs (id, name) VALUES ($1, $2)"
INSERT_KEY = """
INSERT INTO api_keys (id, org_id, name, key_hash, key_prefix) VALUES ($1, $2, $3, $4, $5)
"""


@dataclass(frozen=True)
class Caller:
    key_id: UUID
    org_id: UUID


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
    # Hash even when the header is unusable, so every refusal costs the same.
    row = await pool.fetchrow(AUTHENTICATE_KEY, hash_api_key(token or ""))
    if row is None or token is None:
        return None
    return Caller(key_id=row["id"], org_id=row["org_id"])


async def create_org(pool: asyncpg.Pool, name: str) -> tuple[UUID, str]:
    """A new org and its first API key; the key is returned once and stored only as a hash."""
    org_id, key = uuid4(), new_api_key()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(INSERT_ORG, org_id, name)
        await conn.execute(INSERT_KEY, uuid4(), org_id, "default", hash_api_key(key), key[:10])
    return org_id, key
