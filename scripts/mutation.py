#!/usr/bin/env python
"""Mutation testing of the method's core with cosmic-ray (pinned in requirements.txt); see docs/mutation.md.

    python scripts/mutation.py --list                        # the modules, their tests, their mutant counts
    python scripts/mutation.py -m prior_weight,splits -n 40  # mutate, test, report (at most 40 mutants per module)
    python scripts/mutation.py -m core -n 30 --json r.json   # the prioritised modules, 30 mutants each, JSON too
    python scripts/mutation.py -m prior:20,splits:30         # a cap per module
    python scripts/mutation.py -m core --only-survivors r.json  # after adding tests: rerun only r.json's survivors

What it does, per module (one mutant at a time, one test process: cosmic-ray's local distributor):

1. copies the working tree's ``opmask_fast/``, ``tests/`` and ``pytest.ini`` to a scratch folder (``--workdir``) and
   works only there: cosmic-ray writes each mutant over the module's file and puts it back after the test run, and
   doing that in the scratch copy never touches the checkout (other work in the same tree, a concurrent run importing
   the package, an editor's unsaved buffer). The copy imports itself: the test command runs with the copy as its
   working directory, which comes first on ``sys.path`` (checked before any mutant). ``../shared`` (the tiny_coco
   data some tests read) is linked beside the copy as it lies beside the checkout.
2. ``cosmic-ray init`` (every mutant of every operator), ``cr-filter-operators`` (the focused operator set, below,
   unless ``--all-operators``), skips the mutants inside annotations (with ``from __future__ import annotations``
   none is ever evaluated: ``str | None`` -> ``str & None`` is equivalent), then the cap (``--max-mutants`` or
   ``NAME:CAP``): the remaining mutants sorted by position and that many taken evenly spread over the file
   (``--shift`` takes another such sample), the others marked skipped, as cosmic-ray's own filters do.
3. a baseline run of the module's tests on the unmutated copy (it must pass, and its time sets the per-mutant timeout:
   ``--timeout-factor`` x baseline + 10 s), then ``cosmic-ray exec``.
4. the report: per module mutants run / killed / survived / timeout / incompetent, and every survivor as
   ``file:line  operator#occurrence`` with the old and the new line. ``--json`` writes the same as JSON, after each
   module (an interrupted run keeps what it measured); ``--only-survivors`` reads it back.

The focused operator set leaves out the replacements that on this code only raise a TypeError (a float tensor or a
float shifted, or-ed, and-ed) or that are equivalent by construction (``== None`` for ``is None``): arithmetic to
``%``, ``//``, ``**``, shifts and bitwise operators; comparisons to ``is`` / ``is not`` and back. Everything else of
cosmic-ray's core operators runs (arithmetic among + - * /, bitwise among themselves, every comparison swap, and/or,
not, True/False, numbers +-1, unary operators, break/continue, exception handlers, decorators, zero-iteration loops).

Each module's tests are a fast subset that covers it (``MODULES``); a mutant is killed when that subset fails (``-x``:
the first failure ends the run) or runs past the timeout. One run at a time per ``--workdir`` (its copy is recreated;
a lock file refuses a second run there).
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Module:
    path: str  # relative to the repository root
    tests: tuple[str, ...]  # pytest arguments: test files (or node ids within them) that cover the module
    topic: str


# Per module: the tests that cover it, the fastest subset that does (timed on the 2-core machine, docs/mutation.md).
# Slow tests that train a model for seconds are deselected where faster ones cover the same lines.
_PRIOR_OPTIONS_FAST = ("tests/test_prior_options.py",
                       "--deselect=tests/test_prior_options.py::test_model_options_train_and_reach_the_box_head",
                       "--deselect=tests/test_prior_options.py::test_grad_scale_multiplies_the_box_head_gradient")
_EVAL_FAST = ("tests/test_eval_subsets.py", "tests/test_mutation_kills_eval.py", "tests/test_evaluate.py",
              "--deselect=tests/test_evaluate.py::test_one_backbone_pass_gives_the_two_pass_results")
MODULES: dict[str, Module] = {
    "prior_weight": Module("opmask_fast/ops/prior_weight.py", _PRIOR_OPTIONS_FAST + (
        "tests/test_mutation_kills_prior.py",
        "tests/test_model.py::test_learnable_gain_initialised_from_feature_scale"), "the prior's weight"),
    "prior": Module("opmask_fast/modeling/roi_heads/prior.py", _PRIOR_OPTIONS_FAST + (
        "tests/test_mutation_kills_prior.py",), "the prior's test-time probes"),
    "mask_head": Module("opmask_fast/modeling/roi_heads/mask_head.py", (
        "tests/test_weak_supervision_options.py::test_box_projection_loss_matches_a_per_pixel_oracle",
        "tests/test_weak_supervision_options.py::test_box_projection_loss_edges",
        "tests/test_method_core.py::test_mask_targets_are_aligned_roialign_crops",
        "tests/test_method_core.py::test_mask_losses_of_a_mixed_batch_equal_their_definition",
        "tests/test_prior_options.py::test_every_conv_adds_the_weighted_prior_before_each_later_conv",
        "tests/test_mutation_kills_mask_losses.py",
        "tests/test_method_core.py::test_weak_mask_content_never_reaches_the_mask_loss_in_mixed_batches",
        "tests/test_weak_supervision_options.py::"
        "test_box_projection_option_trains_the_mask_head_from_box_only_rois"), "the mask head and the mask losses"),
    "splits": Module("opmask_fast/data/splits.py", (
        "tests/test_data.py::test_splits", "tests/test_mutation_kills_splits.py",
        "tests/test_data.py::test_tiny_coco_voc_split"), "the partial-supervision split"),
    "metrics": Module("opmask_fast/evaluation/metrics.py", _EVAL_FAST, "the evaluation's subsets (metrics)"),
    "coco_eval": Module("opmask_fast/evaluation/coco_eval.py", _EVAL_FAST, "the evaluation's subsets (COCOeval)"),
    "roi_heads": Module("opmask_fast/modeling/roi_heads/roi_heads.py", (
        "tests/test_method_core.py",) + _PRIOR_OPTIONS_FAST + (
        "tests/test_mutation_kills_roi_heads.py", "tests/test_model.py::test_train_losses_and_eval_outputs",
        "tests/test_model.py::test_fused_roi_align_prior_equals_object_prior_add",
        "tests/test_model.py::test_adaptive_prior_on_roi_align_equals_the_general_path",
        "tests/test_weak_supervision_options.py::test_pairwise_warm_up_ramps_the_term_linearly_and_survives_a_resume"),
        "the RoI heads"),
    "checkpoint": Module("opmask_fast/training/checkpoint.py", (
        "tests/test_mutation_kills_checkpoint.py", "tests/test_train.py::test_checkpoint_write_is_atomic",
        "tests/test_train.py::test_resume_continues_exactly",
        "tests/test_model_weights.py::test_missing_and_corrupt_files",
        "tests/test_initial_weights.py::test_whole_model_checkpoint_loads_every_weight_and_keeps_its_pixel_format"),
        "resume"),
    "ref_nms": Module("opmask_fast/ops/reference/nms.py", (
        "tests/test_nms.py", "tests/test_mutation_kills_references.py"), "the nms reference"),
    "ref_roi_align": Module("opmask_fast/ops/reference/roi_align.py", (
        "tests/test_mutation_kills_references.py", "tests/test_roi_align.py"), "the roi_align reference"),
    "ref_object_prior_add": Module("opmask_fast/ops/reference/object_prior_add.py", (
        "tests/test_object_prior_add.py", "tests/test_mutation_kills_references.py"), "the object prior reference"),
}
PRIORITY = ("prior_weight", "prior", "mask_head", "splits", "metrics", "coco_eval")

# cr-filter-operators regexes (re.match on the operator name) of the focused set; see the module docstring.
EXCLUDED_OPERATORS = (
    r"core/ReplaceBinaryOperator_\w+_(Pow|Mod|FloorDiv|RShift|LShift|BitOr|BitAnd|BitXor)$",
    r"core/ReplaceBinaryOperator_(RShift|LShift)_",
    r"core/ReplaceComparisonOperator_\w+_(Is|IsNot)$",
    r"core/ReplaceComparisonOperator_(Is|IsNot)_",
)
# ... but a bitwise operator may still become another one (`a & b` -> `a | b` on boolean tensors is meaningful).
KEPT_OPERATORS = (r"core/ReplaceBinaryOperator_(BitOr|BitAnd|BitXor)_(BitOr|BitAnd|BitXor)$",
                  r"core/ReplaceComparisonOperator_(Is_IsNot|IsNot_Is)$")

PYTEST_FLAGS = "-x -q -p no:cacheprovider"


def existing_tests(mod: Module, tree: Path) -> list[str]:
    """The module's pytest arguments whose file exists (tests/test_mutation_kills_*.py are added as survivors are)."""
    return [t for t in mod.tests if t.startswith("-") or (tree / t.split("::")[0]).exists()]


