"""``python -m services.api``: serve the api with uvicorn on WOOSYNC_API_HOST:WOOSYNC_API_PORT."""

from __future__ import annotations

import uvicorn

from services.api.app import build_app
from shared.runtime import start_process


def main() -> None:
    settings, _ = start_process("api")
    uvicorn.run(
        build_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # keep the redacting handler that configure() installed
        server_header=False,
    )


if __name__ == "__main__":
    main()
