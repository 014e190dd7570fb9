"""The simulated ``wp_users`` table and ``WP_User_Query`` semantics for the customers list.

Each user is kept as its ready-made JSON (WordPress-encoded, without the closing brace so that
``_links`` can be appended per request) plus the few columns the query filters and sorts on.
Filtered and ordered id lists are cached per query shape and dropped on every write, so paging
through a large store costs a list slice per page.

Ordering by ``name`` or ``registered_date`` has ties and, as in MySQL, no tiebreaker: the order
inside a group of equal keys that straddles a page boundary depends on where the page ends, so
offset paging over such an order can repeat or skip users, as it does on a real store.
"""

from __future__ import annotations

import bisect
import json
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tools.woosim import data, php, wp
from tools.woosim.data import BILLING_KEYS, CUSTOMER_KEYS, SHIPPING_KEYS, GeneratedUser

_CACHE_SIZE = 64
_STRING_FIELDS = ("email", "first_name", "last_name", "role", "username", "avatar_url")
_DATE_PAIRS = (("date_created", "date_created_gmt"), ("date_modified", "date_modified_gmt"))
_WP_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")


class StoreError(Exception):
    """A rejected control-API write (bad field, duplicate email, unknown id)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def collate(text: str) -> str:
    """Approximates MySQL's ``utf8mb4_unicode_ci``: case- and accent-insensitive."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def nicename(login: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", login.lower()).strip("-")[:50]


@dataclass(slots=True)
class Record:
    """One user: the response JSON and the ``wp_users`` columns queries look at."""

    id: int
    json_open: str  # The customer object as JSON, minus its final "}".
    roles: tuple[str, ...]
    role: str
    email_key: str
    login: str
    login_key: str
    display_key: str  # display_name ("first last", or the login when both are empty), collated
    user_url: str
    registered: str  # date_created_gmt; this format sorts chronologically as text.

    def customer(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.json_open + "}")
        return result


def _record(customer: dict[str, Any], roles: tuple[str, ...], user_url: str) -> Record:
    login = customer["username"]
    display = f"{customer['first_name']} {customer['last_name']}".strip() or login
    return Record(
        id=customer["id"],
        json_open=wp.dumps(customer)[:-1],
        roles=roles,
        role=customer["role"],
        email_key=customer["email"].lower(),
        login=login,
        login_key=collate(login),
        display_key=collate(display),
        user_url=user_url,
        registered=customer["date_created_gmt"] or "",
    )


@dataclass(frozen=True)
class ListQuery:
    """The ``WP_User_Query`` arguments the customers controller derives from a request."""

    role: str = "customer"
    orderby: str = "name"
    order: str = "asc"
    include: tuple[int, ...] = ()
    exclude: tuple[int, ...] = ()
    search: str = ""  # As WooCommerce passes it: esc_attr'd, wrapped in "*".
    email: str = ""
    offset: int = 0
    number: int = 10

    def shape(self) -> tuple[Any, ...]:
        """Everything but the window: queries of one shape share a cached ordering."""
        exclude = () if self.include else self.exclude
        search = "" if self.email else self.search
        return (self.role, self.orderby, self.order, self.include, exclude, search, self.email)


@dataclass(frozen=True)
class _Ordered:
    ids: list[int]
    tie_key: Callable[[Record], str] | None


