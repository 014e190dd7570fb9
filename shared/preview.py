"""What a sync would do to the stored customers, worked out without doing it: the preview's core.

A pure function over what the store sent and what ``customer`` holds, so each rule is tested
without a store or a database. It decides as the syncer's upsert does (services/syncer/queries.py):

- **create**: the store's customer has no row of this connection;
- **unchanged**: the row's ``source_hash`` equals the hash of the store's version (the syncer
  writes nothing for it);
- **conflict**: the versions differ but the store's is older than the stored one (its
  ``woo_date_modified`` is earlier, or missing while the row has one): the syncer keeps the stored
  version and leaves a "stale payload" warning, so the store's change would not be applied;
- **update**: the versions differ and the store's is not older: the row is rewritten;
- **invalid**: the item cannot become a row (no usable id, or a
  :class:`~shared.mapping.MappingError`): the sync fails that customer alone;
- **delete**: a row of the connection whose customer the store no longer has. Only the caller can
  tell (it needs the whole store, read and proven complete), so it passes those rows in.

A sample's diff is field by field, ``{field: {"store": value, "mantis": value}}``, over the
columns the mapping fills (``shared.mapping.CUSTOMER_COLUMNS`` but the key, ``raw`` and
``source_hash``), plus ``raw.<key>`` for the store's top-level fields that no column holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel

from shared.mapping import CUSTOMER_COLUMNS, CustomerRow, MappingError, map_customer

Category = Literal["create", "update", "unchanged", "delete", "conflict", "invalid"]
CATEGORIES: tuple[Category, ...] = (
    "create",
    "update",
    "unchanged",
    "delete",
    "conflict",
    "invalid",
)

# The columns a diff shows: what the mapping derives from the store's customer.
DIFF_COLUMNS: tuple[str, ...] = tuple(
    c
    for c in CUSTOMER_COLUMNS
    if c not in ("org_id", "connection_id", "woo_id", "raw", "source_hash")
)
# The columns read from ``customer`` to compare a row (services.api.queries reads these).
STORED_COLUMNS: tuple[str, ...] = ("woo_id", *DIFF_COLUMNS, "raw", "source_hash")
# The store's top-level fields that a column already shows (so not repeated as ``raw.<key>``).
MAPPED_KEYS = frozenset(
    {
        "id", "email", "first_name", "last_name", "username", "role", "billing", "shipping",
        "meta_data", "is_paying_customer", "avatar_url", "date_created", "date_created_gmt",
        "date_modified", "date_modified_gmt",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """One customer of a category: its id, what differs, and why when the category needs it."""

    woo_id: int | None
    diff: dict[str, dict[str, Any]]
    reason: str | None = None


@dataclass
class Comparison:
    """Counts per category and up to ``sample_size`` samples of each, in ascending id order."""

    sample_size: int
    counts: dict[Category, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    samples: dict[Category, list[Sample]] = field(
        default_factory=lambda: {c: [] for c in CATEGORIES}
    )

    def add(self, category: Category, make: Any) -> None:
        """Count one customer; ``make()`` builds its sample only while samples are wanted."""
        self.counts[category] += 1
        if len(self.samples[category]) < self.sample_size:
            self.samples[category].append(make())


def plain(value: Any) -> Any:
    """A value as JSON shows it (dates in ISO 8601)."""
    return value.isoformat() if isinstance(value, datetime) else value


def row_values(row: CustomerRow) -> dict[str, Any]:
    return {c: getattr(row, c) for c in DIFF_COLUMNS}


def field_diff(store: Mapping[str, Any] | None, mantis: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{column: {"store", "mantis"}}`` for each column whose values differ (None: no row)."""
    diff: dict[str, dict[str, Any]] = {}
    for column in DIFF_COLUMNS:
        ours = None if store is None else store.get(column)
        theirs = None if mantis is None else mantis.get(column)
        if store is None or mantis is None or ours != theirs:
            diff[column] = {"store": plain(ours), "mantis": plain(theirs)}
    return diff


def raw_diff(store_raw: Mapping[str, Any], mantis_raw: Mapping[str, Any]) -> dict[str, Any]:
    """The store's top-level fields no column holds, where they differ from the stored ``raw``."""
    keys = (set(store_raw) | set(mantis_raw)) - MAPPED_KEYS - {"_links"}
    return {
        f"raw.{key}": {"store": store_raw.get(key), "mantis": mantis_raw.get(key)}
        for key in sorted(keys)
        if store_raw.get(key) != mantis_raw.get(key)
    }


def is_stale(store: CustomerRow, stored: Mapping[str, Any]) -> bool:
    """The syncer's rule: a version modified before the stored one (or never, while the stored
    one was) is older and is not written."""
    kept = stored.get("woo_date_modified")
    if kept is None:
        return False
    return store.woo_date_modified is None or store.woo_date_modified < kept