def test_command(mod: Module, tree: Path) -> str:
    return f"{sys.executable} -B -m pytest {PYTEST_FLAGS} " + " ".join(existing_tests(mod, tree))


def copy_tree(workdir: Path) -> Path:
    tree = workdir / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in ("opmask_fast", "tests"):
        shutil.copytree(ROOT / name, tree / name, ignore=ignore, symlinks=True)
    shutil.copy2(ROOT / "pytest.ini", tree / "pytest.ini")
    # Tests find the shared data (tiny_coco) at tests/../../shared, i.e. beside the checkout: the same beside the copy.
    shared, link = ROOT.parent / "shared", workdir / "shared"
    if shared.is_dir() and not link.exists():
        link.symlink_to(shared, target_is_directory=True)
    where = subprocess.run([sys.executable, "-B", "-c", "import opmask_fast; print(opmask_fast.__file__)"], cwd=tree,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"the scratch copy imports opmask_fast from {where}, not from {tree}: refusing to mutate")
    return tree


def write_config(path: Path, mod: Module, command: str, timeout: float, all_operators: bool) -> None:
    excluded = [] if all_operators else [f"(?!{'|'.join(KEPT_OPERATORS)})(?:{e})" for e in EXCLUDED_OPERATORS]
    toml = "\n".join([
        "[cosmic-ray]",
        f"module-path = {json.dumps(mod.path)}",
        f"timeout = {timeout:.1f}",
        "excluded-modules = []",
        f"test-command = {json.dumps(command)}",
        "",
        "[cosmic-ray.distributor]",
        'name = "local"',
        "",
        "[cosmic-ray.filters.operators-filter]",
        f"exclude-operators = {json.dumps(excluded)}",
        "",
    ])
    path.write_text(toml)


