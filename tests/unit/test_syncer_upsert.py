"""The syncer's customer upsert is composed from one tuple of arrays: its parameters, the
``unnest`` that reads them, the columns it writes and the arguments the handler builds agree."""

from __future__ import annotations

import dataclasses
import re
from uuid import uuid4

import pytest

from services.syncer import queries as q
from services.syncer.handlers import upsert_arguments
from shared.mapping import CUSTOMER_COLUMNS, CustomerRow, map_customer

SQL = q.UPSERT_CUSTOMERS


def _list_after(opening: str) -> list[str]:
    """The comma-separated items of the parenthesised list that follows ``opening``."""
    match = re.search(re.escape(opening) + r"\s*\(([^()]*)\)", SQL)
    assert match, opening
    return [item.strip() for item in match.group(1).split(",")]


def test_unnest_reads_one_typed_array_per_field_in_the_tuples_order() -> None:
    arrays = _list_after("FROM unnest")
    assert arrays == [f"${n}::{kind}[]" for n, (_, kind) in enumerate(q.UPSERT_ARRAYS, start=3)]
    assert _list_after(") AS u") == [name for name, _ in q.UPSERT_ARRAYS]


def test_the_arrays_are_fields_of_the_mapped_row() -> None:
    fields = {f.name for f in dataclasses.fields(CustomerRow)}
    assert {name for name, _ in q.UPSERT_ARRAYS} <= fields
    assert len({name for name, _ in q.UPSERT_ARRAYS}) == len(q.UPSERT_ARRAYS)


def test_it_writes_exactly_the_customer_columns_and_updates_all_but_the_key() -> None:
    assert _list_after("INSERT INTO customer AS c") == list(CUSTOMER_COLUMNS)
    updates = re.search(r"DO UPDATE SET(.*?)\n\s*WHERE", SQL, re.S)
    assert updates
    assigned = [part.split("=")[0].strip() for part in updates.group(1).split(",")]
    key = ("org_id", "connection_id", "woo_id")
    assert assigned == [c for c in CUSTOMER_COLUMNS if c not in key] + ["updated_at", "synced_at"]


def test_json_columns_come_from_the_clean_document_and_raw_from_the_text_sent() -> None:
    # NUL characters: billing, shipping and meta_data without them, raw with them escaped.
    assert "COALESCE(u.clean_json, u.raw_json)::jsonb AS doc" in SQL
    for column in ("billing", "shipping", "meta_data"):
        assert f"r.doc -> '{column}'" in SQL
    # raw is the text sent: ``doc`` itself when there is no clean text, else parsed apart.
    assert "CASE WHEN r.clean_json IS NULL THEN r.doc ELSE r.raw_json::jsonb END" in SQL


def test_an_older_payload_never_overwrites_and_is_reported_stale() -> None:
    assert (
        "WHERE c.source_hash IS DISTINCT FROM EXCLUDED.source_hash\n"
        "      AND (c.woo_date_modified IS NULL OR EXCLUDED.woo_date_modified >= "
        "c.woo_date_modified)"
    ) in SQL
    assert "(i.woo_date_modified IS NULL OR i.woo_date_modified < c.woo_date_modified)" in SQL


def test_the_handler_passes_one_argument_per_placeholder_in_order() -> None:
    org_id, connection_id = uuid4(), uuid4()
    raws = [
        {"id": 7, "email": "a@example.com", "first_name": "A\x00"},
        {"id": 8, "email": "b@example.com", "date_modified_gmt": "2024-05-01T07:00:00"},
    ]
    rows = [map_customer(r, org_id=org_id, connection_id=connection_id) for r in raws]
    arguments = upsert_arguments(rows)
    placeholders = {int(n) for n in re.findall(r"\$(\d+)", SQL)}
    assert placeholders == set(range(1, len(arguments) + 1))
    assert arguments[:2] == [org_id, connection_id]
    for (name, _), values in zip(q.UPSERT_ARRAYS, arguments[2:], strict=True):
        assert values == [getattr(row, name) for row in rows], name
    assert arguments[2 + [n for n, _ in q.UPSERT_ARRAYS].index("clean_json")][0] is not None


def test_rows_of_two_orgs_are_refused() -> None:
    rows = [
        map_customer({"id": i, "email": "a@example.com"}, org_id=uuid4(), connection_id=uuid4())
        for i in (1, 2)
    ]
    with pytest.raises(ValueError, match="one org"):
        upsert_arguments(rows)
