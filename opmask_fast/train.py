"""``python -m opmask_fast.train`` and the console script ``opmask-train``: the command lives in `opmask_fast.cli.train`."""

from .cli.train import build_parser, main
from .cli.errors import run_console

__all__ = ["build_parser", "console", "main"]


def console() -> None:
    """The console script (and ``python -m``): the command run as a program (``cli.errors.run_console``)."""
    run_console(main)


if __name__ == "__main__":
    console()
