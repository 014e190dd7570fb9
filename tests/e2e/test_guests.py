"""Guest buyers end to end: the four services as processes and simulated stores with orders.

A store with account customers and guest orders (the same buyer's address in several spellings,
orders without an e-mail, an account customer's order) is synced with ``include_guests``: the
account customers and one row per distinct guest are stored, kept apart (kind, guest_key), the
orders without an e-mail create nothing and fail nothing. A second sync (the connection keeps the
option) writes nothing new except the guest whose newer order changed its billing. A store synced
without the option gets no guest row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.guests import guest_woo_id
from shared.settings import Settings
from tests.e2e.harness import new_org, start_sync, wait_final
from tests.e2e.processes import fetch, running_stack
from tools.woosim.testing import spawn_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CUSTOMERS = 25


def order(email: Any, first: str, *, customer_id: int = 0, day: int = 1) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "billing": {"email": email, "first_name": first, "last_name": "Buyer", "phone": first},
        "shipping": {"city": first},
        "date_created_gmt": f"2024-05-{day:02d}T12:00:00",
    }


ORDERS = [
    order("Ann@Example.com", "Ann1", day=1),
    order("bob@example.com", "Bob", day=2),
    order("  ann@example.com", "Ann2", day=3),
    order("", "NoMail", day=4),
    order(None, "NullMail", day=5),
    order("carl@example.com", "Carl", customer_id=2, day=6),
    order("ANN@EXAMPLE.COM ", "Ann3", day=7),
] + [order(f"g{n}@example.com", f"G{n}", day=8) for n in range(14)]
KEYS = {"ann@example.com", "bob@example.com"} | {f"g{n}@example.com" for n in range(14)}


async def rows_of(settings: Settings, org_id: str) -> list[Any]:
    return await fetch(
        settings,
        "SELECT woo_id, kind, guest_key, email, first_name, billing, raw, xmin::text AS version"
        " FROM customer WHERE org_id = $1::uuid ORDER BY woo_id",
        org_id,
    )


async def test_guest_buyers_sync_apart_and_idempotently(settings: Settings, tmp_path: Path) -> None:
    with (
        spawn_simulator(customers=CUSTOMERS, seed=21) as sim,
        spawn_simulator(customers=CUSTOMERS, seed=22) as plain,
    ):
        await sim.add_orders(*ORDERS)
        await plain.add_orders(*ORDERS)
        async with running_stack(settings, tmp_path) as stack:
            org = await new_org(settings, "guests")
            job = await start_sync(stack, org, sim, batch_size=10, include_guests=True)
            final = await wait_final(settings, job["job_id"])
            assert final["state"] == "done", final["last_error"]
            assert final["include_guests"] is True
            assert (final["total"], final["done_count"], final["failed_count"]) == (
                CUSTOMERS + len(KEYS),
                CUSTOMERS + len(KEYS),
                0,
            )

            rows = await rows_of(settings, org.org_id)
            accounts = [r for r in rows if r["kind"] == "account"]
            guests = {r["guest_key"]: r for r in rows if r["kind"] == "guest"}
            assert len(accounts) == CUSTOMERS and all(r["woo_id"] > 0 for r in accounts)
            assert set(guests) == KEYS
            ann = guests["ann@example.com"]
            assert ann["woo_id"] == guest_woo_id("ann@example.com")
            assert ann["first_name"] == "Ann3" and ann["email"] == "ANN@EXAMPLE.COM"
            assert ann["billing"]["phone"] == "Ann3"
            assert ann["raw"]["woosync_guest"]["orders"] == 3
            assert not any(r["first_name"] in ("NoMail", "NullMail", "Carl") for r in rows)
            skipped = await fetch(
                settings,
                "SELECT level, details FROM woo_sync_activity"
                " WHERE job_id = $1::uuid AND event = 'fetch.guests'",
                job["job_id"],
            )
            assert [(s["level"], s["details"]["skipped_no_email"]) for s in skipped] == [
                ("warning", 2)
            ]

            # Ann orders again under another name; the connection keeps include_guests.
            await sim.add_orders(order("ann@EXAMPLE.com", "Ann4", day=20))
            again = await start_sync(stack, org, sim, batch_size=10)
            second = await wait_final(settings, again["job_id"])
            assert second["state"] == "done" and second["include_guests"] is True
            after = await rows_of(settings, org.org_id)
            assert [r["woo_id"] for r in after] == [r["woo_id"] for r in rows]  # no new row
            before = {r["woo_id"]: r["version"] for r in rows}
            changed = {r["woo_id"] for r in after if before[r["woo_id"]] != r["version"]}
            assert changed == {ann["woo_id"]}  # only the guest with a newer order is rewritten
            new_ann = next(r for r in after if r["woo_id"] == ann["woo_id"])
            assert new_ann["first_name"] == "Ann4"
            assert new_ann["raw"]["woosync_guest"]["orders"] == 4

            # A store synced without the option: no guest row, the orders are not read.
            other = await new_org(settings, "no-guests")
            third = await start_sync(stack, other, plain, batch_size=10)
            done = await wait_final(settings, third["job_id"])
            assert done["state"] == "done" and done["include_guests"] is False
            plain_rows = await rows_of(settings, other.org_id)
            assert len(plain_rows) == CUSTOMERS
            assert {r["kind"] for r in plain_rows} == {"account"}
            assert not any("/orders" in r.get("path", "") for r in await plain.requests())
