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
                           (["--dataset", "shapes2", "--", "--split", "circle"], "unknown categories in split")):
        line = in_process(capsys, "compare", "--output-dir", tmp_path / "cmp", "--cache-dir", tmp_path / "cache", *args)
        assert fragment in line, line
    assert not os.path.exists(tmp_path / "cache" / "synthetic")
    (tmp_path / "cmp" / "opmask_s0").write_text("")  # where a run's folder goes
    line = in_process(capsys, "compare", "--output-dir", tmp_path / "cmp", "--cache-dir", tmp_path / "cache")
    assert "the run folder " + str(tmp_path / "cmp" / "opmask_s0") + " is a file" in line, line
    assert not os.path.exists(tmp_path / "cache" / "synthetic")
