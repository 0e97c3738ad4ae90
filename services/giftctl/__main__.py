"""`giftctl` / `python -m services.giftctl`: the giftcoin command-line client."""

from __future__ import annotations

import sys

from services.giftctl import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
