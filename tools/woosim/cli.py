"""``python -m tools.woosim``: serve a simulated WooCommerce store until SIGTERM/SIGINT.

Once listening it prints exactly one JSON line to stdout (url, consumer key and secret,
customer count, CA certificate path) so that a parent process can read where it is; uvicorn's
own logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

import uvicorn

from tools.woosim import data
from tools.woosim.faults import BAD_ID_KINDS, FaultConfig
from tools.woosim.server import SimOptions, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="woosim",
        description="A simulated WooCommerce store: the REST v3 customers API, over HTTP(S).",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to listen on")
    add("--port", type=int, default=8100, help="port; 0 picks a free one")
    add("--customers", type=int, default=10_000, help="number of users to generate")
    add("--seed", type=int, default=1, help="data and default-credential seed")
    add(
        "--bulk",
        action="store_true",
        help="serve --customers as copies of 10,000 generated users: flat memory, read only, "
        "listed by id only (for benchmarks of large stores)",
    )
    add("--tz-offset", default=data.DEFAULT_TZ_OFFSET, help="site timezone offset, e.g. +02:00")
    add("--latency-ms", type=int, default=0, help="delay added to every customers list page")
    add("--tls", action="store_true", help="serve HTTPS with a freshly generated CA")
    add("--ca-out", type=Path, default=None, help="also write the CA certificate here")
    add("--consumer-key", default=None, help="API key (default: derived from --seed)")
    add("--consumer-secret", default=None, help="API secret (default: derived from --seed)")
    add(
        "--allow-basic-over-http",
        action="store_true",
        help="treat plain HTTP as HTTPS for auth (a proxy that sets HTTPS=on)",
    )
    add(
        "--flat-in-flight",
        type=int,
        default=0,
        help="latency stays flat up to N requests in flight and grows in proportion beyond",
    )
    add("--max-in-flight", type=int, default=0, help="answer 429 above N requests in flight")
    add("--rate-429", type=float, default=0.0, help="share of requests answered 429")
    add("--retry-after", type=int, default=1, help="Retry-After seconds on 429/503")
    add("--retry-after-http-date", action="store_true", help="send Retry-After as an HTTP-date")
    add("--rate-5xx", type=float, default=0.0, help="share answered 500/502/503/504")
    add("--rate-cut", type=float, default=0.0, help="share whose body is cut off mid-transfer")
    add("--rate-slow", type=float, default=0.0, help="share delayed by --slow-ms")
    add("--slow-ms", type=int, default=2000, help="delay of a slow response")
    add("--rate-bad-json", type=float, default=0.0, help="share answered 200 with invalid JSON")
    add("--per-page-cap", type=int, default=0, help="answer at most N customers per page")
    add("--claimed-total", type=int, default=0, help="X-WP-Total claims N customers")
    add("--unordered-pages", action="store_true", help="each page in descending id order")
    add("--ignore-offset", action="store_true", help="every page answers the first page")
    add("--hide-totals", action="store_true", help="send no X-WP-Total / X-WP-TotalPages")
    add(
        "--bad-ids",
        default="",
        help="comma-separated kinds of broken ids for the lowest customers "
        f"({', '.join(BAD_ID_KINDS)})",
    )
    add("--rate-trickle", type=float, default=0.0, help="share whose body trickles byte by byte")
    add("--trickle-ms", type=int, default=1000, help="delay between trickled body bytes")
    add("--fault-seed", type=int, default=0, help="seed of the fault random stream")
    add(
        "--odd-customers",
        default="",
        help="comma-separated kinds of odd customers to serve, one customer each: nul, "
        "long_name, unicode, lone_surrogate, deep_meta:N (e.g. nul,deep_meta:200)",
    )
    add("--log-level", default="warning", help="uvicorn log level (logs go to stderr)")
    return parser


def options_from_args(args: argparse.Namespace) -> SimOptions:
    faults = FaultConfig(
        rate_429=args.rate_429,
        retry_after=args.retry_after,
        retry_after_http_date=args.retry_after_http_date,
        rate_5xx=args.rate_5xx,
        rate_cut=args.rate_cut,
        rate_slow=args.rate_slow,
        slow_ms=args.slow_ms,
        rate_bad_json=args.rate_bad_json,
        rate_trickle=args.rate_trickle,
        trickle_ms=args.trickle_ms,
        latency_ms=args.latency_ms,
        flat_in_flight=args.flat_in_flight,
        max_in_flight=args.max_in_flight,
        per_page_cap=args.per_page_cap,
        claimed_total=args.claimed_total,
        unordered_pages=args.unordered_pages,
        ignore_offset=args.ignore_offset,
        hide_totals=args.hide_totals,
        bad_ids=tuple(kind for kind in args.bad_ids.split(",") if kind),
        seed=args.fault_seed,
    )
    return SimOptions(
        host=args.host,
        port=args.port,
        customers=args.customers,
        seed=args.seed,
        tls=args.tls,
        ca_out=args.ca_out,
        consumer_key=args.consumer_key,
        consumer_secret=args.consumer_secret,
        allow_basic_over_http=args.allow_basic_over_http,
        tz_offset=args.tz_offset,
        faults=faults,
        odd_customers=tuple(k.strip() for k in args.odd_customers.split(",") if k.strip()),
        bulk=args.bulk,
    )


async def run(options: SimOptions, log_level: str = "warning") -> None:
    """Serve until SIGTERM/SIGINT (or until the server stops by itself)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with serve(
            options, log_config=uvicorn.config.LOGGING_CONFIG, log_level=log_level
        ) as running:
            sys.stdout.write(json.dumps(running.announcement()) + "\n")
            sys.stdout.flush()
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({stopping, running.task}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
        data.parse_tz_offset(options.tz_offset)
        for kind in options.odd_customers:
            data.parse_odd_kind(kind)
    except ValueError as error:
        print(f"woosim: {error}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(options, args.log_level))
    return 0
