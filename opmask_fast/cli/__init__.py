"""The command-line layer: one module per command (train, evaluate, predict, compare, analyze: argument parsing and
the run), the options turned into configs (`options`), the checks every command runs before any work (`preflight`,
`checks`; compare's in `compare_checks`) and the one-line usage errors they raise (`errors`).
``python -m opmask_fast.<command>`` runs them."""

from .errors import EXIT_USAGE, UsageError, entry_point, one_line, user_errors

__all__ = ["EXIT_USAGE", "UsageError", "entry_point", "one_line", "user_errors"]
