"""The conflict decision (shared.conflicts): what each policy does with and without a conflict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.conflicts import (
    ConflictPolicy,
    Outcome,
    StoredVersion,
    decide,
    field_diff,
    is_conflict,
    store_changed,
    warning,
)

SYNCED = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
STORE_BEFORE = datetime(2026, 10, 30, tzinfo=UTC)  # the store version last synced
EDITED = SYNCED + timedelta(hours=2)  # MantisNXT's edit after the sync


def stored(*, edited: datetime | None = EDITED, modified: datetime | None = STORE_BEFORE):
    return StoredVersion(
        source_hash="old", woo_date_modified=modified, synced_at=SYNCED, mantis_updated_at=edited
    )


# A store change made before MantisNXT's edit, and one made after it.
EARLIER_STORE = EDITED - timedelta(minutes=30)
LATER_STORE = EDITED + timedelta(minutes=30)

CONFLICT_OUTCOMES = {
    ConflictPolicy.WOO_WINS: (Outcome.TAKE_WOO, Outcome.TAKE_WOO),
    ConflictPolicy.MANTIS_WINS: (Outcome.KEEP_MANTIS, Outcome.KEEP_MANTIS),
    ConflictPolicy.NEWEST_WINS: (Outcome.KEEP_MANTIS, Outcome.TAKE_WOO),
    ConflictPolicy.MANUAL: (Outcome.WAIT, Outcome.WAIT),
}


@pytest.mark.parametrize("policy", list(ConflictPolicy))
def test_each_policy_decides_a_conflict(policy: ConflictPolicy) -> None:
    earlier, later = CONFLICT_OUTCOMES[policy]
    assert decide(policy, stored(), "new", EARLIER_STORE) == earlier
    assert decide(policy, stored(), "new", LATER_STORE) == later


@pytest.mark.parametrize("policy", list(ConflictPolicy))
def test_without_a_conflict_every_policy_writes(policy: ConflictPolicy) -> None:
    # No row yet; a row not edited in MantisNXT; edited but the store sent the same version; or
    # edited before the last sync (already settled).
    assert decide(policy, None, "new", LATER_STORE) == Outcome.WRITE
    assert decide(policy, stored(edited=None), "new", LATER_STORE) == Outcome.WRITE
    assert decide(policy, stored(), "old", LATER_STORE) == Outcome.WRITE
    before_sync = SYNCED - timedelta(minutes=1)
    assert decide(policy, stored(edited=before_sync), "new", LATER_STORE) == Outcome.WRITE


def test_a_stale_store_version_is_no_conflict() -> None:
    # Older than the stored store version: the upsert leaves it alone anyway.
    older = STORE_BEFORE - timedelta(days=1)
    assert not store_changed(stored(), "new", older)
    assert not store_changed(stored(), "new", None)
    assert not is_conflict(stored(), "new", older)
    # A stored row without a date takes anything.
    assert is_conflict(stored(modified=None), "new", None)
    assert is_conflict(stored(), "new", STORE_BEFORE)  # same date, other content


def test_newest_wins_counts_a_store_version_without_a_date_as_older_and_a_tie_for_mantis() -> None:
    row = stored(modified=None)
    assert decide(ConflictPolicy.NEWEST_WINS, row, "new", None) == Outcome.KEEP_MANTIS
    assert decide(ConflictPolicy.NEWEST_WINS, stored(), "new", EDITED) == Outcome.KEEP_MANTIS


def test_warnings_name_the_policy_and_the_edit() -> None:
    row = stored()
    took = warning(Outcome.TAKE_WOO, ConflictPolicy.WOO_WINS, row)
    kept = warning(Outcome.KEEP_MANTIS, ConflictPolicy.NEWEST_WINS, row)
    assert took is not None and "woo_wins" in took and EDITED.isoformat() in took
    assert kept is not None and "newest_wins" in kept and "skipped" in kept
    assert warning(Outcome.WAIT, ConflictPolicy.MANUAL, row) is None
    assert warning(Outcome.WRITE, ConflictPolicy.MANUAL, row) is None


def test_field_diff_lists_only_the_compared_fields_that_differ() -> None:
    woo = {"email": "a@x.test", "first_name": "Ann", "billing": {"city": "Paarl"}, "raw": 1}
    mantis = {"email": "a@x.test", "first_name": "Anna", "billing": {"city": "Paarl"}, "raw": 2}
    assert field_diff(woo, mantis) == [{"field": "first_name", "woo": "Ann", "mantis": "Anna"}]
