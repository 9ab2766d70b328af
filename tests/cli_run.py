"""``cli(argv)``: the command line run in this process, returning its exit code."""

import sys

from cnnbench.cli import main


def cli(argv) -> int:
    old = sys.argv
    sys.argv = ["cnnbench", *map(str, argv)]
    try:
        main()
    except SystemExit as exc:
        return exc.code or 0
    finally:
        sys.argv = old
    return 0
