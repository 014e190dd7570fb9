"""``python -m services.fetcher``: ``shared.runtime.start_process``, then the FastStream app as an
ASGI app under uvicorn on WOOSYNC_FETCHER_HOST:WOOSYNC_FETCHER_PORT (/healthz, /readyz,
/metrics). uvicorn turns SIGTERM into the app's lifespan shutdown: crawls hand their messages
back, the subscriber stops, the broker and the pool close."""

from __future__ import annotations

from services.fetcher.app import build_asgi
from shared.runtime import serve_asgi, start_process


def main() -> None:
    settings, _ = start_process("fetcher")
    serve_asgi(build_asgi(settings), settings.fetcher_host, settings.fetcher_port)


if __name__ == "__main__":
    main()
