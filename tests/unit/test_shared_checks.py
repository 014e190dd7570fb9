"""The rechecks of open progress streams, shared (services.tracker.feeds.SharedChecks): the
streams of one key share its read, and their lease renewals go out together."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

from services.tracker.feeds import SharedChecks

STREAMS = 50


async def test_the_streams_of_one_key_share_one_read_and_one_renewal() -> None:
    reads: list[UUID] = []
    renewed: list[list[UUID]] = []
    revoked: set[UUID] = set()

    async def check(key_id: UUID, org_id: UUID) -> bool:
        reads.append(key_id)
        await asyncio.sleep(0)
        return key_id not in revoked

    async def renew_many(leases: list[UUID]) -> None:
        renewed.append(sorted(leases))

    checks = SharedChecks(check, renew_many, interval_s=3600.0)  # answers stay fresh here
    key, other, org = uuid4(), uuid4(), uuid4()
    leases = [uuid4() for _ in range(STREAMS)]

    async def stream(lease: UUID) -> bool:
        if not await checks.key_is_active(key, org):
            return False
        checks.renew(lease)
        return True

    assert all(await asyncio.gather(*(stream(lease) for lease in leases)))
    assert reads == [key]  # one read for every stream of the key
    revoked.add(other)
    assert await checks.key_is_active(other, org) is False  # each key its own answer
    assert reads == [key, other]


async def test_renewals_asked_for_together_go_out_in_one_statement() -> None:
    renewed: list[list[UUID]] = []

    async def renew_many(leases: list[UUID]) -> None:
        renewed.append(sorted(leases))

    async def check(key_id: UUID, org_id: UUID) -> bool:
        return True

    checks = SharedChecks(check, renew_many, interval_s=0.1)
    leases = [uuid4() for _ in range(STREAMS)]
    for lease in leases:
        checks.renew(lease)
    async with asyncio.timeout(10):
        while not renewed:
            await asyncio.sleep(0.01)
    assert renewed == [sorted(leases)]
