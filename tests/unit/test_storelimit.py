"""The adaptive concurrency decision (shared.storelimit.Aimd), fed events: no clock, no I/O."""

from __future__ import annotations

import math

import pytest

from shared.storelimit import (
    MAX_PROBE_WINDOWS,
    PROBE_COST_RATIO,
    PROBE_WINDOWS,
    Aimd,
    Attempt,
    StoreGate,
    fair_share,
)


def window(aimd: Aimd, latency_s: float = 0.3, *, used: bool = True) -> bool:
    """One window of answers at the current limit; True when the limit changed."""
    epoch, limit = aimd.epoch, aimd.limit
    changed = False
    for position in range(1, limit + 1):
        in_flight = position if used else 1
        changed = aimd.answered(latency_s, in_flight=in_flight, epoch=epoch) or changed
    return changed


def test_slow_start_doubles_per_window_while_latency_is_flat_up_to_the_ceiling() -> None:
    aimd = Aimd(limit=4, ceiling=32)
    seen = [aimd.limit]
    for _ in range(5):
        window(aimd)
        seen.append(aimd.limit)
    assert seen == [4, 8, 16, 32, 32, 32]


def test_a_limit_not_reached_is_not_raised() -> None:
    aimd = Aimd(limit=4, ceiling=32)
    assert not window(aimd, used=False)
    assert aimd.limit == 4


def test_congestion_avoidance_adds_one_per_window() -> None:
    aimd = Aimd(limit=4, ceiling=32, slow_start=False)
    window(aimd)
    window(aimd)
    assert aimd.limit == 6


def test_a_burst_of_429s_lowers_the_limit_once() -> None:
    aimd = Aimd(limit=8, ceiling=32)
    epoch = aimd.epoch
    assert aimd.refused(in_flight=6, epoch=epoch)
    assert aimd.limit == 4  # slow start overshot: half
    for position in (5, 7, 8):  # sent before the decrease: old news
        assert not aimd.refused(in_flight=position, epoch=epoch)
    assert not aimd.answered(0.3, in_flight=4, epoch=epoch)
    assert aimd.limit == 4 and not aimd.slow_start


def test_a_429_in_congestion_avoidance_lowers_to_just_below_what_was_refused() -> None:
    aimd = Aimd(limit=10, ceiling=32, slow_start=False)
    aimd.refused(in_flight=7, epoch=aimd.epoch)
    assert aimd.limit == 6


def test_the_refused_level_is_probed_again_ever_more_rarely() -> None:
    aimd = Aimd(limit=5, ceiling=32, slow_start=False)
    aimd.refused(in_flight=5, epoch=aimd.epoch)
    assert aimd.limit == 4
    waits = []
    for _ in range(3):
        windows = 1
        while not window(aimd):
            windows += 1
        assert aimd.limit == 5  # the probe
        waits.append(windows)
        aimd.refused(in_flight=5, epoch=aimd.epoch)  # refused again
        assert aimd.limit == 4
    assert waits == [PROBE_WINDOWS, 2 * PROBE_WINDOWS, 4 * PROBE_WINDOWS]


def test_a_probe_that_holds_for_a_window_frees_the_way_up() -> None:
    aimd = Aimd(limit=5, ceiling=32, slow_start=False)
    aimd.refused(in_flight=5, epoch=aimd.epoch)
    while not window(aimd):
        pass
    assert aimd.limit == 5
    window(aimd)  # a whole window at 5 without a 429
    assert aimd.limit == 6 and aimd.refused_at is None
    window(aimd)
    assert aimd.limit == 7


