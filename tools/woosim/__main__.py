"""``python -m tools.woosim``; see ``tools.woosim.cli``."""

from tools.woosim.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
