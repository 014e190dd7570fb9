"""The preview's comparison (shared.preview): each category decided as the syncer's upsert would,
and a field-level diff that shows exactly what differs."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from uuid import uuid4

from shared.mapping import map_customer
from shared.preview import DIFF_COLUMNS, STORED_COLUMNS, add_deleted, compare
from tests.factories import small_customer

ORG, CONNECTION = uuid4(), uuid4()


def stored(customer: dict[str, Any]) -> dict[str, Any]:
    """The row the syncer stores for ``customer``, as the preview reads it."""
    row = map_customer(customer, org_id=ORG, connection_id=CONNECTION)
    values = asdict(row)
    return {column: values[column] for column in STORED_COLUMNS}


def run(store: list[dict[str, Any]], rows: list[dict[str, Any]], sample_size: int = 5, **kw: Any):
    return compare(
        store,
        {r["woo_id"]: r for r in rows},
        org_id=ORG,
        connection_id=CONNECTION,
        sample_size=sample_size,
        **kw,
    )


def test_each_category_is_counted_with_its_diff() -> None:
    same = small_customer(1)
    renamed_before = small_customer(2, date_modified_gmt="2024-06-01T00:00:00")
    renamed = {**renamed_before, "first_name": "Renamed"} | {
        "date_modified_gmt": "2024-07-01T00:00:00"
    }
    older_before = small_customer(3, date_modified_gmt="2024-06-01T00:00:00")
    older = {**older_before, "last_name": "Older", "date_modified_gmt": "2024-05-15T00:00:00"}
    new = small_customer(4)
    broken = small_customer(5, email="not an address")
    result = run(
        [new, older, renamed, same, broken],
        [stored(same), stored(renamed_before), stored(older_before)],
        rejected=["customer has no id: {}"],
    )

    assert result.counts == {
        "create": 1, "update": 1, "unchanged": 1, "delete": 0, "conflict": 1, "invalid": 2,
    }  # fmt: skip
    (update,) = result.samples["update"]
    assert update.woo_id == 2
    assert update.diff == {
        "first_name": {"store": "Renamed", "mantis": "First2"},
        "woo_date_modified": {
            "store": "2024-07-01T00:00:00+00:00",
            "mantis": "2024-06-01T00:00:00+00:00",
        },
    }
    (conflict,) = result.samples["conflict"]
    assert conflict.woo_id == 3
    assert conflict.diff["last_name"] == {"store": "Older", "mantis": "Last"}
    assert "older than the stored one" in (conflict.reason or "")
    (create,) = result.samples["create"]
    assert create.woo_id == 4
    assert set(create.diff) == set(DIFF_COLUMNS)
    assert create.diff["email"] == {"store": "customer4@example.com", "mantis": None}
    assert [s.woo_id for s in result.samples["unchanged"]] == [1]
    assert result.samples["unchanged"][0].diff == {}
    reasons = {s.woo_id: s.reason for s in result.samples["invalid"]}
    assert reasons[None] == "customer has no id: {}"
    assert "email is not an address" in (reasons[5] or "")


def test_a_store_field_no_column_holds_shows_as_raw() -> None:
    before = small_customer(7, orders_count=1)
    after = {**before, "orders_count": 2}
    result = run([after], [stored(before)])
    assert result.counts["update"] == 1
    assert result.samples["update"][0].diff == {"raw.orders_count": {"store": 2, "mantis": 1}}


def test_a_row_without_a_modified_date_takes_any_version() -> None:
    before = small_customer(8)  # never modified
    after = {**before, "first_name": "Changed"}
    assert run([after], [stored(before)]).counts["update"] == 1


def test_samples_are_bounded_but_counts_are_not() -> None:
    store = [small_customer(n) for n in range(1, 21)]
    result = run(store, [], sample_size=3)
    assert result.counts["create"] == 20
    assert [s.woo_id for s in result.samples["create"]] == [1, 2, 3]
    assert run(store, [], sample_size=0).samples["create"] == []


def test_deleted_rows_are_shown_with_the_stored_values() -> None:
    gone = [stored(small_customer(n)) for n in (10, 11, 12)]
    result = run([], [], sample_size=2)
    add_deleted(result, 3, gone)
    assert result.counts["delete"] == 3
    assert [s.woo_id for s in result.samples["delete"]] == [10, 11]
    assert result.samples["delete"][0].diff["email"] == {
        "store": None,
        "mantis": "customer10@example.com",
    }


def test_a_store_without_a_connection_is_all_creates() -> None:
    result = compare(
        [small_customer(1), small_customer(2)], {}, org_id=ORG, connection_id=None, sample_size=1
    )
    assert result.counts["create"] == 2 and result.counts["unchanged"] == 0
