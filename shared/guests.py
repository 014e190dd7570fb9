"""Guest buyers: the store's orders without an account, as one customer per e-mail address.

Pure functions, no I/O. The fetcher feeds every guest order of a crawl to a :class:`GuestBook`
(windows overlap, so an order may come twice: it counts once); once the orders crawl is proven
complete, :meth:`GuestBook.customers` gives one customer document per guest, which travels and
is stored like an account customer's (``shared.mapping`` knows it by ``woosync_guest``).

Decisions (docs/architecture.md, "Guest buyers"):

- **Key**: the billing e-mail, trimmed of surrounding whitespace, in Unicode NFC and lower case
  (``str.lower``, the whole address: WooCommerce and mail providers treat addresses without
  regard to case). An internationalised domain is not converted to punycode: ``bücher.de`` and
  ``xn--bcher-kva.de`` are two guests (stores send what the buyer typed, which is the first).
- **No usable e-mail** (null, empty, only whitespace, not an address): the order is skipped and
  counted; it never fails the job, and no row is keyed by anything else (a name or an address
  would merge strangers).
- **Newest order wins**: the guest's name, phone, billing and shipping are those of its order
  with the highest id (ids ascend with creation); ``date_created_gmt`` is its first order's,
  ``date_modified_gmt`` its newest order's (so a replayed older version is left alone).
- **Identity**: a guest has no store id; its ``woo_id`` is negative, derived from the key
  (:func:`guest_woo_id`), so the same guest gets the same row on every sync.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

MAX_EMAIL = 320
MAX_WOO_ID = 2**63 - 1
GUEST_MARK = "woosync_guest"  # the key that marks a customer document as a guest's
MAX_SKIPPED_SHOWN = 20
# The fields of an order a guest is built from (kept in memory until the crawl is proven).
KEPT_FIELDS = ("billing", "shipping", "date_created_gmt")

_WHITESPACE = re.compile(r"\s")


def normalize_email(value: Any) -> str | None:
    """The guest key of a billing e-mail, or None when it is no usable address."""
    if not isinstance(value, str):
        return None
    text = unicodedata.normalize("NFC", value.strip()).lower()
    if not text or len(text) > MAX_EMAIL or _WHITESPACE.search(text) or "\x00" in text:
        return None
    local, at, domain = text.partition("@")
    if not at or not local or not domain or "@" in domain:
        return None
    return text


def guest_woo_id(key: str) -> int:
    """The negative woo_id of the guest with ``key``: the same key always gives the same id.

    Account customers have positive ids, so the two never meet; the fetcher's rejected items are
    negative too, but hashed from other text (a clash has a chance of 2^-63)."""
    digest = hashlib.sha256(b"guest\x00" + key.encode("utf-8")).digest()
    return -(1 + int.from_bytes(digest[:8], "big") % MAX_WOO_ID)


def is_guest_order(order: Any) -> bool:
    """An order without an account: ``customer_id`` 0. Checked here even though the request
    asks the store for ``customer=0`` (older HPOS builds ignored or mishandled the filter)."""
    if not isinstance(order, dict):
        return False
    customer_id = order.get("customer_id")
    return customer_id == 0 and not isinstance(customer_id, bool)


def order_id(order: Any) -> int | None:
    """An order's id when usable (a positive integer), else None."""
    if not isinstance(order, dict):
        return None
    value = order.get("id")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_WOO_ID:
        return None
    return value


@dataclass
class _Guest:
    orders: int = 0
    first: dict[str, Any] = field(default_factory=dict)
    first_id: int = 0
    newest: dict[str, Any] = field(default_factory=dict)
    newest_id: int = 0


@dataclass
class GuestBook:
    """The guests of one orders crawl: fed orders (repeats ignored), gives customers."""

    _guests: dict[str, _Guest] = field(default_factory=dict)
    _seen: set[int] = field(default_factory=set)
    skipped: list[int] = field(default_factory=list)  # guest orders without a usable e-mail
    account_orders: int = 0  # orders of account customers the store sent anyway
    unusable: set[int] = field(default_factory=set)  # items without a usable id (their hashes)

    def add(self, order: Any) -> None:
        oid = order_id(order)
        if oid is None or oid in self._seen:
            return
        self._seen.add(oid)
        if not is_guest_order(order):
            self.account_orders += 1
            return
        billing = order.get("billing")
        key = normalize_email(billing.get("email") if isinstance(billing, dict) else None)
        if key is None:
            self.skipped.append(oid)
            return
        guest = self._guests.setdefault(key, _Guest())
        guest.orders += 1
        order = {name: order.get(name) for name in KEPT_FIELDS}  # only what a guest is made of
        if guest.first_id == 0 or oid < guest.first_id:
            guest.first, guest.first_id = order, oid
        if oid > guest.newest_id:
            guest.newest, guest.newest_id = order, oid

    @property
    def orders_read(self) -> int:
        """Distinct orders seen (guests', skipped, account customers' and unusable items)."""
        return len(self._seen) + len(self.unusable)

    def __len__(self) -> int:
        return len(self._guests)

    def customers(self) -> list[dict[str, Any]]:
        """One customer document per guest, in ascending woo_id order."""
        docs = [guest_customer(key, guest) for key, guest in self._guests.items()]
        return sorted(docs, key=lambda doc: doc["id"])


def guest_customer(key: str, guest: _Guest) -> dict[str, Any]:
    """The customer document of one guest (see the module docstring for what comes from where)."""
    newest = guest.newest
    billing = newest.get("billing") if isinstance(newest.get("billing"), dict) else {}
    shipping = newest.get("shipping") if isinstance(newest.get("shipping"), dict) else {}
    email = billing.get("email")
    return {
        "id": guest_woo_id(key),
        "email": email.strip() if isinstance(email, str) else key,
        "first_name": billing.get("first_name") or "",
        "last_name": billing.get("last_name") or "",
        "username": "",
        "role": "guest",
        "billing": billing,
        "shipping": shipping,
        "date_created_gmt": guest.first.get("date_created_gmt"),
        "date_modified_gmt": newest.get("date_created_gmt"),
        GUEST_MARK: {
            "key": key,
            "orders": guest.orders,
            "first_order_id": guest.first_id,
            "last_order_id": guest.newest_id,
        },
    }
