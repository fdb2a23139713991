"""What the command-line entry points share: one-line usage errors with argparse's exit code.

A user error (a missing file, a bad option, an annotation file that cannot be used) ends a command with one line on
stderr, ``python -m opmask_fast.train: error: ...``, and exit code 2, as argparse does for a bad option. ``--debug``
(or ``OPMASK_FAST_DEBUG=1``) shows the traceback instead. Anything else is an internal error and keeps its traceback
(exit code 1).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import sys
from typing import Callable, Iterator, NoReturn

EXIT_USAGE = 2  # argparse's code for a bad command line; used for every user error
DEBUG_ENV = "OPMASK_FAST_DEBUG"


class UsageError(Exception):
    """A user error: bad option, path, file or data. Reported in one line (the message) with exit code 2."""


def add_debug_option(parser, group=None) -> None:
    """Adds ``--debug`` (to ``group`` when given) and makes the parser's own errors one line too: ``PROG: error: ...``
    and exit code 2 without the usage text (a ``UsageError`` with its traceback under ``--debug``)."""
    (group or parser).add_argument("--debug", action="store_true",
                                   help=f"show the traceback of a usage error (or set {DEBUG_ENV}=1)")

    def error(message: str):
        if debug_enabled():
            raise UsageError(f"{message} (see --help)")
        exit_usage(parser.prog, f"{message} (see --help)")

    parser.error = error


def exit_usage(prog: str, message: str) -> NoReturn:
    """Ends a command with the one-line usage error: ``PROG: error: MESSAGE`` on stderr (after what stdout holds),
    exit code 2."""
    sys.stdout.flush()
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE) from None


def debug_enabled(argv: list[str] | None = None) -> bool:
    """``--debug`` among the options (before a ``--`` separator) or ``OPMASK_FAST_DEBUG`` set to a true value."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" in args:
        args = args[:args.index("--")]
    return "--debug" in args


def one_line(message: str) -> str:
    """The message with line breaks folded, so an error is always a single line."""
    return re.sub(r"\s*\n\s*", "; ", str(message).strip()) or "unknown error"


def entry_point(prog: str) -> Callable:
    """Decorates ``main(argv=None)`` of an entry point: a ``UsageError`` prints ``PROG: error: MESSAGE`` and exits 2,
    so does an image that cannot be read in the middle of a run (`data.transforms.ImageReadError`); Ctrl-C prints
    ``PROG: interrupted`` and raises KeyboardInterrupt on (``run_console`` then ends the process).

    ``main`` is the command itself, also when called from Python: a usage error raises ``SystemExit(2)`` exactly as
    argparse does for a bad option. With ``--debug`` the ``UsageError`` propagates with its traceback.
    """
    def wrap(main: Callable) -> Callable:
        @functools.wraps(main)
        def run(argv: list[str] | None = None):
            try:
                return main(argv)
            except UsageError as e:
                if debug_enabled(argv):
                    raise
                exit_usage(prog, str(e))
            except OSError as e:  # an image that the checks before the run did not decode (a large dataset)
                from ..data.transforms import ImageReadError

                if not isinstance(e, ImageReadError) or debug_enabled(argv):
                    raise
                exit_usage(prog, image_error_text(e))
            except KeyboardInterrupt:  # Ctrl-C: the command's own cleanup has run; say so (run_console ends quietly)
                if not debug_enabled(argv):
                    sys.stdout.flush()
                    print(f"{prog}: interrupted", file=sys.stderr, flush=True)
                raise

        return run

    return wrap


def image_error_text(error: OSError) -> str:
    """The message of an image read error. Raised in a data-loading worker, it reaches the main process
    with the worker's whole traceback as its message (torch.utils.data re-raises the type that way), whose last line
    is ``module.ImageReadError: MESSAGE``."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def run_console(main: Callable) -> None:
    """A command run as a program (``python -m``, the console scripts): its return value dropped (a script would print
    it and exit 1), and Ctrl-C ending the process by SIGINT after ``entry_point``'s one line, without a traceback, so
    a calling shell sees an interrupted command and stops too (exit status 130). ``--debug`` keeps the traceback."""
    try:
        main()
    except KeyboardInterrupt:
        if debug_enabled(sys.argv[1:]):
            raise
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


@contextlib.contextmanager
def user_errors(context: str = "") -> Iterator[None]:
    """Turns the library's errors about its inputs (ValueError, OSError, KeyError, OverflowError, json errors) into
    ``UsageError``.

    Used only around the checks that run before any work, so a failure later keeps its traceback.

    Args:
        context: prefixed to the message, e.g. ``"--weights"``.
    """
    try:
        yield
    except UsageError:
        raise
    except (ValueError, OSError, KeyError, OverflowError, json.JSONDecodeError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
            text = f"{text}: {e.filename}"
        raise UsageError(f"{context}: {text}" if context else text) from e


def option_name(dest: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + dest.replace("_", "-")