def test_a_refused_probe_that_cost_a_pause_waits_ten_times_that_pause() -> None:
    """A 429 with Retry-After stops every request to the store for that long: the level it
    refused is probed again only after windows lasting PROBE_COST_RATIO times the pause."""
    aimd = Aimd(limit=5, ceiling=32, slow_start=False)
    aimd.refused(in_flight=5, epoch=aimd.epoch, pause_s=1.0)
    assert aimd.limit == 4
    windows = 1
    while not window(aimd, 0.3):
        windows += 1
    assert aimd.limit == 5
    assert windows == math.ceil(PROBE_COST_RATIO * 1.0 / 0.3) > PROBE_WINDOWS
    # Refused again with a pause too short to matter: the window count rules (doubled).
    aimd.refused(in_flight=5, epoch=aimd.epoch, pause_s=0.01)
    windows = 1
    while not window(aimd, 0.3):
        windows += 1
    assert windows == 2 * PROBE_WINDOWS


def test_a_long_pause_keeps_the_store_at_its_level_for_the_whole_crawl() -> None:
    """A store at its limit asking for 30 s pauses: one probe at most in 500 windows of 0.3 s
    (150 s), so the crawl loses at most about a tenth of its time to refused probes."""
    aimd = Aimd(limit=4, ceiling=32, slow_start=False)
    aimd.refused(in_flight=5, epoch=aimd.epoch, pause_s=30.0)
    limits = [aimd.limit]
    for _ in range(500):
        window(aimd, 0.3)
        limits.append(aimd.limit)
    assert max(limits) == 4  # 30 s x 10 = 300 s of windows before the first probe


async def test_the_gate_weighs_a_refusal_by_its_capped_retry_after() -> None:
    aimd = Aimd(limit=5, ceiling=32, slow_start=False)
    gate = StoreGate("store", aimd, pool=None, max_pause_s=30.0, clock=lambda: 100.0)  # type: ignore[arg-type]
    Attempt(gate, in_flight=5, epoch=aimd.epoch, started=99.7).refused(429, 3600.0)
    assert aimd.limit == 4
    assert aimd.probe_after_s == PROBE_COST_RATIO * 30.0  # the pause the gate keeps
    Attempt(gate, in_flight=4, epoch=aimd.epoch, started=99.7).refused(429)  # no Retry-After
    assert aimd.limit == 3 and aimd.probe_after_s == 0.0


def test_probe_waits_are_bounded() -> None:
    aimd = Aimd(limit=5, ceiling=32, slow_start=False)
    for _ in range(10):
        aimd.refused(in_flight=5, epoch=aimd.epoch)
    assert aimd.probe_windows == MAX_PROBE_WINDOWS


def test_growing_latency_without_more_pages_per_second_goes_back_to_the_best_limit() -> None:
    aimd = Aimd(limit=16, ceiling=32, slow_start=False)
    window(aimd, 0.3)
    assert aimd.limit == 17
    assert not window(aimd, 0.3 * 2)  # one slow window may be noise
    window(aimd, 0.3 * 2)  # twice as slow again: fewer pages per second than at 16
    assert aimd.limit == 16


def test_a_single_slow_window_between_flat_ones_changes_nothing_but_the_pace() -> None:
    aimd = Aimd(limit=16, ceiling=32, slow_start=False)
    window(aimd, 0.3)
    window(aimd, 0.9)
    window(aimd, 0.3)
    window(aimd, 0.9)
    assert aimd.limit == 18


def test_latency_within_the_tolerance_keeps_raising() -> None:
    aimd = Aimd(limit=16, ceiling=32, slow_start=False)
    window(aimd, 0.3)
    window(aimd, 0.4)
    assert aimd.limit == 18


def test_5xx_and_timeouts_lower_the_limit_multiplicatively() -> None:
    aimd = Aimd(limit=10, ceiling=32, slow_start=False)
    assert aimd.failed(epoch=aimd.epoch)
    assert aimd.limit == 7


def test_the_limit_stays_between_one_and_the_ceiling() -> None:
    aimd = Aimd(limit=50, ceiling=6)
    assert aimd.limit == 6
    for _ in range(5):
        window(aimd)
    assert aimd.limit == 6
    for _ in range(10):
        aimd.refused(in_flight=1, epoch=aimd.epoch)
        aimd.failed(epoch=aimd.epoch)
    assert aimd.limit == 1
    with pytest.raises(ValueError):
        Aimd(limit=1, ceiling=0)


