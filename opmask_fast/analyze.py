"""``python -m opmask_fast.analyze``: the command lives in `opmask_fast.cli.analyze`."""

from .cli.analyze import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
