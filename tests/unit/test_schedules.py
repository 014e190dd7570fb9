"""Schedules: validation and the computation of fires (shared.schedules), without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.schedules import (
    InvalidSchedule,
    ScheduleIn,
    Spec,
    first_fire,
    missed_slots,
    next_after_due,
    validate,
)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_an_interval_fires_one_interval_after_it_is_set() -> None:
    assert first_fire(Spec(3600, None), T0) == T0 + timedelta(hours=1)


def test_a_fire_on_time_moves_one_interval_on() -> None:
    spec = Spec(600, None)
    assert next_after_due(spec, T0, T0) == T0 + timedelta(minutes=10)
    assert next_after_due(spec, T0, T0 + timedelta(seconds=3)) == T0 + timedelta(minutes=10)
    assert missed_slots(spec, T0, T0 + timedelta(seconds=3)) == 1


def test_missed_interval_fires_run_once_then_the_next_future_slot_keeps_the_phase() -> None:
    spec = Spec(600, None)
    back = T0 + timedelta(minutes=47)  # slots at :00, :10, :20, :30, :40 were all missed
    assert next_after_due(spec, T0, back) == T0 + timedelta(minutes=50)
    assert missed_slots(spec, T0, back) == 5


def test_a_slot_exactly_now_is_not_fired_twice() -> None:
    spec = Spec(600, None)
    now = T0 + timedelta(minutes=20)
    assert next_after_due(spec, T0, now) == T0 + timedelta(minutes=30)


@given(
    interval=st.integers(min_value=1, max_value=86_400 * 7),
    late=st.floats(min_value=0, max_value=86_400 * 60, allow_nan=False),
)
def test_the_next_interval_fire_is_in_the_future_and_in_phase(interval: int, late: float) -> None:
    spec = Spec(interval, None)
    now = T0 + timedelta(seconds=late)
    nxt = next_after_due(spec, T0, now)
    assert now < nxt <= now + timedelta(seconds=interval)
    assert (nxt - T0).total_seconds() % interval == pytest.approx(0, abs=1e-3)


def test_cron_fires_at_its_next_time_in_its_time_zone() -> None:
    spec = Spec(None, "0 3 * * *", "Europe/Berlin")
    # 12:00 UTC is 13:00 in Berlin in December: the next 03:00 there is 02:00 UTC tomorrow.
    assert first_fire(spec, T0) == datetime(2026, 12, 4, 2, 0, tzinfo=UTC)


def test_missed_cron_fires_run_once_then_the_next_future_time() -> None:
    spec = Spec(None, "*/15 * * * *")
    due = T0 + timedelta(minutes=15)
    back = T0 + timedelta(hours=2, minutes=5)  # 12:15 ... 14:00 missed: 8 slots
    assert next_after_due(spec, due, back) == T0 + timedelta(hours=2, minutes=15)
    assert missed_slots(spec, due, back) == 8


def test_cron_across_a_daylight_saving_change() -> None:
    spec = Spec(None, "30 2 * * *", "Europe/Berlin")
    # 2026-03-29: 02:30 does not exist in Berlin; the fire is not lost nor doubled.
    before = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    first = first_fire(spec, before)
    second = next_after_due(spec, first, first)
    assert before < first < second
    assert second - first >= timedelta(hours=22)


def test_cron_fires_once_in_a_repeated_hour() -> None:
    spec = Spec(None, "30 2 * * *", "Europe/Berlin")
    # 2026-10-25: 02:30 happens twice in Berlin; the schedule fires once that day.
    first = first_fire(spec, datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    second = next_after_due(spec, first, first)
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert second == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


def test_a_cron_slot_exactly_now_is_not_fired_twice() -> None:
    spec = Spec(None, "0 * * * *")
    assert next_after_due(spec, T0, T0) == T0 + timedelta(hours=1)


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        (ScheduleIn(interval_s=59), "interval_s"),
        (ScheduleIn(), "interval_s"),
        (ScheduleIn(interval_s=600, cron="* * * * *"), "interval_s"),
        (ScheduleIn(cron="61 * * * *"), "cron"),
        (ScheduleIn(cron="every day"), "cron"),
        (ScheduleIn(cron="* * * * *"), "cron"),  # every minute, under a 120 s minimum below
        (ScheduleIn(interval_s=600, timezone="Mars/Olympus"), "timezone"),
    ],
)
def test_a_bad_schedule_names_its_field(schedule: ScheduleIn, field: str) -> None:
    with pytest.raises(InvalidSchedule) as raised:
        validate(schedule, min_interval_s=120 if schedule.cron == "* * * * *" else 60)
    assert raised.value.field == field
    assert str(raised.value).startswith(field + ": ")


def test_good_schedules_are_kept_as_given() -> None:
    assert validate(ScheduleIn(interval_s=60), min_interval_s=60) == Spec(60, None, "UTC")
    assert validate(
        ScheduleIn(cron="0  3 * * 1-5", timezone="America/New_York"), min_interval_s=60
    ) == Spec(None, "0 3 * * 1-5", "America/New_York")
