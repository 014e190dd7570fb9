"""The tracker's rate samples (services.tracker.rates): settled lines per second over the recent
window, from the counts each recompute sees, on a clock the test moves by hand."""

from __future__ import annotations

from uuid import uuid4

from services.tracker.rates import RateWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_job_started_from_its_lines_has_the_lines_rate_at_once() -> None:
    clock, job = Clock(), uuid4()
    rates = RateWindow(30.0, clock)
    # An hour-old job that settled 60 of its 500 lines in the last 30 s runs at 2/s.
    rates.start(job, settled=500, recent=60, age_s=3600.0)
    assert rates.rate(job, 500) == 2.0
    # A job 10 s old that settled 20 is measured over its age.
    young = uuid4()
    rates.start(young, settled=20, recent=20, age_s=10.0)
    assert rates.rate(young, 20) == 2.0


def test_the_window_slides_with_the_samples() -> None:
    clock, job = Clock(), uuid4()
    rates = RateWindow(30.0, clock)
    rates.start(job, settled=0, recent=0, age_s=0.0)
    for second in range(1, 61):  # 10 a second for a minute
        clock.now += 1
        rate = rates.rate(job, 10 * second)
    assert rate == 10.0
    for _ in range(15):  # then it stalls: half the window moved nothing
        clock.now += 1
        rate = rates.rate(job, 600)
    assert rate == 5.0
    clock.now += 20  # the whole window without a settled line
    assert rates.rate(job, 600) == 0.0


def test_nothing_settled_is_zero_at_any_age_and_a_first_second_is_unknown() -> None:
    clock, job = Clock(), uuid4()
    rates = RateWindow(30.0, clock)
    rates.start(job, settled=0, recent=0, age_s=0.2)
    assert rates.rate(job, 0) == 0.0
    clock.now += 0.3
    assert rates.rate(job, 5) is None  # 5 settled within its first half second
    clock.now += 1.0
    assert rates.rate(job, 5) == round(5 / 1.5, 2)


def test_fewer_settled_after_a_retry_is_no_negative_rate() -> None:
    clock, job = Clock(), uuid4()
    rates = RateWindow(30.0, clock)
    rates.start(job, settled=100, recent=0, age_s=600.0)
    clock.now += 5
    assert rates.rate(job, 40) == 0.0


def test_final_and_idle_jobs_are_forgotten() -> None:
    clock = Clock()
    rates = RateWindow(30.0, clock)
    done, idle, busy = uuid4(), uuid4(), uuid4()
    for job in (done, idle, busy):
        rates.start(job, settled=0, recent=0, age_s=100.0)
        rates.rate(job, 0)
    rates.forget(done)
    clock.now += 61
    rates.rate(busy, 0)
    rates.forget_idle()
    assert (rates.knows(done), rates.knows(idle), rates.knows(busy)) == (False, False, True)