def compare(
    store: Iterable[Mapping[str, Any]],
    stored: Mapping[int, Mapping[str, Any]],
    *,
    org_id: UUID,
    connection_id: UUID | None,
    sample_size: int,
    rejected: Iterable[str] = (),
) -> Comparison:
    """Sort the store's customers (ids usable, each once) into create / update / unchanged /
    conflict / invalid against ``stored`` (their rows by ``woo_id``, columns of
    :data:`STORED_COLUMNS`); ``rejected``: why each item without a usable id was refused.
    Rows the store no longer has are the caller's (see :func:`add_deleted`)."""
    result = Comparison(sample_size)
    for reason in rejected:
        result.add("invalid", lambda reason=reason: Sample(None, {}, reason))
    # A preview of a store without a connection compares with no row: the id is only a label.
    mapped_connection = connection_id or UUID(int=0)
    for customer in sorted(store, key=lambda c: c["id"]):
        woo_id = customer["id"]
        try:
            row = map_customer(customer, org_id=org_id, connection_id=mapped_connection)
        except MappingError as exc:
            result.add("invalid", lambda w=woo_id, e=exc: Sample(w, {}, e.message))
            continue
        existing = stored.get(woo_id)
        if existing is None:
            result.add("create", lambda r=row: Sample(r.woo_id, field_diff(row_values(r), None)))
        elif existing["source_hash"] == row.source_hash:
            result.add("unchanged", lambda r=row: Sample(r.woo_id, {}))
        elif is_stale(row, existing):
            result.add("conflict", lambda r=row, e=existing: _conflict(r, e))
        else:
            result.add("update", lambda r=row, e=existing: Sample(r.woo_id, _changes(r, e)))
    return result


def add_deleted(result: Comparison, count: int, rows: Iterable[Mapping[str, Any]]) -> None:
    """The rows of the connection the store no longer has: ``count`` in all, ``rows`` a sample."""
    result.counts["delete"] = count
    result.samples["delete"] = [
        Sample(row["woo_id"], field_diff(None, row)) for row in list(rows)[: result.sample_size]
    ]


def _changes(row: CustomerRow, stored: Mapping[str, Any]) -> dict[str, Any]:
    diff = field_diff(row_values(row), stored) | raw_diff(row.raw, stored.get("raw") or {})
    if not diff:  # the hashes differ, yet no column or field shows it (NUL escapes in raw)
        diff = {"raw": {"store": row.raw, "mantis": stored.get("raw")}}
    return diff


def _conflict(row: CustomerRow, stored: Mapping[str, Any]) -> Sample:
    theirs = plain(stored.get("woo_date_modified"))
    ours = plain(row.woo_date_modified) or "never"
    return Sample(
        row.woo_id,
        _changes(row, stored),
        f"the store's version (modified {ours}) is older than the stored one (modified "
        f"{theirs}): a sync keeps the stored version",
    )


# -- the answer, as the api returns it and a preview job keeps it ---------------------------------


class FieldDiff(BaseModel):
    """One field's value in the store (as the sync would write it) and in MantisNXT (null:
    no row, or no customer in the store)."""

    store: Any
    mantis: Any


class PreviewSample(BaseModel):
    woo_id: int | None  # null: an item of the store without a usable id
    diff: dict[str, FieldDiff]
    reason: str | None = None  # why a conflict is one, why an item is invalid


class PreviewCounts(BaseModel):
    create: int
    update: int
    unchanged: int
    # Null when the read could not be proven complete: a missing customer may only be missed.
    delete: int | None
    conflict: int
    invalid: int


class PreviewSamples(BaseModel):
    create: list[PreviewSample]
    update: list[PreviewSample]
    unchanged: list[PreviewSample]
    delete: list[PreviewSample]
    conflict: list[PreviewSample]
    invalid: list[PreviewSample]


class PreviewPages(BaseModel):
    per_page: int  # customers per window (the store's own cap when it has one)
    total: int  # windows a sync reads
    requests: int  # requests this preview made


class PreviewEstimate(BaseModel):
    page_latency_ms: float  # median of this preview's requests
    concurrency: int
    duration_s: float  # a sync's reading of the store at that concurrency


class PreviewResult(BaseModel):
    store_url: str
    connection_id: UUID | None  # null: the org has no connection to this store yet
    store_total: int | None  # the store's X-WP-Total
    customers_read: int  # distinct items read
    complete: bool  # every customer read, and proven so (see problems)
    problems: list[str]
    counts: PreviewCounts
    samples: PreviewSamples
    pages: PreviewPages
    estimate: PreviewEstimate
    notes: list[str]
