"""The database accepts exactly the states of ``shared.lifecycle``: a state added to the enum
without its migration (the CHECK on the state column) fails here, not in production."""

from __future__ import annotations

import re

import asyncpg

from shared.lifecycle import JobState, LineState

# The CHECKs PostgreSQL named for the inline constraints of migration 0001; a migration adding
# a state drops and re-adds them under the same names.
CHECKS = {
    "woo_customer_sync_queue_state_check": JobState,
    "woo_customer_sync_queue_line_state_check": LineState,
}


async def test_the_state_checks_allow_exactly_the_lifecycle_states(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint"
        " WHERE conname = ANY($1::text[])",
        list(CHECKS),
    )
    found = {row["conname"]: set(re.findall(r"'(\w+)'", row["def"])) for row in rows}
    assert found == {name: {s.value for s in enum} for name, enum in CHECKS.items()}
