"""``python -m opmask_fast.compare`` refuses bad options, its own and the trainings' after ``--``, in one line before
it generates a dataset or starts a training."""

import os

from _cli import in_process, run, usage_error


def test_compare_checks_before_generating_or_training(tmp_path, capsys):
    proc = run("compare", "--output-dir", tmp_path / "cmp", "--cache-dir", tmp_path / "cache", "--", "--iters", "0")
    usage_error(proc, "compare", "training options after --: --iters must be >= 1")
    for args, fragment in ((["--variants", "baseline,foo"], "--variants: unknown ['foo']"),
                           (["--", "--bogus"], "training options after --: unrecognized arguments: --bogus"),
                           (["--seeds", "0,x"], "--seeds must be integers"),
                           (["--seeds", str(2**40)], "--seeds must be integers in [0, 4294967295]"),
                           (["--data-seed", str(2**40)], "--data-seed must be >= 0 and <= 4294967295"),
                           (["--preset", "opmask_r18_nope"], "--preset: unknown 'opmask_r18_nope'"),
                           (["--seeds", "\u00b2"], "--seeds must be integers"),  # "²".isdigit() is True
                           (["--variants", "baseline,baseline"], "--variants names baseline more than once"),
                           (["--seeds", "0,1,0"], "--seeds names 0 more than once"),
                           # what compare sets per run would win after -- and make the table wrong
                           (["--", "--variant", "opmask"], "--variant: compare trains each of --variants"),
                           (["--", "--no-prior"], "--no-prior: the baseline is a variant"),
                           (["--", "--seed=5"], "--seed: give --seeds to compare"),
                           (["--", "--data-s", "3"], "--data-seed: give --data-seed to compare"),
                           (["--", "--output-dir", "x", "--no-eval"], "--no-eval: compare reads each run's "
                                                                      "evaluation; --output-dir: give --output-dir"),
                           (["--", "--steps", "\u00b2"], "--steps must be iterations"),
                           # what a training would refuse only after the dataset was generated
                           (["--", "--set", "num_classes=3"], "num_classes=3 but the synthetic dataset shapes has 6"),
                           (["--", "--device", "cuda:99"], "--device cuda:99"),
                           (["--", "--split", "circle,foo"], "unknown categories in split: ['foo']"),
                           (["--dataset", "shapes2", "--", "--split", "circle"], "unknown categories in split"),
                           # a study field after -- would make every column one model; --resume is compare's --reuse
                           (["--", "--set", "prior_scale=40", "--set", "prior_convs=separate"],
                            "--set prior_convs, prior_scale: each variant sets it"),
                           (["--", "--resume"], "--resume: give --reuse to compare"),
                           (["--", "-h"], "-h/--help: see python -m opmask_fast.train --help"),
                           (["--", "--iters", "5", "--hel"], "-h/--help: see python -m opmask_fast.train --help"),
                           (["--data-images", "99999999999,1"], "expected two integers N_TRAIN,N_VAL in [1, 1000000]")):
        line = in_process(capsys, "compare", "--output-dir", tmp_path / "cmp", "--cache-dir", tmp_path / "cache", *args)
        assert fragment in line, line
    assert not os.path.exists(tmp_path / "cache" / "synthetic")
    assert not os.path.exists(tmp_path / "cmp") and not os.path.exists(tmp_path / "cache")  # nothing made either
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "opmask_s0").write_text("")  # where a run's folder goes
    line = in_process(capsys, "compare", "--output-dir", tmp_path / "cmp", "--cache-dir", tmp_path / "cache")
    assert "the run folder " + str(tmp_path / "cmp" / "opmask_s0") + " is a file" in line, line
    assert not os.path.exists(tmp_path / "cache" / "synthetic")


def test_ctrl_c_is_one_line_and_the_process_ends_by_sigint(tmp_path):
    """Every command: KeyboardInterrupt (after the command's own cleanup) prints one line and, run as a program, ends
    the process by SIGINT without a traceback (so a calling shell stops too); called from Python, main() raises
    KeyboardInterrupt as any function would."""
    import subprocess
    import sys

    script = """
from opmask_fast.cli import errors

@errors.entry_point("python -m opmask_fast.x")
def main(argv=None):
    raise KeyboardInterrupt

errors.run_console(main)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -2, (proc.returncode, proc.stderr)  # killed by SIGINT
    assert proc.stderr == "python -m opmask_fast.x: interrupted\n"
    debug = subprocess.run([sys.executable, "-c", script, "--debug"], capture_output=True, text=True, timeout=120)
    assert "Traceback" in debug.stderr and "KeyboardInterrupt" in debug.stderr
