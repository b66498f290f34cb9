"""The lagrangian-ad command line (placeholder for the demo until the CLI lands)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from ._demo import run_demo

    run_demo()
    return 0
