"""A store of millions of users in the memory of a few thousand: the ``--bulk`` mode.

The ordinary store generates every user at start and keeps each one's JSON (about 4 kB of
memory a user: 4 GB and minutes of generation for a million). A bulk store generates a *base*
of ``BULK_BASE`` users the ordinary way and serves user number ``k`` (0-based, in id order) as
a copy of base user ``k mod B`` in *cycle* ``k div B``, made when a page asks for it:

* its id is ``cycle * span + base id``, where ``span`` is the base's highest id, so ids ascend
  with ``k`` and keep the base's gaps;
* from the second cycle on, its account email (wherever it appears verbatim: ``email``, the
  billing email when it is the same, a username that is the email) gets ``+c<cycle>`` in its
  local part, so accounts stay distinct.

Everything else (names, addresses, meta data, roles, dates) is the base user's. Memory and start
time are those of the base, whatever ``customers`` says; a page costs a string copy per user.

A bulk store is for reading at scale (benchmarks): every listing is in id order, ascending or
descending (WooCommerce's other orders and the filters are refused), and the control API's
writes are refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from tools.woosim import data, wp
from tools.woosim.data import GeneratedUser
from tools.woosim.store import CustomerStore, ListQuery, Record, StoreError

BULK_BASE = 10_000
_READ_ONLY = "a bulk store (woosim --bulk) is read-only"


def _email_parts(record: Record) -> tuple[str, str, str]:
    email: str = record.customer()["email"]
    if not email:
        return "", "", ""
    local, _, domain = email.partition("@")
    return wp.dumps(email), local, domain


class BulkStore(CustomerStore):
    """``count`` users cycled from the generated ``base`` (see the module docstring)."""

    def __init__(
        self,
        count: int,
        base: Iterable[GeneratedUser],
        *,
        tz_offset: str = data.DEFAULT_TZ_OFFSET,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(base, tz_offset=tz_offset, clock=clock)
        self._base: list[Record] = super().records()
        self._position = {record.id: n for n, record in enumerate(self._base)}
        self._span = self._base[-1].id if self._base else 1
        # Each base user's account email: as its JSON shows it, and split at the "@".
        self._emails = [_email_parts(record) for record in self._base]
        self._count = count if self._base else 0

    def __len__(self) -> int:
        return self._count

    def _clone(self, k: int) -> Record:
        cycle, index = divmod(k, len(self._base))
        base = self._base[index]
        if cycle == 0:
            return base
        user_id = cycle * self._span + base.id
        head = f'{{"id":{base.id},'
        if not base.json_open.startswith(head):  # pragma: no cover - wp.dumps keeps key order
            raise RuntimeError(f"user {base.id}'s JSON does not start with its id")
        text = f'{{"id":{user_id},' + base.json_open[len(head) :]
        shown, local, domain = self._emails[index]
        if shown:
            text = text.replace(shown, wp.dumps(f"{local}+c{cycle}@{domain}"))
        return replace(base, id=user_id, json_open=text, email_key=f"c{cycle}:{base.email_key}")

    def get(self, user_id: int) -> Record | None:
        if user_id < 1:
            return None
        cycle = (user_id - 1) // self._span
        index = self._position.get(user_id - cycle * self._span)
        if index is None:
            return None
        k = cycle * len(self._base) + index
        return self._clone(k) if k < self._count else None

    def records(self) -> list[Record]:
        raise StoreError(f"{_READ_ONLY}: its users are not listed whole")

    def customers_json(self) -> str:
        raise StoreError(f"{_READ_ONLY}: its users are not listed whole")

    def page(self, query: ListQuery) -> tuple[list[Record], int]:
        if query.include or query.exclude or query.search or query.email or query.role != "all":
            raise StoreError("a bulk store answers role=all without filters only")
        start = query.offset
        stop = min(start + query.number, self._count)
        if start >= stop:
            return [], self._count
        if query.order == "desc":
            positions: Sequence[int] = range(self._count - 1 - start, self._count - 1 - stop, -1)
        else:
            positions = range(start, stop)
        return [self._clone(k) for k in positions], self._count

    def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        raise StoreError(_READ_ONLY)

    def update(self, user_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        raise StoreError(_READ_ONLY)

    def delete(self, user_id: int) -> dict[str, Any]:
        raise StoreError(_READ_ONLY)

    def make_odd(self, kinds: Sequence[str]) -> dict[str, int]:
        raise StoreError(_READ_ONLY)
