"""Injected failures of the kind a store's host, proxy or PHP produce, reproducible by seed.

Every ``/wp-json`` request draws the same number of values from one seeded ``random.Random``,
so a given seed and request sequence always meets the same faults. A ``script`` of explicit
faults, consumed one per request before any random draw, makes single failures deterministic.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

FIVE_XX = (500, 502, 503, 504)
SCRIPT_ENTRIES = ("ok", "429", "500", "502", "503", "504", "cut", "slow", "bad_json", "trickle")
# What ``bad_ids`` does to the id of the store's lowest customers, one kind each (the lowest id
# gets the first kind): a store's database or a plugin can send any of these.
BAD_ID_KINDS = (
    "2^63",  # 9223372036854775808, one past a PostgreSQL bigint
    "huge",  # 10^30
    "abc",  # a string
    "numeric_string",  # "123"
    "missing",  # no id at all
    "null",  # "id": null
    "zero",
    "negative",
    "bool",  # true
    "float",  # 1.5
    "non_object",  # the whole item is a JSON string instead of an object
)


@dataclass(frozen=True)
class FaultConfig:
    """Per-request probabilities and their parameters (all off by default)."""

    rate_429: float = 0.0
    retry_after: int = 1  # Seconds announced by Retry-After on a 429 (and 503).
    retry_after_http_date: bool = False  # Send Retry-After as an HTTP-date instead.
    rate_5xx: float = 0.0
    statuses_5xx: tuple[int, ...] = FIVE_XX
    rate_cut: float = 0.0  # Headers and part of the body, then the connection is closed.
    rate_slow: float = 0.0
    slow_ms: int = 2000
    rate_bad_json: float = 0.0  # 200 with a body that is not JSON (PHP notice or truncation).
    # Headers at once, then the body one byte every trickle_ms (a proxy that trickles bytes):
    # every read gets a byte well within any per-read timeout, but the body takes ages.
    rate_trickle: float = 0.0
    trickle_ms: int = 1000
    latency_ms: int = 0  # Added to every customers list page.
    # A store's capacity (see tools/woosim/README.md, "Capacity"), counted in /wp-json requests
    # in flight, the arriving one included (0: off). Up to flat_in_flight, latency_ms is flat;
    # beyond, it grows in proportion (a server of that many workers queueing the rest).
    flat_in_flight: int = 0
    # Above this many in flight, a request is answered 429 with Retry-After at once.
    max_in_flight: int = 0
    # Hostile or broken stores (see tools/woosim/README.md, "Hostile stores"):
    per_page_cap: int = 0  # At most this many customers per page whatever per_page asks (0: off).
    claimed_total: int = 0  # X-WP-Total claims this many (TotalPages follows); 0: the truth.
    unordered_pages: bool = False  # Each page's customers come in descending id order.
    ignore_customer_filter: bool = False  # /orders answers every order whatever `customer` says.
    ignore_offset: bool = False  # Every page answers the first page (full pages forever).
    hide_totals: bool = False  # No X-WP-Total / X-WP-TotalPages (a proxy stripping them).
    bad_ids: tuple[str, ...] = ()  # BAD_ID_KINDS given to the lowest customers' ids.
    seed: int = 0
    script: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("rate_429", "rate_5xx", "rate_cut", "rate_slow", "rate_bad_json",
                     "rate_trickle"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in ("retry_after", "slow_ms", "latency_ms", "trickle_ms", "per_page_cap",
                     "claimed_total", "flat_in_flight", "max_in_flight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not self.statuses_5xx or not all(500 <= s <= 599 for s in self.statuses_5xx):
            raise ValueError("statuses_5xx must be a non-empty list of 5xx statuses")
        for kind in self.bad_ids:
            if kind not in BAD_ID_KINDS:
                raise ValueError(f"bad_ids entries must be among {', '.join(BAD_ID_KINDS)}")
        for entry in self.script:
            if entry not in SCRIPT_ENTRIES:
                raise ValueError(f"script entries must be among {', '.join(SCRIPT_ENTRIES)}")

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["statuses_5xx"] = list(self.statuses_5xx)
        result["script"] = list(self.script)
        result["bad_ids"] = list(self.bad_ids)
        return result

    def updated(self, changes: dict[str, Any]) -> FaultConfig:
        """A copy with ``changes`` applied; unknown names and wrong types raise ValueError."""
        known = {f.name: f for f in fields(self)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault setting {name!r}")
            clean[name] = _coerce(name, value, getattr(self, name))
        return replace(self, **clean)


def _coerce(name: str, value: Any, current: Any) -> Any:
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a boolean")
        return value
    if isinstance(current, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list")
        return tuple(int(v) if name == "statuses_5xx" else str(v) for v in value)
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"{name} must be an integer")
    return int(value)


@dataclass(frozen=True)
class Fault:
    """What to do to one request."""

    kind: str = "none"  # none | 429 | 5xx | cut | bad_json | trickle
    status: int = 200
    delay_s: float = 0.0  # Extra delay before answering ("slow").
    variant: float = 0.0  # A uniform draw for details (how much of a cut body is sent, ...).


class FaultInjector:
    """Holds the live config and its random stream."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self._config = config or FaultConfig()
        self._rng = random.Random(self._config.seed)
        self._script = list(self._config.script)

    @property
    def config(self) -> FaultConfig:
        return replace(self._config, script=tuple(self._script))

    def update(self, changes: dict[str, Any]) -> FaultConfig:
        """Apply changes; a given ``seed`` restarts the random stream, a ``script`` replaces
        the pending one."""
        self._config = self.config.updated(changes)
        if "seed" in changes:
            self._rng = random.Random(self._config.seed)
        if "script" in changes:
            self._script = list(self._config.script)
        return self.config

    def decide(self) -> Fault:
        rng, config = self._rng, self._config
        draw, slow_draw, variant = rng.random(), rng.random(), rng.random()
        status_5xx = config.statuses_5xx[int(variant * len(config.statuses_5xx))]
        if self._script:
            return self._scripted(self._script.pop(0), variant)
        delay = config.slow_ms / 1000 if slow_draw < config.rate_slow else 0.0
        threshold = 0.0
        for kind, rate in (
            ("429", config.rate_429),
            ("5xx", config.rate_5xx),
            ("cut", config.rate_cut),
            ("bad_json", config.rate_bad_json),
            ("trickle", config.rate_trickle),
        ):
            threshold += rate
            if draw < threshold:
                status = {"429": 429, "5xx": status_5xx}.get(kind, 200)
                return Fault(kind, status, delay, variant)
        return Fault("none", 200, delay, variant)

    def _scripted(self, entry: str, variant: float) -> Fault:
        if entry == "slow":
            return Fault("none", 200, self._config.slow_ms / 1000, variant)
        if entry in ("cut", "bad_json", "trickle"):
            return Fault(entry, 200, 0.0, variant)
        if entry == "429":
            return Fault("429", 429, 0.0, variant)
        if entry == "ok":
            return Fault()
        return Fault("5xx", int(entry), 0.0, variant)