class CustomerStore:
    """In-memory users; all methods are synchronous, so one event loop needs no locks."""

    def __init__(
        self,
        users: Iterable[GeneratedUser],
        *,
        tz_offset: str = data.DEFAULT_TZ_OFFSET,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._offset_s = data.parse_tz_offset(tz_offset)
        self._clock = clock
        self._by_id: dict[int, Record] = {}
        self._ids: list[int] = []
        self._emails: dict[str, int] = {}
        self._logins: dict[str, int] = {}
        self._roles: list[str] = list(data.REGISTERED_ROLES)
        self._cache: OrderedDict[tuple[Any, ...], _Ordered] = OrderedDict()
        for user in users:
            record = _record(user.customer, user.roles, user.user_url)
            self._by_id[record.id] = record
            self._emails[record.email_key] = record.id
            self._logins[record.login] = record.id
        self._ids = sorted(self._by_id)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def offset_hours(self) -> float:
        """The site's ``gmt_offset`` option."""
        return self._offset_s / 3600

    @property
    def registered_roles(self) -> tuple[str, ...]:
        """Role names in registration order (the ``role`` parameter's enum, minus "all")."""
        return tuple(self._roles)

    def get(self, user_id: int) -> Record | None:
        return self._by_id.get(user_id)

    def records(self) -> list[Record]:
        """Every user, ascending id."""
        return [self._by_id[user_id] for user_id in self._ids]

    def customers_json(self) -> str:
        """All customers as one JSON array, ascending id, without ``_links``."""
        return "[" + ",".join(self._by_id[i].json_open + "}" for i in self._ids) + "]"

    # -- queries -----------------------------------------------------------------------------

    def page(self, query: ListQuery) -> tuple[list[Record], int]:
        """The records of one page and the total number of matches."""
        ordered = self._ordered(query)
        start = query.offset
        stop = min(start + query.number, len(ordered.ids))
        if start >= stop:
            return [], len(ordered.ids)
        ids = self._window(ordered, start, stop)
        return [self._by_id[user_id] for user_id in ids], len(ordered.ids)

    def _ordered(self, query: ListQuery) -> _Ordered:
        shape = query.shape()
        cached = self._cache.get(shape)
        if cached is not None:
            self._cache.move_to_end(shape)
            return cached
        ordered = self._build(query)
        self._cache[shape] = ordered
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return ordered

    def _build(self, query: ListQuery) -> _Ordered:
        records = [self._by_id[user_id] for user_id in self._ids]
        if query.include:
            wanted = set(query.include)
            records = [r for r in records if r.id in wanted]
        elif query.exclude:
            unwanted = set(query.exclude)
            records = [r for r in records if r.id not in unwanted]
        if query.role != "all":
            records = [r for r in records if query.role in r.roles]
        if query.email:
            email = query.email.lower()
            records = [r for r in records if r.email_key == email]
        elif query.search:
            matches = _search_matcher(query.search)
            records = [r for r in records if matches(r)]

        tie_key: Callable[[Record], str] | None = None
        if query.orderby == "name":
            tie_key = _display_key
            records.sort(key=_display_key)
        elif query.orderby == "registered_date":
            tie_key = _registered_key
            records.sort(key=_registered_key)
        elif query.orderby == "include" and query.include:
            position = {user_id: index for index, user_id in enumerate(query.include)}
            records.sort(key=lambda r: position[r.id])
        elif query.orderby == "include":  # Without include, WordPress orders by user_login.
            records.sort(key=lambda r: r.login_key)
        if query.order == "desc":
            records.reverse()
        return _Ordered([r.id for r in records], tie_key)

    def _window(self, ordered: _Ordered, start: int, stop: int) -> list[int]:
        """``ids[start:stop]``, with boundary tie groups shuffled by where the page ends."""
        ids = ordered.ids
        window = ids[start:stop]
        key = ordered.tie_key
        if key is None:
            return window
        by_id = self._by_id
        for boundary in (start, stop - 1):
            value = key(by_id[ids[boundary]])
            low = boundary
            while low > 0 and key(by_id[ids[low - 1]]) == value:
                low -= 1
            high = boundary + 1
            while high < len(ids) and key(by_id[ids[high]]) == value:
                high += 1
            if low >= start and high <= stop:
                continue  # The whole group is on this page; its inner order does not matter.
            group = sorted(ids[low:high], key=lambda user_id: _mix(user_id, stop))
            for position in range(max(low, start), min(high, stop)):
                window[position - start] = group[position - low]
        return window

    # -- writes (control API) ----------------------------------------------------------------

    def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A new user from partial fields; missing ones get WordPress-like defaults."""
        fields = dict(fields)
        user_id = fields.pop("id", None)
        if user_id is None:
            user_id = (self._ids[-1] + 1) if self._ids else 1
        if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id < 1:
            raise StoreError("id must be a positive integer")
        if user_id in self._by_id:
            raise StoreError(f"user {user_id} already exists", 409)
        roles, user_url = self._hidden(fields, default_roles=("customer",))
        now = self._clock()
        email = fields.get("email", f"customer{user_id}@example.com")
        customer: dict[str, Any] = {
            "id": user_id,
            "date_created": data.wp_date(now + self._offset_s),
            "date_created_gmt": data.wp_date(now),
            "date_modified": data.wp_date(now + self._offset_s),
            "date_modified_gmt": data.wp_date(now),
            "email": email,
            "first_name": "",
            "last_name": "",
            "role": roles[0] if roles else "customer",
            "username": "",
            "billing": dict.fromkeys(BILLING_KEYS, ""),
            "shipping": dict.fromkeys(SHIPPING_KEYS, ""),
            "is_paying_customer": False,
            "avatar_url": data.avatar_url(email) if isinstance(email, str) else "",
            "meta_data": [],
        }
        self._apply(customer, fields)
        if not fields.get("username"):
            customer["username"] = self._free_login(customer["email"])
        self._check_unique(customer, user_id)
        self._put(_record(customer, roles, user_url))
        return customer

    def update(self, user_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Partial update (billing/shipping merged key by key); bumps date_modified."""
        record = self._require(user_id)
        fields = dict(fields)
        if fields.pop("id", user_id) != user_id:
            raise StoreError("id cannot be changed")
        roles, user_url = self._hidden(fields, default_roles=record.roles, record=record)
        customer = record.customer()
        old_email = customer["email"]
        self._apply(customer, fields)
        if "date_modified" not in fields and "date_modified_gmt" not in fields:
            now = self._clock()
            customer["date_modified"] = data.wp_date(now + self._offset_s)
            customer["date_modified_gmt"] = data.wp_date(now)
        if customer["email"] != old_email and "avatar_url" not in fields:
            customer["avatar_url"] = data.avatar_url(customer["email"])
        customer["role"] = roles[0] if roles else "customer"
        self._check_unique(customer, user_id)
        self._remove(record)
        self._put(_record(customer, roles, user_url))
        return customer

    def make_odd(self, kinds: Sequence[str]) -> dict[str, int]:
        """Turn customers (role ``customer``, spread evenly by id) into odd ones, one per kind
        (``data.odd_customer``); returns each kind's user id. A deep or unpaired-surrogate
        value is spliced into the record's JSON text, since ``json`` cannot write it; such a
        record is served as it is but cannot be edited through the control API."""
        for kind in kinds:
            try:
                data.parse_odd_kind(kind)
            except ValueError as error:
                raise StoreError(str(error)) from None
        taken: set[int] = set()
        candidates = [i for i in self._ids if self._by_id[i].role == "customer"]
        if len(candidates) < len(kinds):
            raise StoreError(f"the store has fewer than {len(kinds)} customers to make odd")
        chosen: dict[str, int] = {}
        for n, kind in enumerate(kinds):
            position = (n + 1) * len(candidates) // (len(kinds) + 1)
            while candidates[position] in taken:
                position = (position + 1) % len(candidates)
            user_id = candidates[position]
            taken.add(user_id)
            record = self._by_id[user_id]
            customer, splice = data.odd_customer(record.customer(), kind)
            odd = _record(customer, record.roles, record.user_url)
            if splice is not None:
                odd.json_open = odd.json_open.replace(wp.dumps(data.ODD_MARK), splice)
            self._remove(record)
            self._put(odd)
            chosen[kind] = user_id
        return chosen

    def delete(self, user_id: int) -> dict[str, Any]:
        record = self._require(user_id)
        self._remove(record)
        self._invalidate()
        return record.customer()

    def _require(self, user_id: int) -> Record:
        record = self._by_id.get(user_id)
        if record is None:
            raise StoreError(f"no user {user_id}", 404)
        return record

    def _hidden(
        self,
        fields: dict[str, Any],
        *,
        default_roles: tuple[str, ...],
        record: Record | None = None,
    ) -> tuple[tuple[str, ...], str]:
        """Pops the non-API columns (``roles``, ``user_url``) and resolves the role list."""
        roles = default_roles
        if "roles" in fields:
            raw = fields.pop("roles")
            if not isinstance(raw, list) or not all(isinstance(r, str) and r for r in raw):
                raise StoreError("roles must be a list of role names")
            roles = tuple(raw)
        elif "role" in fields:
            if not isinstance(fields["role"], str) or not fields["role"]:
                raise StoreError("role must be a non-empty string")
            roles = (fields["role"],)
        fields.pop("role", None)
        for role in roles:
            if role not in self._roles:
                self._roles.append(role)  # A plugin registering its role.
        user_url = fields.pop("user_url", None)
        if user_url is None:
            user_url = record.user_url if record else ""
        if not isinstance(user_url, str):
            raise StoreError("user_url must be a string")
        return roles, user_url

    def _apply(self, customer: dict[str, Any], fields: dict[str, Any]) -> None:
        """Validates ``fields`` and writes them into ``customer`` (which keeps its key order)."""
        for key, value in fields.items():
            if key not in CUSTOMER_KEYS:
                raise StoreError(f"unknown field {key!r}")
            if key in ("billing", "shipping"):
                self._merge_address(customer[key], key, value)
            elif key in _STRING_FIELDS:
                if not isinstance(value, str):
                    raise StoreError(f"{key} must be a string")
                customer[key] = value
            elif key == "is_paying_customer":
                if not isinstance(value, bool):
                    raise StoreError("is_paying_customer must be a boolean")
                customer[key] = value
            elif key == "meta_data":
                customer[key] = self._meta(value)
        for local, gmt in _DATE_PAIRS:
            if local in fields or gmt in fields:
                customer[local], customer[gmt] = self._date_pair(fields, local, gmt)

    @staticmethod
    def _merge_address(address: dict[str, str], name: str, value: Any) -> None:
        if not isinstance(value, dict):
            raise StoreError(f"{name} must be an object")
        for key, item in value.items():
            if key not in address:
                raise StoreError(f"unknown field {name}.{key}")
            if not isinstance(item, str):
                raise StoreError(f"{name}.{key} must be a string")
            address[key] = item

    @staticmethod
    def _meta(value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise StoreError("meta_data must be a list")
        entries: list[dict[str, Any]] = []
        next_id = 900_000_000
        for item in value:
            if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                raise StoreError("meta_data items need a string key")
            meta_id = item.get("id", next_id)
            if not isinstance(meta_id, int):
                raise StoreError("meta_data ids must be integers")
            next_id = max(next_id, meta_id) + 1
            entries.append({"id": meta_id, "key": item["key"], "value": item.get("value", "")})
        return entries

    def _date_pair(self, fields: dict[str, Any], local: str, gmt: str) -> tuple[Any, Any]:
        """Both dates of a pair; one given derives the other through the site offset."""
        for key in (local, gmt):
            value = fields.get(key)
            if key in fields and value is not None and not (
                isinstance(value, str) and _WP_DATE_RE.match(value)
            ):
                raise StoreError(f"{key} must be null or YYYY-MM-DDTHH:MM:SS")
        if local in fields and gmt in fields:
            return fields[local], fields[gmt]
        given = fields[local] if local in fields else fields[gmt]
        if given is None:
            return None, None
        epoch = datetime.fromisoformat(given).replace(tzinfo=UTC).timestamp()
        if local in fields:
            return given, data.wp_date(epoch - self._offset_s)
        return data.wp_date(epoch + self._offset_s), given

    def _free_login(self, email: str) -> str:
        base = email.split("@", 1)[0].split("+", 1)[0].lower() or "user"
        login, n = base, 1
        while login in self._logins:
            n += 1
            login = f"{base}-{n}"
        return login

    def _check_unique(self, customer: dict[str, Any], user_id: int) -> None:
        if not php.is_email(customer["email"]):
            raise StoreError("email is not a valid address")
        owner = self._emails.get(customer["email"].lower())
        if owner is not None and owner != user_id:
            raise StoreError(f"email already belongs to user {owner}", 409)
        owner = self._logins.get(customer["username"])
        if owner is not None and owner != user_id:
            raise StoreError(f"username already belongs to user {owner}", 409)

    def _put(self, record: Record) -> None:
        self._by_id[record.id] = record
        bisect.insort(self._ids, record.id)
        self._emails[record.email_key] = record.id
        self._logins[record.login] = record.id
        self._invalidate()

    def _remove(self, record: Record) -> None:
        del self._by_id[record.id]
        del self._ids[bisect.bisect_left(self._ids, record.id)]
        self._emails.pop(record.email_key, None)
        self._logins.pop(record.login, None)

    def _invalidate(self) -> None:
        self._cache.clear()


def _display_key(record: Record) -> str:
    return record.display_key


def _registered_key(record: Record) -> str:
    return record.registered


def _mix(user_id: int, salt: int) -> int:
    """A cheap deterministic shuffle key: same page end, same order of tied users."""
    h = ((user_id ^ (salt * 0x9E3779B1)) * 0x85EBCA6B) & 0xFFFFFFFF  # murmur3 finaliser
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def _search_matcher(search: str) -> Callable[[Record], bool]:
    """``WP_User_Query`` search: columns chosen from the term, ``*`` marks wildcards."""
    term = search.strip()
    leading, trailing = term.startswith("*"), term.endswith("*")
    term = term.strip("*")
    needle = collate(term)

    def like(value: str) -> bool:
        if leading and trailing:
            return needle in value
        if leading:
            return value.endswith(needle)
        if trailing:
            return value.startswith(needle)
        return value == needle

    if "@" in term:
        return lambda r: like(r.email_key)
    if php.is_numeric(term):
        number = float(term)
        return lambda r: like(r.login_key) or r.id == number
    if re.match(r"^https?://", term):
        return lambda r: like(collate(r.user_url))
    return lambda r: (
        like(r.login_key)
        or like(collate(r.user_url))
        or like(r.email_key)
        or like(nicename(r.login))
        or like(r.display_key)
    )
