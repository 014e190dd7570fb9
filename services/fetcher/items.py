"""Telling a page's customers from items that cannot be customers, and the store's claims from
what fits.

A store's database can hold anything: an ``id`` of 2^63, a string, none at all, an item that is
not an object. Such an item is one bad customer, never a bad page: it is *rejected* and recorded
as a ``failed`` line of its job under a synthetic negative ``woo_id`` (no WordPress id is
negative), derived from a hash of the item as sent, so the same item read twice (windows
overlap) stays one line. Its ``last_error`` says what is wrong and shows the item (cut short).
It carries no payload, so the api's ``retry`` does not send it to the syncer again: only the
store can fix it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from shared.logs import redact

MAX_WOO_ID = 2**63 - 1  # woo_id is a PostgreSQL bigint
INT4_MAX = 2**31 - 1  # store_total and pages_total are int columns
EXCERPT_CHARS = 300


@dataclass(frozen=True)
class Rejected:
    """An item of a page that is not a customer woosync can store."""

    woo_id: int  # synthetic, negative
    error: str


def id_problem(item: Any) -> str | None:
    """Why ``item`` is not a customer with a usable id, or None when it is one."""
    if not isinstance(item, dict):
        return f"item is a JSON {_json_type(item)}, not an object"
    if "id" not in item:
        return "customer has no id"
    value = item["id"]
    if isinstance(value, bool) or not isinstance(value, int):
        return f"customer id is a JSON {_json_type(value)}, not an integer"
    if value <= 0:
        return f"customer id {value} is not positive"
    if value > MAX_WOO_ID:
        return f"customer id {value} is above the largest storable id (2^63 - 1)"
    return None


def split(items: list[Any]) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """The customers with a usable id, and the rest, rejected with their reason."""
    customers: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    for item in items:
        problem = id_problem(item)
        if problem is None:
            customers.append(item)
        else:
            rejected.append(Rejected(synthetic_id(item), _error(problem, item)))
    return customers, rejected


def synthetic_id(item: Any) -> int:
    """A negative woo_id for a rejected item: the same item gives the same id."""
    digest = hashlib.sha256(_canonical(item).encode("utf-8", "surrogatepass")).digest()
    return -(1 + int.from_bytes(digest[:8], "big") % MAX_WOO_ID)


def is_ascending(ids: list[int]) -> bool:
    return all(a < b for a, b in zip(ids, ids[1:], strict=False))


def out_of_order(ids: list[int]) -> tuple[int, int] | None:
    """The first pair (earlier, later) that breaks strictly ascending order, or None."""
    for a, b in zip(ids, ids[1:], strict=False):
        if a >= b:
            return a, b
    return None


def total_problem(name: str, value: int | None, limit: int) -> str | None:
    """Why a count the store claims (``X-WP-Total``, ``X-WP-TotalPages``) cannot be used."""
    if value is None or value <= limit:
        return None
    shown = f"{value:,}" if value < 10**30 else "a number of more than 30 digits"
    if limit >= INT4_MAX:
        return f"the store claims {name}: {shown}, more than woosync can record ({INT4_MAX:,})"
    return (
        f"the store claims {name}: {shown}, above the limit of {limit:,} customers per store "
        "(WOOSYNC_MAX_STORE_CUSTOMERS); refusing to read it"
    )


def _error(problem: str, item: Any) -> str:
    excerpt = _canonical(item)
    if len(excerpt) > EXCERPT_CHARS:
        excerpt = excerpt[:EXCERPT_CHARS] + "…"
    return f"rejected by the fetcher: {problem}; not synced (fix it in the store). Item: " + redact(
        excerpt
    )


def _canonical(item: Any) -> str:
    """Stable text of an item: sorted keys, non-ASCII (and NUL) escaped, never failing."""
    try:
        return json.dumps(item, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return f"<{type(item).__name__} that cannot be shown>"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
