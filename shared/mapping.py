"""WooCommerce customer (as the REST API sends it) -> one row of MantisNXT's ``customer`` table.

A pure function with no I/O, so every rule can be unit- and property-tested without a database,
and the syncer stays a thin loop around one SQL statement. Everything PostgreSQL would refuse
(over-long strings, NUL characters, lone surrogates, NaN in jsonb) is refused here instead, with a
:class:`MappingError` naming the field, so one bad customer fails alone and never aborts a batch.
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

# Column limits of table ``customer`` (migrations/0001_core.up.sql).
MAX_EMAIL = 320
MAX_NAME = 255  # first_name, last_name, username, company
MAX_ROLE = 100
MAX_PHONE = 100
MAX_AVATAR_URL = 2048
MAX_WOO_ID = 2**63 - 1  # bigint

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
    # ``raw`` as its canonical JSON text, the one ``source_hash`` hashes: the syncer sends this
    # text, so a customer is serialised once. Not a column of its own.
    raw_json: str = field(repr=False, compare=False, metadata={"column": False})


CUSTOMER_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in fields(CustomerRow) if f.metadata.get("column", True)
)


def map_customer(raw: Mapping[str, Any], *, org_id: UUID, connection_id: UUID) -> CustomerRow:
    """Map one customer object, or raise :class:`MappingError`; never any other exception."""
    if not isinstance(raw, Mapping):
        raise MappingError(None, f"customer must be a JSON object, got {_type(raw)}")
    woo_id = _woo_id(raw.get("id"))
    source = {k: v for k, v in raw.items() if k != "_links"}
    digest, source_json = _storable_digest(woo_id, source)
    billing = _object(woo_id, source, "billing")
    shipping = _object(woo_id, source, "shipping")
    return CustomerRow(
        org_id=org_id,
        connection_id=connection_id,
        woo_id=woo_id,
        email=_email(woo_id, source.get("email")),
        first_name=_string(woo_id, source, "first_name", MAX_NAME),
        last_name=_string(woo_id, source, "last_name", MAX_NAME),
        username=_string(woo_id, source, "username", MAX_NAME),
        role=_string(woo_id, source, "role", MAX_ROLE),
        company=_string(woo_id, billing, "company", MAX_NAME, prefix="billing."),
        phone=_string(woo_id, billing, "phone", MAX_PHONE, prefix="billing."),
        billing=billing,
        shipping=shipping,
        meta_data=_list(woo_id, source, "meta_data"),
        is_paying_customer=_paying(woo_id, source.get("is_paying_customer")),
        avatar_url=_string(woo_id, source, "avatar_url", MAX_AVATAR_URL),
        woo_date_created=_date_pair(woo_id, source, "date_created"),
        woo_date_modified=_date_pair(woo_id, source, "date_modified"),
        raw=source,
        source_hash=digest,
        raw_json=source_json,
    )


def canonical_json(value: Any) -> str:
    """The one serialisation that is hashed: key order and whitespace cannot change the hash."""
    return json.dumps(
        value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )


def source_hash(raw: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(raw).encode("utf-8")).hexdigest()


def jsonb_storable(value: Any) -> bool:
    """True when PostgreSQL ``jsonb`` can hold ``value`` exactly (see :func:`map_customer`)."""
    try:
        _check_json_storable(None, value)
    except MappingError:
        return False
    return True


# -- field rules ---------------------------------------------------------------------------------


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _woo_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MappingError(None, f"id must be a positive integer, got {_type(value)}")
    if not 0 < value <= MAX_WOO_ID:
        raise MappingError(None, "id must be a positive integer that fits in 64 bits")
    return value


def _email(woo_id: int, value: Any) -> str:
    if not isinstance(value, str):
        raise MappingError(woo_id, f"email must be a string, got {_type(value)}")
    if len(value) > MAX_EMAIL:
        raise MappingError(woo_id, f"email is {len(value)} characters, the limit is {MAX_EMAIL}")
    local, at, domain = value.partition("@")
    if not at or not local or not domain or "@" in domain or _WHITESPACE.search(value):
        raise MappingError(
            woo_id,
            "email is not an address (needs one '@' between non-empty parts, no whitespace)",
        )
    return value


def _string(
    woo_id: int, source: Mapping[str, Any], key: str, limit: int, *, prefix: str = ""
) -> str:
    value = source.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MappingError(woo_id, f"{prefix}{key} must be a string, got {_type(value)}")
    text = value if isinstance(value, str) else _number_text(woo_id, f"{prefix}{key}", value)
    if len(text) > limit:
        raise MappingError(woo_id, f"{prefix}{key} is {len(text)} characters, the limit is {limit}")
    return text


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


def _storable_digest(woo_id: int | None, value: Mapping[str, Any]) -> tuple[str, str]:
    """The source hash and the canonical text it hashes, proving on the way that the object is
    storable.

    The canonical serialisation refuses NaN and non-JSON types, its UTF-8 encoding refuses lone
    surrogates, and a NUL shows up escaped; only then does the slow walk run, to name the field.
    """
    try:
        text = canonical_json(value)
        encoded = text.encode("utf-8")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        _check_json_storable(woo_id, value)
        raise MappingError(woo_id, "customer cannot be stored as JSON") from None
    if b"\\u0000" in encoded:
        _check_json_storable(woo_id, value)  # raises, unless the text merely spells "\\u0000"
    return hashlib.sha256(encoded).hexdigest(), text


def _check_json_storable(woo_id: int | None, value: Any) -> None:
    """Refuse what ``jsonb`` and ``text`` cannot hold: NUL, lone surrogates, NaN, non-JSON types."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            _check_text(woo_id, path, item)
        elif isinstance(item, Mapping):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise MappingError(woo_id, f"{path or 'customer'} has a non-string key")
                child_path = f"{path}.{_printable(key)}" if path else _printable(key)
                _check_text(woo_id, child_path, key)
                stack.append((child_path, child))
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise MappingError(woo_id, f"{path} is not a finite number")
        elif item is not None and not isinstance(item, bool | int):
            raise MappingError(woo_id, f"{path} holds a {_type(item)}, which is not JSON")
    try:
        canonical_json(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise MappingError(woo_id, "customer cannot be stored as JSON") from exc


def _printable(key: str) -> str:
    """A key as it may appear in an error text (which is stored and logged)."""
    return key if key.isprintable() and len(key) <= 40 else repr(key[:40])


def _check_text(woo_id: int | None, path: str, text: str) -> None:
    if "\x00" in text:
        raise MappingError(woo_id, f"{path or 'key'} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MappingError(woo_id, f"{path or 'key'} is not valid Unicode") from exc
