"""Conflicts between MantisNXT and a store: when there is one, and who wins it.

A customer row edited in MantisNXT since its last sync (``customer.mantis_updated_at`` after
``synced_at``; migration 0017's trigger stamps every change not made by woosync) is a conflict
when the store has changed the customer too: the incoming version is not the one last synced
(another ``source_hash``) and not older than it (an older payload is stale and left alone
anyway). :func:`is_conflict` says so for one stored row and one incoming version; it is pure, so
the syncer, the api and a preview all ask it the same question.

The policy (the job's, else its connection's; default ``woo_wins``) then decides
(:func:`decide`):

========== ==============================================================================
woo_wins   the store's version is written, as before conflicts existed (the line's warning
           says MantisNXT's edit was overwritten)
mantis_wins MantisNXT's row is kept; the store's version is recorded as seen (source_hash,
           woo_date_modified, raw and synced_at move on, the other columns stay), so the next
           sync of the same store version is no conflict again
newest_wins the newer of the store's ``date_modified_gmt`` and ``mantis_updated_at`` wins (a
           store version without a date is older); a tie keeps MantisNXT's
manual     nothing is written; the line waits as ``conflict`` with both versions until the
           api's ``resolve-conflicts`` takes one of them
========== ==============================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from shared.mapping import CustomerRow


class ConflictPolicy(StrEnum):
    WOO_WINS = "woo_wins"
    MANTIS_WINS = "mantis_wins"
    NEWEST_WINS = "newest_wins"
    MANUAL = "manual"


DEFAULT_POLICY = ConflictPolicy.WOO_WINS

# As a pydantic field (a plain string enum in JSON schemas).
ConflictPolicyField = Literal[
    ConflictPolicy.WOO_WINS,
    ConflictPolicy.MANTIS_WINS,
    ConflictPolicy.NEWEST_WINS,
    ConflictPolicy.MANUAL,
]


class Outcome(StrEnum):
    """What happens to one incoming customer."""

    WRITE = "write"  # no conflict: the upsert as always
    TAKE_WOO = "take_woo"  # a conflict the store's version wins: written, with a warning
    KEEP_MANTIS = "keep_mantis"  # a conflict MantisNXT's row wins: the store version is seen
    WAIT = "wait"  # a conflict left to a person: the line waits as ``conflict``


@dataclass(frozen=True)
class StoredVersion:
    """What decides a conflict about a stored customer row."""

    source_hash: str
    woo_date_modified: datetime | None
    synced_at: datetime
    mantis_updated_at: datetime | None

    @property
    def edited_in_mantis(self) -> bool:
        """Changed by something other than woosync since its last sync."""
        return self.mantis_updated_at is not None and self.mantis_updated_at > self.synced_at


def store_changed(
    stored: StoredVersion, incoming_hash: str, incoming_modified: datetime | None
) -> bool:
    """The incoming version is another one than last synced, and not older (what the syncer's
    upsert would write: ``services/syncer/queries.py``)."""
    if incoming_hash == stored.source_hash:
        return False
    if stored.woo_date_modified is None:
        return True
    return incoming_modified is not None and incoming_modified >= stored.woo_date_modified


def is_conflict(
    stored: StoredVersion | None, incoming_hash: str, incoming_modified: datetime | None
) -> bool:
    """Whether a stored row (None: none yet) and an incoming store version are a conflict."""
    return (
        stored is not None
        and stored.edited_in_mantis
        and store_changed(stored, incoming_hash, incoming_modified)
    )


def decide(
    policy: ConflictPolicy,
    stored: StoredVersion | None,
    incoming_hash: str,
    incoming_modified: datetime | None,
) -> Outcome:
    """What ``policy`` does with an incoming version of a customer stored as ``stored``."""
    if not is_conflict(stored, incoming_hash, incoming_modified):
        return Outcome.WRITE
    assert stored is not None and stored.mantis_updated_at is not None  # is_conflict says so
    if policy == ConflictPolicy.WOO_WINS:
        return Outcome.TAKE_WOO
    if policy == ConflictPolicy.MANTIS_WINS:
        return Outcome.KEEP_MANTIS
    if policy == ConflictPolicy.NEWEST_WINS:
        newer = incoming_modified is not None and incoming_modified > stored.mantis_updated_at
        return Outcome.TAKE_WOO if newer else Outcome.KEEP_MANTIS
    return Outcome.WAIT


def warning(outcome: Outcome, policy: ConflictPolicy, stored: StoredVersion) -> str | None:
    """The done line's note about a conflict a policy settled (None: no conflict, or waiting)."""
    edited = stored.mantis_updated_at.isoformat() if stored.mantis_updated_at else "?"
    if outcome == Outcome.TAKE_WOO:
        return f"conflict ({policy}): the store's version overwrote MantisNXT's edit of {edited}"
    if outcome == Outcome.KEEP_MANTIS:
        return (
            f"conflict ({policy}): kept MantisNXT's edit of {edited}; "
            "the store's changes were skipped"
        )
    return None


# woosync's own writes to customer in this transaction: migration 0017's trigger does not stamp
# them as MantisNXT edits (customer.mantis_updated_at).
MARK_WOOSYNC_WRITER = "SELECT set_config('woosync.writer', 'syncer', true)"

# $1 org_id, $2 connection_id, then woo_id, source_hash, woo_date_modified and raw JSON text
# arrays. MantisNXT's row wins a conflict: its columns stay, and the store's version is recorded
# as seen (synced_at moves on), so the same store version is no conflict at the next sync.
KEEP_MANTIS_VERSIONS = """
UPDATE customer AS c
SET source_hash = r.source_hash,
    woo_date_modified = r.woo_date_modified,
    raw = r.raw_json::jsonb,
    synced_at = now()
FROM unnest($3::bigint[], $4::text[], $5::timestamptz[], $6::text[])
     AS r(woo_id, source_hash, woo_date_modified, raw_json)
WHERE c.org_id = $1 AND c.connection_id = $2 AND c.woo_id = r.woo_id
"""


def keep_arguments(rows: Sequence[CustomerRow]) -> list[list[Any]]:
    """KEEP_MANTIS_VERSIONS' arrays after the org and connection: the store versions seen."""
    return [
        [row.woo_id for row in rows],
        [row.source_hash for row in rows],
        [row.woo_date_modified for row in rows],
        [row.raw_json for row in rows],
    ]


# The customer fields a person compares (the columns shared.mapping fills from the store).
COMPARED_FIELDS: tuple[str, ...] = (
    "email",
    "first_name",
    "last_name",
    "username",
    "role",
    "company",
    "phone",
    "billing",
    "shipping",
    "is_paying_customer",
    "avatar_url",
)


def field_diff(woo: dict[str, Any], mantis: dict[str, Any]) -> list[dict[str, Any]]:
    """The compared fields whose values differ: ``[{"field", "woo", "mantis"}]``. ``woo`` is the
    store's version mapped like the syncer maps it, ``mantis`` the row as it was stored."""
    return [
        {"field": name, "woo": woo.get(name), "mantis": mantis.get(name)}
        for name in COMPARED_FIELDS
        if woo.get(name) != mantis.get(name)
    ]
