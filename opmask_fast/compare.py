"""``python -m opmask_fast.compare`` and the console script ``opmask-compare``: the command lives in `opmask_fast.cli.compare`."""

from .cli.compare import build_parser, main

__all__ = ["build_parser", "console", "main"]


def console() -> None:
    """The console script: the command with its Python return value dropped (a script would print it and exit 1)."""
    main()


if __name__ == "__main__":
    console()
