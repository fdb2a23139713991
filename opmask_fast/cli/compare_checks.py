"""What ``opmask_fast.compare`` checks before it generates a dataset or starts a training: its own options, and the
training options after ``--`` as each training will parse them (see ``cli.preflight`` for the other commands)."""

from __future__ import annotations

import os

from ..config import PRESETS
from ..variants import STUDY_FIELDS, VARIANTS
from .checks import MAX_THREADS, check_device, check_number, check_output_dir
from .errors import UsageError, option_name, user_errors
from .options import model_config_from_args
from .preflight import DATA_OPTIONS, MAX_SEED, check_synthetic, check_train_options

# The training options compare sets for each run, and what to give instead (a --preset or --num-threads after -- is
# the same for every run, so it stays allowed).
COMPARE_OWNS = {
    "variant": "compare trains each of --variants", "no_prior": "the baseline is a variant of --variants",
    "prior_scale": "each variant sets its own prior scale", "seed": "give --seeds to compare, before --",
    "data_seed": "give --data-seed to compare, before --", "output_dir": "give --output-dir to compare, before --",
    "cache_dir": "give --cache-dir to compare, before --", "no_eval": "compare reads each run's evaluation",
    "resume": "give --reuse to compare, before -- (it keeps each finished run trained with the same settings)",
}


def _options_given(parser, tokens: list[str]) -> set[str]:
    """The dests of the options among ``tokens``, abbreviations resolved as argparse resolves them."""
    actions = parser._option_string_actions
    dests = set()
    for tok in tokens:
        if not tok.startswith("--"):
            continue
        name = tok.split("=", 1)[0]
        matches = {actions[name].dest} if name in actions else \
            {a.dest for o, a in actions.items() if o.startswith(name)}
        if len(matches) == 1:
            dests |= matches
    return dests


def check_compare(args, *, train_parser) -> tuple[list[str], list[int]]:
    """``opmask_fast.compare``'s options and the training options after ``--``. Returns (variants, seeds)."""
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise UsageError(f"--variants: unknown {unknown or 'none given'}; known: {', '.join(VARIANTS)}")
    parts = [s.strip() for s in args.seeds.split(",") if s.strip()]
    if not parts or not all(p.isascii() and p.isdigit() and len(p) <= 10 and int(p) <= MAX_SEED for p in parts):
        raise UsageError(f"--seeds must be integers in [0, {MAX_SEED}] separated by commas, got {args.seeds!r}")
    seeds = [int(p) for p in parts]
    for what, items in (("--variants", names), ("--seeds", seeds)):
        twice = sorted({str(i) for i in items if items.count(i) > 1})
        if twice:  # two trainings would write one run folder at once
            raise UsageError(f"{what} names {', '.join(twice)} more than once")
    if args.preset not in PRESETS:
        raise UsageError(f"--preset: unknown {args.preset!r}; known: {', '.join(sorted(PRESETS))}")
    check_number(args, "jobs", minimum=1)
    check_number(args, "data_seed", minimum=0, maximum=MAX_SEED)
    check_number(args, "threads", minimum=1, maximum=MAX_THREADS)

    def error(message):
        raise UsageError(f"training options after --: {message}")

    def no_help(*args, **kwargs):  # -h, --help or an abbreviation: printed, compare would exit 0 having done nothing
        raise UsageError("training options after --: -h/--help: see python -m opmask_fast.train --help")

    train_parser.error = error
    train_parser.print_help = no_help
    extra = [a for a in args.train_args if a != "--"]
    targs = train_parser.parse_args(["--preset", args.preset, *extra])  # as each training parses it: a later wins
    try:
        given = [o for k, o in {**DATA_OPTIONS, "dataset": "--dataset", "data_images": "--data-images"}.items()
                 if getattr(targs, k, None)]
        if given:
            raise UsageError(f"{', '.join(given)}: compare trains on a synthetic dataset; give --dataset and "
                             "--data-images to compare itself, before --")
        # What compare sets per run: given after --, it would win (the later option) and make the table wrong, e.g.
        # one model in every column or one seed for all.
        owned = sorted(_options_given(train_parser, extra) & set(COMPARE_OWNS))
        if owned:
            raise UsageError("; ".join(f"{option_name(d)}: {COMPARE_OWNS[d]}" for d in owned))
        # A study field set after -- would win over every variant's (--set applies last): one model in every column.
        studied = sorted({item.split("=", 1)[0].strip() for item in targs.set or []} & set(STUDY_FIELDS))
        if studied:
            raise UsageError(f"--set {', '.join(studied)}: each variant sets it (a field the study varies); choose "
                             "the variants with compare's --variants")
        cfg, _, _ = check_train_options(targs)  # the options and the --weights file, read once
        for v in names:  # each training's model config: the variant's fields under the options after --
            vargs = train_parser.parse_args(["--preset", args.preset, "--variant", v, *extra])
            vargs.weights = None  # read above; the variants change no weights
            with user_errors():
                model_config_from_args(vargs)
        check_device(targs.device)
        targs.dataset = args.dataset  # compare's, given to every training
        check_synthetic(targs, cfg)
    except UsageError as e:
        raise UsageError(f"training options after --: {e}") from e
    # Last, as these create the folders.
    check_output_dir(args.output_dir)
    for run in (f"{v}_s{s}" for v in names for s in seeds):
        if os.path.exists(os.path.join(args.output_dir, run)):
            check_output_dir(os.path.join(args.output_dir, run), "--output-dir: the run folder")
    if args.cache_dir:
        check_output_dir(args.cache_dir, "--cache-dir")
    return names, seeds
