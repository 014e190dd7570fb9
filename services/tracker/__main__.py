"""``python -m services.tracker``: ``shared.runtime.start_process``, then uvicorn."""

from __future__ import annotations

import uvicorn

from services.tracker.app import build_app
from shared.runtime import start_process

# Open SSE streams are closed by sse-starlette on SIGTERM; this bounds anything else.
GRACEFUL_SHUTDOWN_S = 5


def main() -> None:
    settings, _ = start_process("tracker")
    uvicorn.run(
        build_app(settings),
        host=settings.tracker_host,
        port=settings.tracker_port,
        log_config=None,  # keep the shared log format and its redaction filter
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


if __name__ == "__main__":
    main()
