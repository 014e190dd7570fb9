"""``python -m services.fetcher``: ``shared.runtime.start_process``, then the FastStream app."""

from __future__ import annotations

import asyncio

from services.fetcher.app import build_app
from shared.runtime import start_process


def main() -> None:
    settings, _ = start_process("fetcher")
    asyncio.run(build_app(settings).run())


if __name__ == "__main__":
    main()
