"""The side-by-side comparison: table formatting, seeds, mean and spread, reuse of finished runs."""

import json
import math
import os

import pytest

from opmask_fast.cli import compare, compare_runs


def _metrics(weak, strong, seconds=100.0):
    return {"mask_AP_weak": weak, "mask_AP_strong": strong, "mask_AP_ambiguous": None, "train_seconds": seconds,
            "seconds_per_image": 0.05}


def test_table_shows_mean_spread_and_gain():
    results = {
        "baseline": [dict(_metrics(1.0, 30.0), seed=0), dict(_metrics(3.0, 32.0), seed=1)],
        "opmask_gain": [dict(_metrics(9.0, 31.0), seed=0), dict(_metrics(11.0, 33.0), seed=1)],
    }
    for runs in results.values():
        for m in runs:
            m["train_minutes"] = m["train_seconds"] / 60
    table = compare.format_comparison(results)
    assert "| metric | Mask R-CNN baseline | OPMask + learnable gain |" in table
    assert "| mask AP weak | 2.0 ± 1.4 | 10.0 ± 1.4 |" in table
    assert "| mask AP ambiguous | - | - |" in table and "train minutes" not in table
    assert "OPMask + learnable gain +8.0" in table
    assert "seeds: baseline [0, 1]; opmask_gain [0, 1]" in table
    assert "s/img" not in table  # not timed (compare --time-inference)
    results["baseline"][0]["seconds_per_image_alone"] = 0.25
    assert "| s/img (inference, alone) | 0.250 | - |" in compare.format_comparison(results)


def test_reuse_reads_finished_runs(tmp_path):
    for v, weak in (("baseline", 1.0), ("opmask", 2.0)):
        os.makedirs(tmp_path / f"{v}_s0")
        json.dump(_metrics(weak, 20.0), open(tmp_path / f"{v}_s0" / "metrics.json", "w"))
    args = compare.build_parser().parse_args(["--variants", "baseline,opmask", "--output-dir", str(tmp_path),
                                              "--reuse"])
    results, failed = compare_runs.run_all(args)
    assert failed == []
    assert [m["mask_AP_weak"] for m in results["baseline"]] == [1.0]
    assert results["opmask"][0]["seed"] == 0 and math.isclose(results["opmask"][0]["train_minutes"], 100 / 60)


def test_reuse_retrains_a_run_recorded_with_other_settings(tmp_path, monkeypatch):
    """--reuse keeps a finished run only when compare gave it the same training command as now: a run of the same
    folder trained with other options after -- is trained again, not shown in the table under today's settings."""
    import sys

    def fake_command(variant, seed, args, out):
        extra = [a for a in args.train_args if a != "--"]
        weak = 3.0 if extra else 2.0  # what this "training" reports depends on its options
        return [sys.executable, "-c", f"import json; json.dump({_metrics(weak, 20.0)!r}, "
                                      f"open({os.path.join(out, 'metrics.json')!r}, 'w'))", *extra]

    monkeypatch.setattr(compare_runs, "train_command", fake_command)

    def weak(*extra):
        args = compare.build_parser().parse_args(["--variants", "baseline", "--output-dir", str(tmp_path), "--reuse",
                                                  *extra])
        results, failed = compare_runs.run_all(args)
        assert failed == []
        return results["baseline"][0]["mask_AP_weak"]

    assert weak() == 2.0
    recorded = json.load(open(tmp_path / "baseline_s0" / compare_runs.RUN_COMMAND))
    default = compare.build_parser().parse_args([])
    assert recorded == fake_command("baseline", 0, default, str(tmp_path / "baseline_s0"))[1:]
    os.remove(tmp_path / "baseline_s0" / "metrics.json")
    json.dump(_metrics(7.0, 20.0), open(tmp_path / "baseline_s0" / "metrics.json", "w"))
    assert weak() == 7.0  # the same command: reused as it is
    assert weak("--", "--iters", "9") == 3.0  # other options after --: trained again
    json.dump(_metrics(8.0, 20.0), open(tmp_path / "baseline_s0" / "metrics.json", "w"))
    assert weak("--", "--iters", "9") == 8.0  # recorded with these options now: reused


def test_reuse_ignores_where_and_how_fast_a_run_trained():
    """What --reuse compares leaves out the run folder, the thread count, the cache folder and --quiet: a moved compare
    folder or another --threads reuses its runs; another option after -- does not."""
    parse = compare.build_parser().parse_args
    a = compare_runs._settings(compare_runs.train_command("baseline", 0, parse([]), "outputs/compare/baseline_s0"))
    b = compare_runs._settings(compare_runs.train_command("baseline", 0, parse(["--threads", "2", "--cache-dir", "c"]),
                                                          "/elsewhere/baseline_s0"))
    c = compare_runs._settings(compare_runs.train_command("baseline", 0, parse(["--", "--iters", "9"]), "x"))
    assert a == b and a != c and "--preset" in a and "--output-dir" not in a


