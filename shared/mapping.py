"""WooCommerce customer (as the REST API sends it) -> one row of MantisNXT's ``customer`` table.

A pure function with no I/O, so every rule can be unit- and property-tested without a database,
and the syncer stays a thin loop around one SQL statement.

What the store's content may hold, and what becomes of it (issue 8, "no customer is lost for its
content"):

- **Long text** is stored whole: the text columns are ``text`` (migration 0007), so there is no
  length rule except the e-mail's (an address longer than 320 characters is no address).
- **NUL characters** (``\\u0000``), which neither ``text`` nor ``jsonb`` can hold, are removed
  from every column, including ``billing``, ``shipping`` and ``meta_data``; the row carries a
  warning naming the fields (the syncer stores it on the customer's line). ``raw`` keeps the
  customer as sent with each NUL written as the six characters ``\\u0000`` (a backslash, ``u``
  and four zeros), the way the store's JSON spelled it; ``source_hash`` is computed from the
  customer as sent, NUL included.
- **Emoji, right-to-left and other 4-byte text** round-trips exactly.
- **Nesting**: a customer document nested up to :data:`MAX_JSON_DEPTH` levels (the customer
  object itself is level 1) is stored exactly; deeper, the customer fails alone with a
  :class:`MappingError`. 512 is well within what PostgreSQL's ``jsonb`` (thousands of levels
  with the default ``max_stack_depth``) and Python's ``json`` (about 990 levels under the
  default recursion limit of 1000) both handle.
- **Guest buyers** (``shared.guests``): a document the fetcher built from a guest's orders
  carries ``woosync_guest``; it maps to a row of ``kind`` ``guest`` with its ``guest_key``, and
  only under the negative id derived from that key (a store's customer cannot pose as a guest).
- What no storage can hold (lone surrogates, NaN or infinite numbers, non-JSON values, a
  non-integer id) fails that customer alone with a :class:`MappingError` naming the field. A
  mapping error is never retried: the same content fails the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import orjson

from shared.guests import GUEST_MARK, guest_woo_id, normalize_email

MAX_EMAIL = 320  # RFC 5321's bound on an address: longer is not an e-mail address
MAX_WOO_ID = 2**63 - 1  # bigint
MAX_JSON_DEPTH = 512  # levels of nested objects and arrays in one customer, itself included
NUL_ESCAPE = "\\u0000"  # what stands for a NUL character in ``raw``
MAX_WARNING_FIELDS = 5

_DATE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?",
    re.ASCII,
)
_WHITESPACE = re.compile(r"\s")
_PAYING = {"1": True, "true": True, "0": False, "false": False}


class MappingError(ValueError):
    """A customer that cannot become a row; ``message`` names the field and the reason."""

    def __init__(self, woo_id: int | None, message: str) -> None:
        super().__init__(f"customer {woo_id}: {message}" if woo_id is not None else message)
        self.woo_id = woo_id
        self.message = message


@dataclass(frozen=True)
class CustomerRow:
    """Exactly the columns of ``customer`` that the syncer writes, in table order.

    ``created_at``, ``updated_at`` and ``synced_at`` are left to the database.
    """

    org_id: UUID
    connection_id: UUID
    woo_id: int
    email: str
    first_name: str
    last_name: str
    username: str
    role: str
    company: str
    phone: str
    billing: dict[str, Any]
    shipping: dict[str, Any]
    meta_data: list[Any]
    is_paying_customer: bool
    avatar_url: str
    woo_date_created: datetime | None
    woo_date_modified: datetime | None
    raw: dict[str, Any]
    source_hash: str
    kind: str  # 'account', or 'guest' for a buyer without an account (shared.guests)
    guest_key: str | None  # a guest's normalized e-mail; None for an account customer
    # ``raw`` as its canonical JSON text: the syncer sends this text, so a customer is serialised
    # once. Not a column of its own.
    raw_json: str = field(repr=False, compare=False, metadata={"column": False})
    # The customer without its NUL characters, as canonical JSON, when it differs from
    # ``raw_json`` (else None): where the syncer takes billing, shipping and meta_data from.
    clean_json: str | None = field(default=None, repr=False, metadata={"column": False})
    # What was changed to store the customer (NUL characters removed), for its line.
    warnings: tuple[str, ...] = field(default=(), metadata={"column": False})


CUSTOMER_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in fields(CustomerRow) if f.metadata.get("column", True)
)


def map_customer(raw: Mapping[str, Any], *, org_id: UUID, connection_id: UUID) -> CustomerRow:
    """Map one customer object, or raise :class:`MappingError`; never any other exception."""
    if not isinstance(raw, Mapping):
        raise MappingError(None, f"customer must be a JSON object, got {_type(raw)}")
    kind, guest_key = _kind(raw)
    woo_id = _woo_id(raw.get("id")) if guest_key is None else _guest_id(raw.get("id"), guest_key)
    source = (
        raw  # read only: a copy per customer cost 2 µs
        if type(raw) is dict and "_links" not in raw
        else {k: v for k, v in raw.items() if k != "_links"}
    )
    digest, source_json, nul_paths = _storable_digest(woo_id, source)
    warnings: tuple[str, ...] = ()
    stored, stored_json, clean, clean_json = source, source_json, source, None
    if nul_paths:
        clean = _replace_nul(source, "")
        clean_json = canonical_json(clean)
        stored = _replace_nul(source, NUL_ESCAPE)
        stored_json = canonical_json(stored)
        shown = ", ".join(nul_paths[:MAX_WARNING_FIELDS])
        more = len(nul_paths) - MAX_WARNING_FIELDS
        warnings = (
            f"NUL characters removed from {shown}" + (f" and {more} more" if more > 0 else ""),
        )
    billing = _object(woo_id, clean, "billing")
    shipping = _object(woo_id, clean, "shipping")
    return CustomerRow(
        org_id=org_id,
        connection_id=connection_id,
        woo_id=woo_id,
        email=_email(woo_id, clean.get("email")),
        first_name=_string(woo_id, clean, "first_name"),
        last_name=_string(woo_id, clean, "last_name"),
        username=_string(woo_id, clean, "username"),
        role=_string(woo_id, clean, "role"),
        company=_string(woo_id, billing, "company", prefix="billing."),
        phone=_string(woo_id, billing, "phone", prefix="billing."),
        billing=billing,
        shipping=shipping,
        meta_data=_list(woo_id, clean, "meta_data"),
        is_paying_customer=_paying(woo_id, clean.get("is_paying_customer")),
        avatar_url=_string(woo_id, clean, "avatar_url"),
        woo_date_created=_date_pair(woo_id, clean, "date_created"),
        woo_date_modified=_date_pair(woo_id, clean, "date_modified"),
        raw=stored,
        source_hash=digest,
        kind=kind,
        guest_key=guest_key,
        raw_json=stored_json,
        clean_json=clean_json,
        warnings=warnings,
    )


# In orjson's output, what json.dumps would write differently: floats below 1e-4 (orjson writes
# 0.000025 and 1e-7 where json writes 2.5e-05 and 1e-07) and NaN and infinities, which orjson
# writes as ``null`` (json refuses them here). Text that merely looks like these only sends that
# customer down the slower path. Three substring searches, and the exponent's pattern only after
# its "e-": one regular expression with the three branches tried at every byte cost twice
# orjson's own time. A ``null`` is looked into: the value's floats are checked (a walk, a third
# of json's time), as a store's customer often holds a real null (a date never modified).
_SHORT_NEGATIVE_EXPONENT = re.compile(rb"e-\d(?!\d)")


def _orjson_may_differ(data: bytes, value: Any) -> bool:
    return (
        b"0.0000" in data
        or (b"e-" in data and _SHORT_NEGATIVE_EXPONENT.search(data) is not None)
        or (b"null" in data and _has_non_finite_float(value))
    )


def _has_non_finite_float(value: Any) -> bool:
    """Whether a float anywhere in ``value`` is NaN or infinite, or ``value`` holds a type that
    json might write otherwise (a subclass: json decides). Iterative: no depth exhausts the
    stack."""
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is dict:
            pending.extend(v for v in item.values() if type(v) not in _PLAIN_LEAVES)
        elif kind is list:
            pending.extend(v for v in item if type(v) not in _PLAIN_LEAVES)
        elif kind is not float or not math.isfinite(item):
            return True
    return False


_PLAIN_LEAVES = frozenset({str, int, bool, type(None)})


def canonical_json(value: Any) -> str:
    """The one serialisation that is hashed: key order and whitespace cannot change the hash.

    Exactly ``json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    allow_nan=False)``, so hashes never change with the library: orjson writes it (several
    times faster) unless it refuses the value (an integer beyond 64 bits, a lone surrogate, a
    ``NonFiniteFloat``) or its output holds something json could write differently."""
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        data = None
    if data is not None and not _orjson_may_differ(data, value):
        return data.decode("utf-8")
    return json.dumps(
        value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )


def source_hash(raw: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(raw).encode("utf-8")).hexdigest()


def jsonb_storable(value: Any) -> bool:
    """True when PostgreSQL ``jsonb`` can hold ``value`` exactly (no NUL, see the module)."""
    try:
        return not _check_json_storable(None, value)
    except MappingError:
        return False


# -- field rules ---------------------------------------------------------------------------------


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _woo_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MappingError(None, f"id must be a positive integer, got {_type(value)}")
    if not 0 < value <= MAX_WOO_ID:
        raise MappingError(None, "id must be a positive integer that fits in 64 bits")
    return value


def _kind(raw: Mapping[str, Any]) -> tuple[str, str | None]:
    """A guest's document (built by the fetcher from orders) carries its key; a store's customer
    that claims to be a guest does not get far: its positive id is refused below."""
    mark = raw.get(GUEST_MARK)
    if mark is None:
        return "account", None
    key = mark.get("key") if isinstance(mark, Mapping) else None
    if not isinstance(key, str) or normalize_email(key) != key:
        raise MappingError(None, f"{GUEST_MARK}.key must be a normalized e-mail address")
    return "guest", key


def _guest_id(value: Any, key: str) -> int:
    if value != guest_woo_id(key) or isinstance(value, bool):
        raise MappingError(None, "a guest's id must be the one derived from its key")
    return int(value)


def _email(woo_id: int, value: Any) -> str:
    if not isinstance(value, str):
        raise MappingError(woo_id, f"email must be a string, got {_type(value)}")
    if len(value) > MAX_EMAIL:
        raise MappingError(
            woo_id, f"email is {len(value)} characters, an address has at most {MAX_EMAIL}"
        )
    local, at, domain = value.partition("@")
    if not at or not local or not domain or "@" in domain or _WHITESPACE.search(value):
        raise MappingError(
            woo_id,
            "email is not an address (needs one '@' between non-empty parts, no whitespace)",
        )
    return value


def _string(woo_id: int, source: Mapping[str, Any], key: str, *, prefix: str = "") -> str:
    value = source.get(key)
    if type(value) is str:  # nearly always: one check instead of four
        return value
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MappingError(woo_id, f"{prefix}{key} must be a string, got {_type(value)}")
    return value if isinstance(value, str) else _number_text(woo_id, f"{prefix}{key}", value)


def _number_text(woo_id: int, field: str, value: int | float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise MappingError(woo_id, f"{field} must be a string, got a non-finite number")
    try:
        return str(value)
    except ValueError as exc:  # an int too long to print (sys.get_int_max_str_digits)
        raise MappingError(woo_id, f"{field} is a number too long to store") from exc


def _object(woo_id: int, source: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = source.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MappingError(woo_id, f"{key} must be an object, got {_type(value)}")
    return dict(value)


def _list(woo_id: int, source: Mapping[str, Any], key: str) -> list[Any]:
    value = source.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MappingError(woo_id, f"{key} must be a list, got {_type(value)}")
    return list(value)


def _paying(woo_id: int, value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _PAYING:
        return _PAYING[value.strip().lower()]
    raise MappingError(
        woo_id,
        f"is_paying_customer must be a boolean (or '1', '0', 'true', 'false'), got {_type(value)}",
    )


def _date_pair(woo_id: int, source: Mapping[str, Any], key: str) -> datetime | None:
    """``<key>_gmt`` is UTC; the site-local ``<key>`` stands in (read as UTC) only without it."""
    gmt = source.get(f"{key}_gmt")
    if gmt is not None:
        return _date(woo_id, f"{key}_gmt", gmt)
    local = source.get(key)
    if local is not None:
        return _date(woo_id, key, local)
    return None


def _date(woo_id: int, field: str, value: Any) -> datetime:
    if not isinstance(value, str):
        raise MappingError(woo_id, f"{field} must be a date string, got {_type(value)}")
    match = _DATE.fullmatch(value)
    if match is None:
        raise MappingError(woo_id, f"{field} {value[:40]!r} is not a date like YYYY-MM-DDTHH:MM:SS")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        tz = _zone(zone)
        parsed = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
        )
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise MappingError(woo_id, f"{field} {value[:40]!r} is not a valid date") from exc


def _zone(zone: str | None) -> timezone:
    if zone is None or zone == "Z":
        return UTC
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


def _storable_digest(woo_id: int | None, value: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    """The source hash, the canonical text it hashes, and the paths of the strings holding a NUL
    character, proving on the way that the object is storable (once its NULs are handled).

    The canonical serialisation refuses NaN and non-JSON types, its UTF-8 encoding refuses lone
    surrogates, and a NUL shows up escaped; a document with more brackets than the depth limit
    may be too deep. Only then does the slow walk run, to name the field.
    """
    try:
        text = canonical_json(value)
        encoded = text.encode("utf-8")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        _check_json_storable(woo_id, value)
        raise MappingError(woo_id, "customer cannot be stored as JSON") from None
    nul_paths: list[str] = []
    if b"\\u0000" in encoded or encoded.count(b"[") + encoded.count(b"{") > MAX_JSON_DEPTH:
        nul_paths = _check_json_storable(woo_id, value)
    return hashlib.sha256(encoded).hexdigest(), text, nul_paths


def _check_json_storable(woo_id: int | None, value: Any) -> list[str]:
    """Refuse what ``jsonb`` and ``text`` cannot hold (lone surrogates, NaN, non-JSON types,
    nesting past :data:`MAX_JSON_DEPTH`); return the paths of the strings and keys holding NUL
    characters, which the mapping removes. Iterative, so no depth can exhaust the stack."""
    nul_paths: list[str] = []
    stack: list[tuple[str, Any, int]] = [("", value, 1)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, str):
            if _check_text(woo_id, path, item):
                nul_paths.append(path or "key")
        elif isinstance(item, Mapping | list | tuple):
            if depth > MAX_JSON_DEPTH:
                raise MappingError(
                    woo_id,
                    f"{_cut_path(path)} is nested deeper than {MAX_JSON_DEPTH} levels, the "
                    "most woosync stores",
                )
            if isinstance(item, Mapping):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise MappingError(woo_id, f"{path or 'customer'} has a non-string key")
                    child_path = f"{path}.{_printable(key)}" if path else _printable(key)
                    if _check_text(woo_id, child_path, key):
                        nul_paths.append(f"a key of {path or 'customer'}")
                    stack.append((child_path, child, depth + 1))
            else:
                stack.extend((f"{path}[{i}]", child, depth + 1) for i, child in enumerate(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise MappingError(woo_id, f"{path} is not a finite number")
        elif isinstance(item, int) and not isinstance(item, bool):
            _number_text(woo_id, _cut_path(path), item)  # too many digits for JSON text
        elif item is not None and not isinstance(item, bool | int):
            raise MappingError(woo_id, f"{path} holds a {_type(item)}, which is not JSON")
    try:
        canonical_json(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise MappingError(woo_id, "customer cannot be stored as JSON") from exc
    return sorted(set(nul_paths))


def _replace_nul(value: Any, by: str) -> Any:
    """A copy of ``value`` with every NUL in its strings and keys replaced by ``by``.

    Only called on documents within :data:`MAX_JSON_DEPTH`, so the recursion is bounded.
    """
    if isinstance(value, str):
        return value.replace("\x00", by)
    if isinstance(value, Mapping):
        return {key.replace("\x00", by): _replace_nul(child, by) for key, child in value.items()}
    if isinstance(value, list | tuple):
        return [_replace_nul(child, by) for child in value]
    return value


def _cut_path(path: str) -> str:
    if not path:
        return "customer"
    return path if len(path) <= 80 else path[:80] + "…"


def _printable(key: str) -> str:
    """A key as it may appear in an error text (which is stored and logged)."""
    key = key.replace("\x00", "")
    return key if key.isprintable() and len(key) <= 40 else repr(key[:40])


def _check_text(woo_id: int | None, path: str, text: str) -> bool:
    """Refuse text that is not valid Unicode; True when it holds a NUL character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MappingError(
            woo_id,
            f"{_cut_path(path) if path else 'key'} is not valid Unicode (a lone surrogate)",
        ) from exc
    return "\x00" in text
