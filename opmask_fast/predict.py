"""``python -m opmask_fast.predict``: the command lives in `opmask_fast.cli.predict`."""

from .cli.predict import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