def test_adopting_another_process_decision_starts_a_fresh_window() -> None:
    aimd = Aimd(limit=8, ceiling=32, slow_start=False)
    epoch = aimd.epoch
    aimd.adopt(5)
    assert aimd.limit == 5 and aimd.epoch != epoch
    assert not aimd.refused(in_flight=8, epoch=epoch)
    aimd.adopt(100)
    assert aimd.limit == 32


def drive(aimd: Aimd, rounds: int, answer: object) -> list[int]:
    """Rounds of ``limit`` requests sent at once; ``answer(position, limit)`` is a latency, or
    None for a 429. Returns the limit of each round."""
    limits = []
    for _ in range(rounds):
        limit, epoch = aimd.limit, aimd.epoch
        limits.append(limit)
        for position in range(1, limit + 1):
            latency = answer(position, limit)  # type: ignore[operator]
            if latency is None:
                aimd.refused(in_flight=position, epoch=epoch)
            else:
                aimd.answered(latency, in_flight=position, epoch=epoch)
    return limits


def test_a_store_refusing_above_four_in_flight_is_read_at_four_nearly_always() -> None:
    aimd = Aimd(limit=4, ceiling=32)
    limits = drive(aimd, 200, lambda position, limit: None if position > 4 else 0.3)
    settled = limits[5:]
    assert max(settled) == 5  # probes only, after 8, 16, 32, 64 and 64 windows
    assert settled.count(5) == 5
    assert settled.count(4) == len(settled) - 5
    assert aimd.limit == 4


def test_a_store_flat_up_to_sixteen_is_read_at_sixteen_or_more() -> None:
    aimd = Aimd(limit=4, ceiling=32)
    limits = drive(aimd, 200, lambda position, limit: 0.3 * max(1.0, limit / 16))
    settled = limits[10:]
    assert min(settled) >= 16
    assert max(settled) <= 25  # beyond 1.5x the flat latency (24) it backs off


def test_a_store_slowing_less_than_it_gains_is_read_ever_wider() -> None:
    """Latency grows with what is in flight, but less than in proportion (a page is mostly
    waiting, partly work the store does one at a time): pages per second still grow."""
    aimd = Aimd(limit=4, ceiling=32)
    limits = drive(aimd, 100, lambda position, limit: 0.3 + 0.01 * limit)
    assert min(limits[-20:]) >= 20  # 20 / 0.5 s is 1.9 times 8 / 0.38 s


def test_a_store_that_only_queues_beyond_its_capacity_is_not_flooded() -> None:
    aimd = Aimd(limit=4, ceiling=64)
    limits = drive(aimd, 300, lambda position, limit: 0.3 * max(1.0, limit / 16))
    assert max(limits[20:]) <= 25


def test_fair_share() -> None:
    assert fair_share(8, 8, 0, 0) == 8  # alone: all of it
    assert fair_share(8, 8, 8, 1) == 0  # the other holds all: nothing until it shrinks
    assert fair_share(8, 8, 4, 1) == 4
    assert fair_share(8, 3, 0, 1) == 3  # wants less than its part
    assert fair_share(8, 8, 2, 2) == 3  # three readers: at most ceil(8 / 3)
    assert fair_share(2, 2, 0, 3) == 1


def test_what_is_remembered_is_never_a_level_the_store_refused() -> None:
    aimd = Aimd(limit=5, ceiling=32, slow_start=False)
    aimd.refused(in_flight=5, epoch=aimd.epoch)
    while not window(aimd):
        pass
    assert (aimd.limit, aimd.learned) == (5, 4)  # a probe under way
    aimd.refused(in_flight=5, epoch=aimd.epoch)
    assert (aimd.limit, aimd.learned) == (4, 4)


def test_a_remembered_limit_is_kept_a_while_before_going_above_it() -> None:
    aimd = Aimd(limit=4, ceiling=32)
    aimd.resume(6)
    assert aimd.limit == 6 and not aimd.slow_start
    for _ in range(PROBE_WINDOWS - 1):
        assert not window(aimd)
    assert window(aimd)
    assert aimd.limit == 7
