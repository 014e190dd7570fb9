"""``python -m services.fetcher``"""

import asyncio

from services.fetcher.app import build_app
from shared.settings import Settings

if __name__ == "__main__":
    asyncio.run(build_app(Settings()).run())
