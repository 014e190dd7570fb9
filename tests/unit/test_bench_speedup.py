"""bench.speedup reads the summary row of either version of bench.throughput."""

import pytest

from bench.speedup import Run, parse_row

BASELINE_OUTPUT = """\
== summary ==
concurrency 4, store latency 0 ms/page, 100 per page
 customers  floor c/s  pipeline c/s  ratio   synced  peak RSS MB  CPU s
   100,000     34,967         2,579   0.07  100,000  73, 81, 78, 65  0.1, 10.1
"""

CURRENT_OUTPUT = """\
   100,000  41,000  41k/40k         6,100   0.15    1.43x     1.02x   99,000  80, 85, 88, 78    0.1
== summary ==
concurrency 4, store latency 0 ms/page, 100 per page; targets: >= 6,000 customers/s
 customers        floor c/s  pipeline c/s  ratio vs issue vs target   synced  peak RSS MB  CPU s
   100,000  42,543  43k/42k         7,003   0.16    1.56x     1.17x  100,000  80, 85, 88, 78    0.1
"""


def test_the_baseline_row_is_read_by_its_columns() -> None:
    assert parse_row(BASELINE_OUTPUT, 100_000) == Run(34_967, 2_579, 100_000)


def test_the_current_row_skips_the_floor_reads_and_takes_the_summary() -> None:
    assert parse_row(CURRENT_OUTPUT, 100_000) == Run(42_543, 7_003, 100_000)


def test_a_missing_row_is_an_error_naming_the_size() -> None:
    with pytest.raises(ValueError, match="10,000 customers"):
        parse_row(CURRENT_OUTPUT, 10_000)