def test_sigterm_to_compare_ends_its_trainings(tmp_path):
    """A compare killed with SIGTERM (a scheduler's stop) ends the trainings it started instead of leaving them
    running on the machine."""
    import signal
    import subprocess
    import sys
    import time

    script = f"""
import os, sys
from opmask_fast.cli import compare, compare_runs
def fake_command(variant, seed, args, out):
    return [sys.executable, "-c", "import os, time; open(os.path.join(%r, 'pid'), 'w').write(str(os.getpid())); "
            "time.sleep(600)" % out]
compare_runs.train_command = fake_command
compare.main(["--variants", "baseline,opmask", "--output-dir", {str(tmp_path / 'out')!r}, "--data-images", "2,2",
              "--cache-dir", {str(tmp_path / 'cache')!r}])
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pid_files = [tmp_path / "out" / f"{v}_s0" / "pid" for v in ("baseline", "opmask")]
    deadline = time.time() + 300
    while not all(p.is_file() and p.read_text() for p in pid_files):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    children = [int(p.read_text()) for p in pid_files]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_compare_exits_1_naming_each_failed_run_and_still_prints_the_table(tmp_path, monkeypatch, capsys):
    """A training that fails (exit 3), one killed by a signal and one that exits 0 without metrics.json: compare prints
    the table of the run that finished, names each failed run with its log, and exits 1, never 0. A stale
    metrics.json from an earlier run in the same folder is not taken for a failed run's result."""
    import sys

    behaviour = {"baseline": "import json, os; json.dump({'mask_AP_weak': 1.5, 'mask_AP_strong': 20.0}, "
                             "open(os.path.join(OUT, 'metrics.json'), 'w'))",
                 "opmask": "import sys; sys.exit(3)",
                 "opmask_std_boxproj": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
                 "opmask_gain": "pass"}

    def fake_command(variant, seed, args, out):
        return [sys.executable, "-c", f"OUT = {out!r}\n" + behaviour[variant]]

    monkeypatch.setattr(compare_runs, "train_command", fake_command)
    monkeypatch.setattr(compare, "report_runs", lambda folders, out: os.path.join(out, "report.md"))
    os.makedirs(tmp_path / "out" / "opmask_s0")
    json.dump(_metrics(99.0, 99.0), open(tmp_path / "out" / "opmask_s0" / "metrics.json", "w"))  # a stale result
    argv = ["--variants", "baseline,opmask,opmask_std_boxproj,opmask_gain", "--output-dir", str(tmp_path / "out"),
            "--data-images", "4,2", "--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as exit_info:
        compare.main(argv)
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    assert "| mask AP weak | 1.5 |" in out and "99.0" not in out  # the finished run's table, not the stale one
    line = [l for l in err.splitlines() if l.startswith("python -m opmask_fast.compare: error:")]
    assert len(line) == 1 and "3 failed" in line[0], err
    for what in ("opmask seed 0 (exit 3", "opmask_std_boxproj seed 0 (killed by signal 9",
                 "opmask_gain seed 0 (finished without metrics.json"):
        assert what in line[0], line[0]
    assert os.path.join(str(tmp_path / "out"), "opmask_s0", "log.txt") in line[0]


def test_unknown_variant(tmp_path):
    args = compare.build_parser().parse_args(["--variants", "baseline,nope", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"unknown variants \['nope'\]"):
        compare_runs.run_all(args)


def test_every_training_gets_compares_preset():
    args = compare.build_parser().parse_args(["--preset", "opmask_r18_tiny", "--", "--iters", "5"])
    cmd = compare_runs.train_command("baseline", 2, args, "out")
    assert cmd[cmd.index("--preset") + 1] == "opmask_r18_tiny" and cmd[-4:] == ["--variant", "baseline", "--iters", "5"]
    default = compare_runs.train_command("opmask_std_boxproj_maskres_separate16_suponly", 0,
                                    compare.build_parser().parse_args([]), "out")
    assert default[default.index("--preset") + 1] == "opmask_r18_lite"
    assert default[-2:] == ["--variant", "opmask_std_boxproj_maskres_separate16_suponly"]


def test_lite_preset_is_the_tiny_model_made_cheaper():
    from opmask_fast.config import get_preset
    from opmask_fast.modeling import build_model

    tiny, lite = get_preset("opmask_r18_tiny"), get_preset("opmask_r18_lite_paper")
    changed = {k for k, v in lite.to_dict().items() if v != tiny.to_dict()[k]}
    assert changed == {"backbone", "roi_heads", "rpn"}
    # at inference 100 proposals per image instead of 300 (README: same checkpoints, equal or higher mask AP)
    rpn = {k: v for k, v in lite.to_dict()["rpn"].items() if v != tiny.to_dict()["rpn"][k]}
    assert rpn == {"post_nms_topk_test": 100}
    models = [build_model(c) for c in (tiny, lite)]
    sizes = [sum(p.numel() for p in m.backbone.parameters()) for m in models]
    assert sizes[1] < sizes[0] / 3  # half the channels: about a quarter of the trunk's weights
    assert lite.roi_heads.batch_size_per_image * lite.roi_heads.positive_fraction == \
        tiny.roi_heads.batch_size_per_image * tiny.roi_heads.positive_fraction  # as many foreground RoIs per image
    # the README's lite-preset tables were trained with a 4-conv mask head (the tiny preset keeps OPMask's 7)
    assert [len(m.roi_heads.mask_head.convs) for m in models] == [7, 4]


def test_lite_preset_is_the_recommended_recipe_and_the_paper_one_preset_away():
    """The default preset trains what the README recommends; the paper recipe and the baseline are one preset away,
    and compare's variants give the same models whatever the preset's own recipe (fails if a variant left a study
    field to the preset: the main job's paper-recipe run would then train with the box projection term)."""
    from opmask_fast.config import get_preset
    from opmask_fast.train import build_parser
    from opmask_fast.cli.options import model_config_from_args
    from opmask_fast.variants import apply_variant

    lite, paper = get_preset("opmask_r18_lite"), get_preset("opmask_r18_lite_paper")
    assert (lite.prior_scale, lite.roi_heads.weak_mask_loss) == ("feature_std", "box_projection")
    # the prior at mask resolution from a 16-wide prior head of its own, trained by the mask-supervised RoIs' priors
    assert (lite.prior_resolution, lite.prior_convs, lite.prior_head_width, lite.prior_grad_rois) == (
        "mask", "separate", 16, "mask_supervised")
    assert (paper.prior_scale, paper.roi_heads.weak_mask_loss) == ("none", "none")
    default, _ = model_config_from_args(build_parser().parse_args([]))
    assert default.to_dict() == lite.to_dict()
    for variant, preset in (("opmask", "opmask_r18_lite_paper"), ("baseline", "baseline_r18_lite"),
                            ("opmask_std_boxproj_maskres_separate16_suponly", "opmask_r18_lite")):
        for start in ("opmask_r18_lite", "opmask_r18_lite_paper", "baseline_r18_lite"):
            assert apply_variant(get_preset(start), variant).to_dict() == get_preset(preset).to_dict(), (variant, start)
    no_prior, _ = model_config_from_args(build_parser().parse_args(["--no-prior"]))
    assert no_prior.to_dict() == get_preset("baseline_r18_lite").to_dict()


def test_training_options_are_checked_against_compares_preset(tmp_path, monkeypatch):
    from opmask_fast import train
    from opmask_fast.cli import compare_checks, options, preflight

    seen = []
    model_config_from_args = options.model_config_from_args

    def model_config(targs):
        seen.append(targs.preset)
        return model_config_from_args(targs)

    monkeypatch.setattr(preflight, "model_config_from_args", model_config)

    for argv, preset in ((["--preset", "baseline_r18_tiny"], "baseline_r18_tiny"), ([], "opmask_r18_lite"),
                         (["--preset", "baseline_r18_tiny", "--", "--preset", "opmask_r18_tiny"], "opmask_r18_tiny")):
        args = compare.build_parser().parse_args(["--output-dir", str(tmp_path), *argv])
        compare_checks.check_compare(args, train_parser=train.build_parser())
        assert seen[-1] == preset  # as each training will parse it: a --preset after -- wins


def test_every_variant_is_named_again_from_its_stored_config():
    """One definition of the variants and their labels: a run's stored config gives back its variant's label (what the
    analyses and compare print); a config no variant names gets a label of its differing fields."""
    from opmask_fast.config import get_preset
    from opmask_fast.variants import VARIANTS, apply_variant, label_of, upper_bound_of

    for name, variant in VARIANTS.items():
        for preset in ("opmask_r18_lite", "opmask_r18_tiny", "baseline_r18_lite"):
            stored = apply_variant(get_preset(preset), name).to_dict()
            assert label_of(stored, variant.train_split) == variant.label
    # the upper bound is the headline's model trained on another split: told apart by the split alone (and the 7x7
    # prior's upper bound is its model's)
    for bound, model in (("upper_bound", "opmask_std_boxproj_maskres_separate16_suponly"),
                         ("upper_bound_separate32", "opmask_std_boxproj_maskres_separate32"),
                         ("upper_bound_detach", "opmask_std_boxproj_maskres_detach"), ("upper_bound_7x7", "opmask_std_boxproj"),
                         ("upper_bound_maskres", "opmask_std_boxproj_maskres"),
                         ("upper_bound_separate", "opmask_std_boxproj_maskres_separate")):
        assert VARIANTS[bound].fields == VARIANTS[model].fields
        assert label_of(apply_variant(get_preset("opmask_r18_lite"), bound).to_dict()) == VARIANTS[model].label
        assert upper_bound_of(model) == bound and upper_bound_of(bound) is None
    odd = apply_variant(get_preset("opmask_r18_lite"), "opmask")
    odd.prior_scale, odd.prior_cam = 3.0, "class_vs_background"
    assert label_of(odd.to_dict()) == "OPMask (prior_scale=3.0, prior_cam=class_vs_background)"
    assert len({v.label for v in VARIANTS.values()}) == len(VARIANTS)  # no two variants share a label


def test_upper_bound_trains_every_class_with_masks_and_is_evaluated_on_the_study_split(tmp_path):
    """--variant upper_bound: the training set has every class mask-supervised, the validation set and the stored
    strong classes are the study's split (so its weak mask AP is measured on the same classes as the other runs'),
    and compare prints each variant's weak mask AP as a share of the upper bound's."""
    import argparse

    from opmask_fast.cli import preflight
    from opmask_fast.config import get_preset
    from opmask_fast.data import SyntheticSpec, ensure_synthetic

    paths = ensure_synthetic(SyntheticSpec(seed=4, num_train=6, num_val=3), str(tmp_path / "cache"))
    paths["default_split"] = "circle,triangle,cross"
    args = argparse.Namespace(split=None, split_seed=0, variant="upper_bound")
    data = preflight.prepare_train_data(args, paths, get_preset("opmask_r18_lite").input)
    assert data.train_split == "all" and data.split == "circle,triangle,cross"
    assert not data.train_set.weak_ids and data.val_set.weak_ids
    assert data.strong_ids == data.val_set.strong_ids and data.strong_ids < set(data.train_set.category_ids)
    args.variant = "opmask_std_boxproj"
    same = preflight.prepare_train_data(args, paths, get_preset("opmask_r18_lite").input)
    assert same.train_split == same.split and same.train_set.strong_ids == data.strong_ids

    results = {"baseline": [dict(_metrics(1.0, 30.0), seed=0)], "upper_bound": [dict(_metrics(40.0, 31.0), seed=0)],
               "opmask_std_boxproj": [dict(_metrics(30.0, 30.0), seed=0)]}
    table = compare.format_comparison(results)
    assert "weak mask AP as a share of the upper bound's (40.0): " \
           "OPMask + prior x feature std + box projection loss 75%" in table
    assert "share of the upper bound's (40.0): Mask R-CNN baseline 2%" in table
    # a variant whose own upper bound ran is shared out against that one; the bounds themselves are not
    results["upper_bound_7x7"] = [dict(_metrics(20.0, 31.0), seed=0)]
    table = compare.format_comparison(results)
    assert "weak mask AP as a share of upper_bound_7x7's (20.0): " \
           "OPMask + prior x feature std + box projection loss 150%" in table
    assert "share of the upper bound's (40.0): Mask R-CNN baseline 2%" in table
    shares = [line for line in table.splitlines() if line.startswith("weak mask AP as a share")]
    assert len(shares) == 2 and not any("Upper bound" in line for line in shares)


def test_each_variant_has_at_most_one_upper_bound_and_prior_grad_rois_does_not_split_them():
    """upper_bound_of pairs a variant with the variant that trains its model with every class mask-supervised:
    `prior_grad_rois` only routes the weak RoIs' gradient, so the heads trained by the mask-supervised RoIs share their
    bound with the same head trained by every RoI; every bound of the study bounds some variant (two bounds of one
    model would leave one of them unreturned)."""
    from opmask_fast.variants import VARIANTS, upper_bound_of

    assert upper_bound_of("opmask_std_boxproj_maskres_separate16") == "upper_bound"
    assert upper_bound_of("opmask_std_boxproj_maskres_separate32_suponly") == "upper_bound_separate32"
    assert upper_bound_of("opmask_std_boxproj_maskres_suponly") == "upper_bound_maskres"
    assert upper_bound_of("baseline") is None and upper_bound_of("opmask") is None
    bounds = {n for n, v in VARIANTS.items() if v.train_split == "all"}
    assert bounds == {upper_bound_of(n) for n in VARIANTS} - {None}
