"""``python -m services.fetcher``: settings, logging, and the FastStream app; nothing else."""

from __future__ import annotations

import asyncio

from services.fetcher.app import build_app
from shared.logs import configure
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure("fetcher", settings.log_level)
    asyncio.run(build_app(settings).run())


if __name__ == "__main__":
    main()