def run_tool(args: list[str], cwd: Path, log) -> None:
    proc = subprocess.run(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed (exit {proc.returncode}); see {log.name}")


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The (start, end) positions of every annotation when the module has ``from __future__ import annotations``
    (then none is ever evaluated: a mutant inside one, ``str | float`` -> ``str & float``, is equivalent)."""
    tree = ast.parse(source)
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations"
                                                                                     for a in n.names)
                 for n in tree.body)
    if not future:
        return []
    anns = [n.annotation for n in ast.walk(tree) if isinstance(n, (ast.arg, ast.AnnAssign)) and n.annotation]
    anns += [n.returns for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns]
    return [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in anns]


def skip_annotations(session: Path, source_file: Path) -> int:
    """Mark skipped the mutants inside annotations that are never evaluated (see `annotation_spans`)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = annotation_spans(source_file.read_text())
    n = 0
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            m = item.mutations[0]
            if any(a <= tuple(m.start_pos) and tuple(m.end_pos) <= b for a, b in spans):
                db.set_result(item.job_id, WorkResult(output="in an annotation never evaluated",
                                                      worker_outcome=WorkerOutcome.SKIPPED))
                n += 1
    return n


def keep_only(session: Path, wanted: set[tuple[str, int]]) -> None:
    """Mark skipped every pending mutant but those named (operator, occurrence): a rerun of earlier survivors."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            m = item.mutations[0]
            if (m.operator_name, m.occurrence) not in wanted:
                db.set_result(item.job_id, WorkResult(output="not an earlier survivor",
                                                      worker_outcome=WorkerOutcome.SKIPPED))


def cap_session(session: Path, cap: int | None, shift: float = 0.0) -> None:
    """Keep at most `cap` pending mutants, evenly spread over the file by position (`shift` in [0, 1) moves the
    sample by that fraction of its step: another sample of the same size); mark the others skipped."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    if cap is None:
        return
    with use_db(str(session), WorkDB.Mode.open) as db:
        pending = sorted(db.pending_work_items, key=lambda w: (tuple(w.mutations[0].start_pos),
                                                               w.mutations[0].operator_name, w.mutations[0].occurrence))
        if len(pending) <= cap:
            return
        keep = {pending[int((i + shift) * len(pending) / cap)].job_id for i in range(cap)}
        for item in pending:
            if item.job_id not in keep:
                db.set_result(item.job_id, WorkResult(output="over the cap", worker_outcome=WorkerOutcome.SKIPPED))


def _changed_lines(diff: str) -> tuple[str, str]:
    old = [l[1:].strip() for l in diff.splitlines() if l.startswith("-") and not l.startswith("---")]
    new = [l[1:].strip() for l in diff.splitlines() if l.startswith("+") and not l.startswith("+++")]
    return " ".join(old), " ".join(new)


def collect(session: Path, name: str, mod: Module) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    out = {"module": name, "path": mod.path, "total": 0, "killed": 0, "survived": 0, "timeout": 0, "incompetent": 0,
           "skipped": 0, "pending": 0, "survivors": []}
    with use_db(str(session), WorkDB.Mode.open) as db:
        results = dict(db.results)
        for item in db.work_items:
            res = results.get(item.job_id)
            if res is None:
                out["pending"] += 1
                continue
            if res.worker_outcome in (WorkerOutcome.SKIPPED, WorkerOutcome.NO_TEST):
                out["skipped"] += 1
                continue
            out["total"] += 1
            m = item.mutations[0]
            if res.test_outcome == TestOutcome.SURVIVED:
                out["survived"] += 1
                old, new = _changed_lines(res.diff or "")
                out["survivors"].append({"where": f"{mod.path}:{m.start_pos[0]}", "line": m.start_pos[0],
                                         "operator": m.operator_name, "occurrence": m.occurrence, "old": old,
                                         "new": new, "job_id": item.job_id})
            elif res.test_outcome == TestOutcome.INCOMPETENT:
                out["incompetent"] += 1
            elif res.output == "timeout":
                out["timeout"] += 1
            else:
                out["killed"] += 1
    out["survivors"].sort(key=lambda s: (s["line"], s["operator"]))
    return out


def run_module(name: str, mod: Module, tree: Path, args, log_dir: Path, cap: int | None,
               survivors: set[tuple[str, int]] | None) -> dict:
    session, config = log_dir / f"{name}.sqlite", log_dir / f"{name}.toml"
    command = test_command(mod, tree)
    t0 = time.monotonic()
    base = subprocess.run(shlex.split(command), cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    baseline = time.monotonic() - t0
    if base.returncode != 0:
        sys.exit(f"{name}: the unmutated tests fail ({command}):\n{base.stdout[-3000:]}")
    summary = (base.stdout.strip().splitlines() or [""])[-1]
    if "skipped" in summary:  # a skipped test kills nothing: say so (e.g. ../shared/data absent)
        print(f"   warning: the baseline of {name} skips tests: {summary}", flush=True)
    timeout = args.timeout_factor * baseline + 10.0
    write_config(config, mod, command, timeout, args.all_operators)
    for p in (session,):
        p.unlink(missing_ok=True)
    with open(log_dir / f"{name}.log", "w") as log:
        run_tool([str(BIN / "cosmic-ray"), "init", str(config), str(session)], tree, log)
        run_tool([str(BIN / "cr-filter-operators"), str(session), str(config)], tree, log)
        skip_annotations(session, tree / mod.path)
        if survivors is not None:
            keep_only(session, survivors)
        cap_session(session, cap, args.shift)
        t1 = time.monotonic()
        if not args.dry_run:
            run_tool([str(BIN / "cosmic-ray"), "exec", str(config), str(session)], tree, log)
    res = collect(session, name, mod)
    res.update(baseline=summary, baseline_s=round(baseline, 1), timeout_s=round(timeout, 1),
               seconds=round(time.monotonic() - t1, 1), tests=existing_tests(mod, tree))
    return res


def count_mutants(name: str, mod: Module, tree: Path, log_dir: Path, all_operators: bool) -> tuple[int, int]:
    from cosmic_ray.work_db import WorkDB, use_db

    session, config = log_dir / f"{name}.count.sqlite", log_dir / f"{name}.count.toml"
    write_config(config, mod, "true", 1.0, all_operators)
    session.unlink(missing_ok=True)
    with open(log_dir / f"{name}.count.log", "w") as log:
        run_tool([str(BIN / "cosmic-ray"), "init", str(config), str(session)], tree, log)
        run_tool([str(BIN / "cr-filter-operators"), str(session), str(config)], tree, log)
    skip_annotations(session, tree / mod.path)
    with use_db(str(session), WorkDB.Mode.open) as db:
        return db.num_work_items, sum(1 for _ in db.pending_work_items)


def print_report(results: list[dict]) -> None:
    print("\n| module | file | mutants run | killed | survived | timeout | incompetent | killed % | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        dead = r["killed"] + r["timeout"]
        pct = f"{100.0 * dead / r['total']:.0f}" if r["total"] else "-"
        print(f"| {r['module']} | `{r['path']}` | {r['total']} | {r['killed']} | {r['survived']} | {r['timeout']} | "
              f"{r['incompetent']} | {pct} | {r['seconds'] / 60:.1f} |")
    for r in results:
        if r["survivors"]:
            print(f"\nsurvivors of {r['module']}:")
            for s in r["survivors"]:
                print(f"  {s['where']}  {s['operator']}#{s['occurrence']}\n      - {s['old']}\n      + {s['new']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--modules", default=",".join(MODULES),
                   help=f"comma-separated module names, each optionally NAME:CAP (a cap of its own) (default: all; "
                        f"'core' = {','.join(PRIORITY)}): " + ", ".join(MODULES))
    p.add_argument("-n", "--max-mutants", type=int, default=None,
                   help="at most this many mutants per module, evenly spread over the file (default: all)")
    p.add_argument("--shift", type=float, default=0.0,
                   help="with a cap: move the evenly spread sample by this fraction of its step, in [0, 1) (0.5: the "
                        "mutants half-way between those of the default sample)")
    p.add_argument("--all-operators", action="store_true", help="every cosmic-ray operator, not the focused set")
    p.add_argument("--timeout-factor", type=float, default=3.0, help="per-mutant timeout = factor x baseline + 10 s")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "opmask_mutation",
                   help="scratch folder (its copy recreated; one run at a time, locked)")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    p.add_argument("--list", action="store_true", help="list the modules, their tests and mutant counts; run nothing")
    p.add_argument("--dry-run", action="store_true", help="init, filter and cap the sessions but run no mutant")
    p.add_argument("--only-survivors", type=Path, metavar="JSON",
                   help="run only the mutants that survived in this earlier --json result (after adding tests)")
    args = p.parse_args(argv)
    if not 0.0 <= args.shift < 1.0:
        p.error("--shift must be in [0, 1)")

    specs = [n.strip() for n in args.modules.split(",") if n.strip()]
    specs = [x for n in specs for x in ([m + n[4:] for m in PRIORITY] if n.partition(":")[0] == "core" else [n])]
    caps = {n.partition(":")[0]: int(n.partition(":")[2]) if n.partition(":")[2] else args.max_mutants for n in specs}
    names = list(caps)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        p.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")

    args.workdir.mkdir(parents=True, exist_ok=True)
    lock = open(args.workdir / ".lock", "w")  # held until the process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"another mutation run is using {args.workdir} (it recreates the copy there): wait for it, or pass "
                 "another --workdir")
    tree = copy_tree(args.workdir)
    log_dir = args.workdir / "sessions"
    log_dir.mkdir(exist_ok=True)

    if args.list:
        for n in names:
            total, kept = count_mutants(n, MODULES[n], tree, log_dir, args.all_operators)
            kind = "all operators" if args.all_operators else "focused operators"
            print(f"{n:22} {MODULES[n].path:50} {total:5} mutants, {kept:5} to run ({kind}, annotations skipped); "
                  f"tests: {' '.join(existing_tests(MODULES[n], tree))}")
        return 0

    earlier = None
    if args.only_survivors:
        earlier = {r["module"]: {(s["operator"], s["occurrence"]) for s in r["survivors"]}
                   for r in json.loads(args.only_survivors.read_text())}
        names = [n for n in names if earlier.get(n)]
    results = []
    for n in names:
        t = time.monotonic()
        print(f"== {n}: {MODULES[n].path} ({MODULES[n].topic})", flush=True)
        r = run_module(n, MODULES[n], tree, args, log_dir, caps[n], None if earlier is None else earlier[n])
        results.append(r)
        print(f"   {r['total']} mutants: {r['killed']} killed, {r['survived']} survived, {r['timeout']} timeout, "
              f"{r['incompetent']} incompetent (baseline {r['baseline_s']} s, {time.monotonic() - t:.0f} s)",
              flush=True)
        if args.json:  # after each module, so an interrupted run keeps what it measured
            args.json.write_text(json.dumps(results, indent=1))
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
