"""``python -m services.fetcher``: settings, logging, and the FastStream app; nothing else."""

from __future__ import annotations

import asyncio

from services.fetcher.app import build_app
from shared.db import require_app_role
from shared.logs import configure
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    log = configure("fetcher", settings.log_level)
    require_app_role(settings.database_url, log)
    asyncio.run(build_app(settings).run())


if __name__ == "__main__":
    main()
