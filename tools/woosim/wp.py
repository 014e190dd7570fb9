"""WordPress REST conventions: JSON encoding, the error envelope and parameter validation.

JSON is encoded as PHP's ``json_encode`` with WordPress' default flags: compact, non-ASCII as
``\\uXXXX`` escapes and ``/`` escaped as ``\\/``. Any JSON parser reads it; byte-level fixtures
and naive string matching do not, which is the point.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

from tools.woosim import php
from tools.woosim.php import PhpValue

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
ORDERBY_VALUES = ("id", "include", "name", "registered_date")
ORDER_VALUES = ("asc", "desc")
CONTEXT_VALUES = ("view", "edit")
MAX_PER_PAGE = 100


def dumps(value: Any) -> str:
    """``wp_json_encode``: compact, ASCII-only, slashes escaped."""
    return json.dumps(value, separators=(",", ":")).replace("/", "\\/")


def encode(value: Any) -> bytes:
    return dumps(value).encode("ascii")


def json_value(value: Any) -> str:
    """One JSON value, fast for the strings that make up most of a customer."""
    if value.__class__ is str:
        return encode_basestring_ascii(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value.__class__ is int:
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def object_json(value: dict[str, Any]) -> str:
    """A JSON object keeping the dict's key order (slashes not yet escaped)."""
    return "{" + ",".join(
        encode_basestring_ascii(key) + ":" + (
            object_json(item) if item.__class__ is dict else json_value(item)
        )
        for key, item in value.items()
    ) + "}"


def sprintf_l(items: Sequence[str]) -> str:
    """WordPress ``%l``: "a", "a and b", "a, b, and c"."""
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + ", and " + items[-1]


class WPError(Exception):
    """A ``WP_Error`` on its way to the client: ``{"code", "message", "data": {"status"...}}``."""

    def __init__(self, code: str, message: str, status: int, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.data = data

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message,
                "data": {"status": self.status, **self.data}}


def no_route() -> WPError:
    return WPError("rest_no_route", "No route was found matching the URL and request method.", 404)


def cannot_view(status: int, *, single: bool = False) -> WPError:
    if single:
        message = "Sorry, you cannot view this resource."
    else:
        message = "Sorry, you cannot list resources."
    return WPError("woocommerce_rest_cannot_view", message, status)


# --- request parameter validation -----------------------------------------------------------


@dataclass(frozen=True)
class ListParams:
    """The customers list request after WordPress validation and sanitisation."""

    context: str
    page: int
    per_page: int
    search: str
    exclude: tuple[int, ...]
    include: tuple[int, ...]
    offset: int
    order: str
    orderby: str
    email: str
    role: str
    fields: tuple[str, ...] | None


class _Invalid(Exception):
    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _integer(name: str, value: PhpValue, minimum: int | None, maximum: int | None) -> None:
    if not php.rest_is_integer(value):
        raise _Invalid("rest_invalid_type", f"{name} is not of type integer.", {"param": name})
    number = float(str(value))
    if minimum is not None and maximum is not None:
        if not minimum <= number <= maximum:
            raise _Invalid(
                "rest_out_of_bounds",
                f"{name} must be between {minimum} (inclusive) and {maximum} (inclusive)",
            )
    elif minimum is not None and number < minimum:
        raise _Invalid("rest_out_of_bounds", f"{name} must be greater than or equal to {minimum}")


def _string(name: str, value: PhpValue, enum: Sequence[str] | None = None) -> None:
    if not isinstance(value, str):
        raise _Invalid("rest_invalid_type", f"{name} is not of type string.", {"param": name})
    if enum is not None and value not in enum:
        raise _Invalid("rest_not_in_enum", f"{name} is not one of {sprintf_l(enum)}.")


def _id_array(name: str, value: PhpValue) -> None:
    if isinstance(value, dict) and not all(key.isdigit() for key in value):
        raise _Invalid("rest_invalid_type", f"{name} is not of type array.", {"param": name})
    for index, item in enumerate(php.wp_parse_list(value)):
        if not php.rest_is_integer(item):
            param = f"{name}[{index}]"
            message = f"{param} is not of type integer."
            raise _Invalid("rest_invalid_type", message, {"param": param})


