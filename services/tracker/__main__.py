"""``python -m services.tracker``: settings, logging, and uvicorn around the app; nothing else."""

from __future__ import annotations

import uvicorn

from services.tracker.app import build_app
from shared.db import require_app_role
from shared.logs import configure
from shared.settings import Settings

# Open SSE streams are closed by sse-starlette on SIGTERM; this bounds anything else.
GRACEFUL_SHUTDOWN_S = 5


def main() -> None:
    settings = Settings()
    log = configure("tracker", settings.log_level)
    require_app_role(settings.database_url, log)
    uvicorn.run(
        build_app(settings),
        host=settings.tracker_host,
        port=settings.tracker_port,
        log_config=None,  # keep the shared log format and its redaction filter
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


if __name__ == "__main__":
    main()
