"""Key rotation of stored store secrets: ``rotate_secrets`` and ``woosync secrets rotate``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from uuid import UUID, uuid4

import asyncpg

from shared.auth import create_org
from shared.crypto import SecretBox
from woosync.secrets import rotate_secrets

OLD, NEW, LOST = "old-secret-key", "new-secret-key", "a-key-nobody-has-any-more"

INSERT_CONNECTIONS = """
INSERT INTO woo_connections (id, org_id, store_url, auth_mode, consumer_key, consumer_secret_enc)
SELECT id, $1, 'https://store-' || n || '.example', 'basic', 'ck_' || n, secret_enc
FROM unnest($2::uuid[], $3::bytea[]) WITH ORDINALITY AS r (id, secret_enc, n)
"""


def secret_of(n: int) -> str:
    return f"cs_{n:040x}"


async def add_connections(pool: asyncpg.Pool, key: str, numbers: range) -> list[UUID]:
    org_id, _ = await create_org(pool, f"org-{numbers.start}")
    ids = [uuid4() for _ in numbers]
    box = SecretBox(key)
    tokens = [box.encrypt(secret_of(n)) for n in numbers]
    await pool.execute(INSERT_CONNECTIONS, org_id, ids, tokens)
    return ids


async def stored(pool: asyncpg.Pool) -> dict[UUID, bytes]:
    rows = await pool.fetch("SELECT id, consumer_secret_enc FROM woo_connections")
    return {r["id"]: r["consumer_secret_enc"] for r in rows}


async def test_rotation_re_encrypts_old_rows_in_batches_and_is_idempotent(
    pool: asyncpg.Pool,
) -> None:
    old_ids = await add_connections(pool, OLD, range(0, 1200))
    current_ids = await add_connections(pool, NEW, range(1200, 1210))
    lost_ids = await add_connections(pool, LOST, range(1210, 1213))
    before = await stored(pool)
    box = SecretBox(NEW, previous=[OLD])

    async with pool.acquire() as conn:
        report = await rotate_secrets(conn, box, batch_size=500)
    assert (report.checked, report.rotated, report.current) == (1213, 1200, 10)
    assert sorted(report.undecryptable) == sorted(lost_ids)

    after = await stored(pool)
    new_only = SecretBox(NEW)
    plaintexts = {row_id: new_only.decrypt(after[row_id]) for row_id in old_ids}
    assert sorted(plaintexts.values()) == sorted(secret_of(n) for n in range(1200))
    for row_id in current_ids + lost_ids:
        assert after[row_id] == before[row_id], "rows with nothing to do must stay untouched"

    async with pool.acquire() as conn:
        again = await rotate_secrets(conn, box, batch_size=500)
    assert (again.checked, again.rotated, again.current) == (1213, 0, 1210)
    assert await stored(pool) == after


async def test_dry_run_writes_nothing(pool: asyncpg.Pool) -> None:
    await add_connections(pool, OLD, range(5))
    before = await stored(pool)
    async with pool.acquire() as conn:
        report = await rotate_secrets(conn, SecretBox(NEW, [OLD]), dry_run=True)
    assert (report.checked, report.rotated) == (5, 5)
    assert await stored(pool) == before


async def test_a_failure_midway_leaves_every_row_as_it_was(pool: asyncpg.Pool) -> None:
    await add_connections(pool, OLD, range(30))
    before = await stored(pool)

    class FailingBox(SecretBox):
        calls = 0

        def rotate(self, token: bytes) -> bytes:
            FailingBox.calls += 1
            if FailingBox.calls > 25:
                raise RuntimeError("simulated crash")
            return super().rotate(token)

    async with pool.acquire() as conn:
        try:
            await rotate_secrets(conn, FailingBox(NEW, [OLD]), batch_size=10)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the crash did not happen")
    assert await stored(pool) == before


def run_rotate(
    database_url: str, *args: str, previous: list[str]
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "WOOSYNC_ADMIN_DATABASE_URL": database_url,
        "WOOSYNC_SECRET_KEY": NEW,
        "WOOSYNC_SECRET_KEY_PREVIOUS": json.dumps(previous),
    }
    return subprocess.run(
        [sys.executable, "-m", "woosync.cli", "secrets", "rotate", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )


async def test_command_prints_counts_and_never_a_secret(
    database_url: str, pool: asyncpg.Pool
) -> None:
    await add_connections(pool, OLD, range(3))
    await add_connections(pool, NEW, range(3, 4))

    dry = run_rotate(database_url, "--dry-run", previous=[OLD])
    assert dry.returncode == 0, dry.stderr
    assert "would re-encrypt 3, already current 1, undecryptable 0" in dry.stdout

    done = run_rotate(database_url, "--batch-size", "2", previous=[OLD])
    assert done.returncode == 0, done.stderr
    assert "checked 4 connections: re-encrypted 3, already current 1" in done.stdout
    again = run_rotate(database_url, previous=[])  # the old key is no longer needed
    assert again.returncode == 0, again.stderr
    assert "re-encrypted 0, already current 4, undecryptable 0" in again.stdout

    for output in (dry, done, again):
        text = output.stdout + output.stderr
        assert not any(secret_of(n) in text for n in range(4))
        assert OLD not in text and NEW not in text


async def test_command_lists_undecryptable_rows_and_fails(
    database_url: str, pool: asyncpg.Pool
) -> None:
    await add_connections(pool, OLD, range(2))
    (lost,) = await add_connections(pool, LOST, range(2, 3))
    before = await stored(pool)

    result = run_rotate(database_url, previous=[OLD])
    assert result.returncode == 1
    assert "re-encrypted 2, already current 0, undecryptable 1" in result.stdout
    assert f"connection {lost}: no configured key decrypts its secret" in result.stderr
    after = await stored(pool)
    assert after[lost] == before[lost]
    rotated = [token for row_id, token in after.items() if row_id != lost]
    plaintexts = sorted(SecretBox(NEW).decrypt(token) for token in rotated)
    assert plaintexts == [secret_of(0), secret_of(1)]
