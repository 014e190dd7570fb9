"""Throughput against the code the issue measured, in runs alternating on this machine.

Issue 12 asks for 2.5x the throughput of "today" (2,395 customers/s for 100,000 customers with no
store latency, measured at commit ``aaa29dd``). A ratio against a floor read by our own store
client cannot show that exactly: the floor's client is woosync's, and it got faster too (half its
CPU per page went with the ``sniffio`` dependency, and pages are parsed with orjson), so the floor
moved with the code it is meant to normalise. This script runs the issue's code itself next to
the current code instead: it checks the baseline commit out into a git worktree, installs it with
its own ``scripts/bootstrap`` (its own dependencies, as it ran then), and runs each tree's
``bench.throughput`` in turn, baseline first, ``--pairs`` times. Each pair's speedup is current
customers/s over baseline customers/s, measured minutes apart on the same machine; "in
proportion" divides each tree's customers/s by its own floor first, so a moment when the
machine is slower for one of the two counts less (the floors' clients differ, see above).

Run: ``python -m bench.speedup [--pairs 3] [--customers 100000]``. Needs git history (a clone,
not an export) and the package index for the baseline's first install.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BASELINE = "aaa29dd"  # the code whose figures issue 12 quotes (the commit before its first)
TARGET_SPEEDUP = 2.5  # issue 12, item 2: "2.5x today"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Run:
    """One ``bench.throughput`` summary row: what each tree printed for itself."""

    floor_per_s: float
    pipeline_per_s: float
    synced: int


def parse_row(output: str, customers: int) -> Run:
    """The summary row for ``customers`` in ``bench.throughput``'s output, either version's.

    The baseline prints ``customers floor pipeline ratio synced ...``; the current one adds the
    two floor reads (``43k/42k``) after the floor and two ratios before ``synced``.
    """
    label = f"{customers:,}"
    rows = [line.split() for line in output.splitlines() if line.split()[:1] == [label]]
    if not rows:
        raise ValueError(f"no summary row for {label} customers in:\n{output[-2000:]}")
    cells = [cell.replace(",", "") for cell in rows[-1]]
    floor, pipeline, synced = (1, 3, 7) if "/" in cells[2] else (1, 2, 4)
    return Run(float(cells[floor]), float(cells[pipeline]), int(cells[synced]))


def prepare_baseline(revision: str, directory: Path) -> Path:
    """A worktree of ``revision`` with its own virtualenv (kept between runs: installed once)."""
    if not (directory / ".git").exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(directory), revision],
            check=True,
        )
    subprocess.run(["./scripts/bootstrap"], cwd=directory, check=True, stdout=subprocess.DEVNULL)
    return directory


def throughput(tree: Path, customers: int) -> Run:
    python = tree / ".venv" / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "bench.throughput", "--sizes", str(customers), "--latency-ms", "0"],
        cwd=tree, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.throughput failed in {tree}:\n{done.stderr[-3000:]}")
    return parse_row(done.stdout, customers)


def main(revision: str, pairs: int, customers: int, directory: Path) -> int:
    baseline = prepare_baseline(revision, directory)
    print(f"{customers:,} customers, no store latency, concurrency 4; baseline {revision} "
          f"(the issue's code), current {ROOT.name}; target: current >= {TARGET_SPEEDUP}x baseline")
    print(f"{'pair':>4} {'baseline c/s':>13} {'its floor':>10} {'current c/s':>12} "
          f"{'its floor':>10} {'speedup':>8} {'in proportion':>14}")
    speedups, proportions = [], []
    for pair in range(1, pairs + 1):
        old = throughput(baseline, customers)
        new = throughput(ROOT, customers)
        if old.synced != customers or new.synced != customers:
            print(f"pair {pair}: synced {old.synced:,} (baseline) and {new.synced:,} (current) "
                  f"of {customers:,}: not exact, no speedup counted")
            continue
        speedups.append(new.pipeline_per_s / old.pipeline_per_s)
        proportions.append(speedups[-1] * old.floor_per_s / new.floor_per_s)
        print(f"{pair:>4} {old.pipeline_per_s:>13,.0f} {old.floor_per_s:>10,.0f} "
              f"{new.pipeline_per_s:>12,.0f} {new.floor_per_s:>10,.0f} {speedups[-1]:>7.2f}x "
              f"{proportions[-1]:>13.2f}x", flush=True)
    if not speedups:
        return 1
    verdict = "met in every pair" if min(speedups) >= TARGET_SPEEDUP else "not met in every pair"
    print(f"speedup: lowest {min(speedups):.2f}x, median {statistics.median(speedups):.2f}x, "
          f"highest {max(speedups):.2f}x; target {TARGET_SPEEDUP}x: {verdict}")
    print(f"in proportion (each tree's ratio to its own floor, current over baseline): lowest "
          f"{min(proportions):.2f}x, median {statistics.median(proportions):.2f}x")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="the commit to compare with")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument(
        "--worktree", type=Path, default=None,
        help="where the baseline is checked out and installed (default: the temp directory)",
    )
    args = parser.parse_args()
    where = args.worktree or Path(tempfile.gettempdir()) / f"woosync-baseline-{args.baseline}"
    sys.exit(main(args.baseline, args.pairs, args.customers, where))
