"""``python -m lagrangian_ad``: the same command line as ``lagrangian-ad``."""

from __future__ import annotations

import sys

from .using._cli import main

if __name__ == "__main__":
    sys.exit(main())
