"""``python -m opmask_fast.analyze`` and the console script ``opmask-analyze``: the command lives in `opmask_fast.cli.analyze`."""

from .cli.analyze import build_parser, main
from .cli.errors import run_console

__all__ = ["build_parser", "console", "main"]


def console() -> None:
    """The console script (and ``python -m``): the command run as a program (``cli.errors.run_console``)."""
    run_console(main)


if __name__ == "__main__":
    console()
