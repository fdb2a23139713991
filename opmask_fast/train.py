"""``python -m opmask_fast.train``: the command lives in `opmask_fast.cli.train`."""

from .cli.train import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