def _check(
    name: str, params: dict[str, PhpValue], roles: Sequence[str]
) -> None:
    value = params[name]
    if name == "context":
        _string(name, value, CONTEXT_VALUES)
    elif name == "page":
        _integer(name, value, 1, None)
    elif name == "per_page":
        _integer(name, value, 1, MAX_PER_PAGE)
    elif name == "offset":
        _integer(name, value, None, None)
    elif name in ("search",):
        _string(name, value)
    elif name in ("include", "exclude"):
        _id_array(name, value)
    elif name == "order":
        _string(name, value, ORDER_VALUES)
    elif name == "orderby":
        _string(name, value, ORDERBY_VALUES)
    elif name == "email":
        _string(name, value)
        if not php.is_email(str(value)):
            raise _Invalid("rest_invalid_email", "Invalid email address.")
    elif name == "role":
        _string(name, value, ("all", *roles))


# Registration order of the collection params: WordPress reports invalid ones in this order.
_LIST_PARAMS = (
    "context", "page", "per_page", "search", "exclude", "include", "offset", "order", "orderby",
    "email", "role",
)


def _raise_invalid(invalid: dict[str, _Invalid]) -> None:
    if invalid:
        raise WPError(
            "rest_invalid_param",
            "Invalid parameter(s): " + ", ".join(invalid),
            400,
            params={name: err.message for name, err in invalid.items()},
            details={
                name: {"code": err.code, "message": err.message, "data": err.data}
                for name, err in invalid.items()
            },
        )


def validate_list_params(params: dict[str, PhpValue], roles: Sequence[str]) -> ListParams:
    """Validate (before sanitising, as WordPress does), then sanitise; raises ``WPError``."""
    invalid: dict[str, _Invalid] = {}
    for name in _LIST_PARAMS:
        if name in params:
            try:
                _check(name, params, roles)
            except _Invalid as err:
                invalid[name] = err
    _raise_invalid(invalid)

    def text(name: str, default: str) -> str:
        value = params.get(name)
        return value if isinstance(value, str) else default

    return ListParams(
        context=text("context", "view"),
        page=php.absint(params["page"]) if "page" in params else 1,
        per_page=php.absint(params["per_page"]) if "per_page" in params else 10,
        search=php.sanitize_text_field(text("search", "")),
        exclude=php.wp_parse_id_list(params["exclude"]) if "exclude" in params else (),
        include=php.wp_parse_id_list(params["include"]) if "include" in params else (),
        offset=php.absint(params["offset"]) if "offset" in params else 0,
        order=text("order", "asc"),
        orderby=text("orderby", "name"),
        email=text("email", ""),
        role=text("role", "customer"),
        fields=_fields(params.get("_fields")),
    )


def validate_context(params: dict[str, PhpValue]) -> tuple[str, ...] | None:
    """The single-item route accepts only ``context``; returns the ``_fields`` selection."""
    if "context" in params:
        try:
            _check("context", params, ())
        except _Invalid as err:
            _raise_invalid({"context": err})
    return _fields(params.get("_fields"))


def _fields(value: PhpValue | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(dict.fromkeys(str(item).strip() for item in php.wp_parse_list(value)))
    return tuple(name for name in names if name) or None


def filter_fields(item: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """``_fields=a,b.c``: the listed top-level or dotted nested fields; ``id`` always kept."""
    return _select(item, ("id", *fields))


def _select(item: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in item.items():
        if key in names:
            out[key] = value
            continue
        nested = tuple(name[len(key) + 1 :] for name in names if name.startswith(key + "."))
        if nested and isinstance(value, dict):
            out[key] = _select(value, nested)
    return out


def pagination_links(
    base_url: str, query: dict[str, PhpValue], page: int, total_pages: int
) -> str | None:
    """The ``Link`` header of the customers list: ``prev`` and ``next`` only, WP-encoded."""
    base = php.add_query_arg(dict(query), base_url)
    links: list[str] = []
    if page > 1:
        previous = min(page - 1, total_pages)
        links.append(f'<{php.add_query_arg({"page": previous}, base)}>; rel="prev"')
    if total_pages > page:
        links.append(f'<{php.add_query_arg({"page": page + 1}, base)}>; rel="next"')
    return ", ".join(links) or None
