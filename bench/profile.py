"""Where a service's time went, from py-spy's collapsed stacks (``bench.throughput --profile``).

Prints, per file: the share of samples the service spent waiting (its event loop idle in the
selector) and, of the busy samples, the functions with the most samples inclusive (anywhere on
the stack) and exclusive (on top). Run: ``python -m bench.profile DIR/syncer-100000.txt ...``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# Leaf frames (as frame_name writes them) of a thread that waits: the event loop's selector, an
# idle worker thread.
IDLE_LEAVES = {
    "EpollSelector.select (selectors.py)",
    "PollSelector.select (selectors.py)",
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "Thread._wait_for_tstate_lock (threading.py)",
}


def frame_name(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``: lines merged, paths shortened."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if "site-packages" in path or "python3" in path else path
    for root in ("services/", "shared/", "tools/"):
        if root in path:
            short = path[path.index(root) :]
    return f"{name} ({short})"


def summarize(path: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    exclusive: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if " (" in f]
        total += count
        if not frames or frame_name(frames[-1]) in IDLE_LEAVES:
            idle += count
            continue
        names = [frame_name(f) for f in frames]
        exclusive[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    busy = total - idle
    lines = [f"== {path.name}: {total} samples, {idle / max(total, 1):.0%} idle, {busy} busy"]
    lines.append("  inclusive (share of busy samples)")
    lines += [f"    {n / max(busy, 1):6.1%}  {name}" for name, n in inclusive.most_common(top)]
    lines.append("  exclusive")
    lines += [f"    {n / max(busy, 1):6.1%}  {name}" for name, n in exclusive.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for file in args.files:
        print(summarize(file, args.top))
