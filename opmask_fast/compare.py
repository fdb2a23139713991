"""``python -m opmask_fast.compare``: the command lives in `opmask_fast.cli.compare`."""

from .cli.compare import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
