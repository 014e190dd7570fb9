"""``python -m services.syncer``: ``shared.runtime.start_process``, then the FastStream app as an
ASGI app under uvicorn on WOOSYNC_SYNCER_HOST:WOOSYNC_SYNCER_PORT (/healthz, /readyz, /metrics).

uvicorn turns SIGTERM and SIGINT into the app's lifespan shutdown, FastStream's graceful stop:
the subscriber stops taking messages, running handlers get ``graceful_timeout`` (see
``shared.broker``) to finish, then the pool closes.
"""

from __future__ import annotations

from services.syncer.app import build_asgi
from shared.runtime import serve_asgi, start_process


def main() -> None:
    settings, _ = start_process("syncer")
    serve_asgi(build_asgi(settings), settings.syncer_host, settings.syncer_port)


if __name__ == "__main__":
    main()
