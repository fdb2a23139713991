"""``python -m opmask_fast.predict`` and the console script ``opmask-predict``: the command lives in `opmask_fast.cli.predict`."""

from .cli.predict import build_parser, main

__all__ = ["build_parser", "console", "main"]


def console() -> None:
    """The console script: the command with its Python return value dropped (a script would print it and exit 1)."""
    main()


if __name__ == "__main__":
    console()
