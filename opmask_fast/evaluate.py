"""``python -m opmask_fast.evaluate``: the command lives in `opmask_fast.cli.evaluate`."""

from .cli.evaluate import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
