"""``python -m opmask_fast.analyze`` and the reports: on two finished tiny runs (trained here), on run folders built
by hand (complementary splits pooled per model kind), the compare hook, the pictures, and the command's errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from opmask_fast.data import SyntheticSpec, ensure_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--iters", "2", "--batch-size", "2", "--log-period", "1", "--quiet", "--eval-max-images", "3"]


def _analyze(*args):
    return subprocess.run([sys.executable, "-m", "opmask_fast.analyze", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _png(path, min_side=100):
    assert os.path.getsize(path) > 1000, path
    with Image.open(path) as im:
        assert min(im.size) >= min_side and im.getextrema() != ((0, 0),) * 3, path  # not one flat colour


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A baseline and an OPMask run of 2 iterations on a small synthetic set (folders named as compare names them)."""
    from opmask_fast import train

    root = tmp_path_factory.mktemp("runs")
    paths = ensure_synthetic(SyntheticSpec(seed=2, num_train=6, num_val=3), str(root / "cache"))
    data = ["--train-ann", paths["train_ann"], "--train-images", paths["train_images"], "--val-ann",
            paths["val_ann"], "--val-images", paths["val_images"], "--split", "circle,triangle,cross"]
    train.main([*data, *FAST, "--no-prior", "--output-dir", str(root / "baseline_s0")])
    train.main([*data, *FAST, "--variant", "opmask_gain40", "--output-dir", str(root / "opmask_s0")])
    return root


def test_analyze_two_trained_runs(trained, tmp_path):
    base, op = str(trained / "baseline_s0"), str(trained / "opmask_s0")
    docs = str(tmp_path / "docs" / "crops.png")
    proc = _analyze(base, op, "--images", "1", "--output-dir", str(tmp_path / "cmp"), "--docs-picture", docs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # three weak classes: no slope is printed, the reason is
    assert proc.stdout.count("regression not meaningful: 3 classes, fewer than 5") == 2
    assert "Mask R-CNN baseline" in proc.stdout and "OPMask + prior x40" in proc.stdout
    for run in (base, op):
        text = open(os.path.join(run, "report.md")).read()
        assert "## Mask AP per class" in text and "| ring | **weak** |" in text and "| circle | strong |" in text
        for name in ("losses.png", "figure3.png", "crops.png"):
            assert f"](report/{name})" in text
            _png(os.path.join(run, "report", name))
        vis = [f for f in os.listdir(os.path.join(run, "report")) if f.startswith("vis_")]
        assert len(vis) == 1 and f"](report/{vis[0]})" in text
    report = open(tmp_path / "cmp" / "report.md").read()
    assert "| metric | baseline_s0 (Mask R-CNN baseline) | opmask_s0 (OPMask + prior x40) |" in report
    assert "![Figure 3](report/figure3.png)" in report and "![crops](report/crops.png)" in report
    for name in ("figure3.png", "losses.png", "crops.png"):
        _png(str(tmp_path / "cmp" / "report" / name))
    _png(docs)
    for picture, needles in ((tmp_path, ["--docs-picture", "is a folder"]),
                             (tmp_path / "cmp" / "report.md" / "x.png", ["--docs-picture's folder", "report.md"])):
        proc = _analyze(base, op, "--images", "1", "--docs-picture", str(picture))
        _error_line(proc.returncode, proc.stderr, *needles)


def test_compare_ends_with_the_report(trained, capsys):
    from opmask_fast.cli import compare

    compare._write_report({"baseline": [{"seed": 0}], "opmask": [{"seed": 0}]}, str(trained))
    out = capsys.readouterr().out
    assert f"report: {os.path.join(str(trained), 'report.md')}" in out
    assert os.path.isfile(trained / "report" / "figure3.png")


def test_compare_report_leaves_no_stale_comparison_and_a_signal_stops_it(trained, capsys, monkeypatch):
    """With one finished run the report is that run's own: an earlier compare's report.md in the folder (whose figure
    is redrawn for the new runs) is removed. A SIGTERM during the report stops compare (exit 143), not a report
    failure (exit 1); analyze's own errors stay a report failure."""
    from opmask_fast.cli import compare

    (trained / "report.md").write_text("an earlier comparison")
    compare._write_report({"baseline": [{"seed": 0}]}, str(trained))
    assert f"report: {os.path.join(str(trained), 'baseline_s0', 'report.md')}" in capsys.readouterr().out
    assert not (trained / "report.md").exists()

    def signalled(folders, out):
        raise SystemExit(143)

    monkeypatch.setattr(compare, "report_runs", signalled)
    with pytest.raises(SystemExit) as stop:
        compare._write_report({"baseline": [{"seed": 0}]}, str(trained))
    assert stop.value.code == 143
    monkeypatch.setattr(compare, "report_runs", lambda folders, out: (_ for _ in ()).throw(SystemExit(2)))
    (failure,) = compare._write_report({"baseline": [{"seed": 0}]}, str(trained))
    assert "not written: SystemExit(2)" in str(failure)
    assert compare.format_comparison({"baseline": []}) == "no run finished: no table"


def _coco(path, num_classes=6):
    """Class k's boxes overlap a partner box by IoU k/10 in its own image: mean IoU (k/10) / 1 pair each way."""
    cats = [{"id": k + 1, "name": f"c{k}"} for k in range(num_classes)]
    images, anns = [], []
    for k in range(num_classes):
        images.append({"id": k + 1, "file_name": f"{k}.png", "height": 100, "width": 100})
        iou = (k + 1) / 10  # two 10 x 10 boxes shifted by s along x: IoU = (10 - s) / (10 + s)
        s = 10 * (1 - iou) / (1 + iou)
        for j, x in enumerate((0.0, s)):
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": k + 1, "bbox": [x, 0, 10, 10],
                         "area": 100, "iscrowd": 0, "segmentation": []})
    json.dump({"images": images, "annotations": anns, "categories": cats}, open(path, "w"))


def _run(folder, weak, ap):
    os.makedirs(folder)
    names = [f"c{k}" for k in range(6)]
    json.dump({"mask_AP_per_class": {n: ap.get(n, 99.0) for n in names}, "weak_categories": weak,
               "strong_categories": [n for n in names if n not in weak], "mask_AP_weak": 1.0},
              open(folder / "metrics.json", "w"))
    with open(folder / "metrics.jsonl", "w") as f:
        for it in (1, 2, 3):
            f.write(json.dumps({"iteration": it, "loss": 3.0 / it, "loss_mask": 0.7 / it}) + "\n")


def test_complementary_splits_pooled_per_kind(tmp_path):
    from opmask_fast.analysis.figure3 import regress

    ann = str(tmp_path / "train.json")
    _coco(ann)
    iou = np.arange(1, 7) / 10
    base_ap = {f"c{k}": 50 - 100 * iou[k] + (3 if k % 2 else -3) for k in range(6)}  # falls with overlap
    new_ap = {f"c{k}": 40.0 + (5 if k % 2 else -5) for k in range(6)}  # flat
    split_a, split_b = ["c0", "c1", "c2"], ["c3", "c4", "c5"]
    runs = []
    for kind, ap in (("base", base_ap), ("new", new_ap)):
        for tag, weak in (("a", split_a), ("b", split_b)):
            _run(tmp_path / f"{kind}_{tag}", weak, {k: ap[k] for k in weak})  # strong classes get 99: never pooled
            runs.append(f"{kind}={tmp_path / f'{kind}_{tag}'}")
    proc = _analyze(*runs, "--train-ann", ann, "--images", "0", "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for ap, label in ((base_ap, "base"), (new_ap, "new")):
        reg = regress(iou, [ap[f"c{k}"] for k in range(6)])
        assert f"**{label}** ({label}_a, {label}_b): {reg.describe()}" in proc.stdout
    assert "**base** (base_a, base_b): slope -94.9 AP per unit IoU, r = -0.985, p < .001 (6 classes)" in proc.stdout
    # each class from the split where it is weak, with its mean IoU and pairs
    assert f"| c5 | 0.600 | 2 | {base_ap['c5']:.1f} | {new_ap['c5']:.1f} |" in proc.stdout
    assert "largest relative improvement, new over base: c5 " in proc.stdout
    _png(str(tmp_path / "out" / "report" / "figure3.png"))
    _png(str(tmp_path / "out" / "report" / "losses.png"))
    assert "pictures" not in open(tmp_path / "base_a" / "report.md").read().lower()  # --images 0: no model loaded


def test_runs_pooled_with_other_model_configs_are_named():
    """Runs pooled as one model kind (seeds of it) from another preset or a --set beyond the study's fields: analyze
    warns, naming them and the fields; the study's own fields (which make the kind) and equal configs give nothing."""
    from opmask_fast.analysis.runs import Run, pooling_differences
    from opmask_fast.config import get_preset
    from opmask_fast.variants import label_of

    def run(name, preset, **changes):
        cfg = get_preset(preset).to_dict()
        cfg.update(changes)
        return Run(folder=f"/r/{name}", metrics_path="", metrics={}, meta={"model_config": cfg},
                   label=label_of(cfg))

    same = [run("a_s0", "opmask_r18_lite_paper"), run("a_s1", "opmask_r18_lite_paper")]
    assert pooling_differences(same) == []
    mixed = same + [run("b_s0", "opmask_r18_tiny")]
    mixed[-1].label = same[0].label
    (note,) = pooling_differences(mixed)
    assert note.startswith("a_s0, a_s1, b_s0 are pooled as 'OPMask (paper recipe)' but differ in ") and "backbone" in note


def _error_line(code, stderr, *needles):
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m opmask_fast.analyze: error: "), stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_error_exit_code(tmp_path):
    proc = _analyze(str(tmp_path / "nope"))
    _error_line(proc.returncode, proc.stderr, "no metrics.json", "nope")
    assert proc.stdout == ""


def test_errors_before_any_work(tmp_path, capsys):
    from opmask_fast import analyze

    def check(argv, *needles):
        with pytest.raises(SystemExit) as e:
            analyze.main([str(a) for a in argv])
        _error_line(e.value.code, capsys.readouterr().err, *needles)

    _run(tmp_path / "r", ["c0"], {"c0": 1.0})
    check([tmp_path / "r"], "--train-ann")  # no checkpoint names the training annotations
    check([tmp_path / "r", "--train-ann", tmp_path / "missing.json"], "missing.json")
    check([tmp_path / "r", tmp_path / "r" / "metrics.json", "--train-ann", "x"], "twice")
    ann = str(tmp_path / "train.json")
    _coco(ann, num_classes=3)  # c3..c5 of the run are not in it
    check([tmp_path / "r", "--train-ann", ann], "not in", "train.json")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text(json.dumps({"mask_AP": 1.0}))
    check([tmp_path / "bad", "--train-ann", ann], "mask_AP_per_class")
    (tmp_path / "bad" / "metrics.json").write_text("{")
    check([tmp_path / "bad", "--train-ann", ann], "not valid JSON")
    check([tmp_path / "r", "--train-ann", ann, "--min-classes", "2"], "--min-classes")
    (tmp_path / "a_file").write_text("")
    for extra, needles in ((["--device", "bogus"], ["--device 'bogus' is not a device"]),
                           (["--num-threads", "0"], ["--num-threads must be >= 1"]),
                           (["--output-dir", tmp_path / "a_file"], ["--output-dir", "a_file is a file"]),
                           (["--docs-picture", tmp_path / "x.png"], ["x.png needs two runs with checkpoints"])):
        check([tmp_path / "r", "--train-ann", ann, *extra], *needles)
    assert not os.path.exists(tmp_path / "r" / "report.md")  # nothing was written


def test_render_overview_and_crops_grid():
    from opmask_fast.analysis.pictures import render

    h, w = 96, 128
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    boxes = torch.tensor([[10.0, 10, 60, 60], [12, 12, 58, 62], [70, 20, 120, 90], [0, 0, 5, 5]])
    masks = torch.zeros(4, h, w, dtype=torch.bool)
    masks[:, 20:40, 20:40] = True
    out = {"boxes": boxes, "labels": torch.tensor([0, 1, 1, 0]), "scores": torch.tensor([0.9, 0.8, 0.7, 0.1]),
           "masks": masks, "priors": torch.rand(4, 7, 7, generator=torch.Generator().manual_seed(0))}
    pic = render(image, out, ["alpha", "beta"], {1}, score_thresh=0.5)
    assert pic.size[0] > 1.5 * pic.size[1] > 300  # masks and priors side by side, enlarged
    alone = render(image, out, ["alpha", "beta"], {1}, show_priors=False)
    assert alone.size[0] < pic.size[0]


def test_names_with_dollar_signs_are_drawn_as_written(tmp_path):
    """Class names and run labels come from the user's files; matplotlib would read a `$` pair as math and fail."""
    from opmask_fast.analysis.figure3 import regress
    from opmask_fast.analysis.pictures import render
    from opmask_fast.analysis.plots import plot_figure3, plot_losses

    names = ["a$^$b", "$5 {bill$", "c_$x"]
    image = np.zeros((40, 50, 3), dtype=np.uint8)
    out = {"boxes": torch.tensor([[5.0, 5, 30, 30], [10, 10, 45, 35]]), "labels": torch.tensor([0, 1]),
           "scores": torch.tensor([0.9, 0.8]), "masks": torch.zeros(2, 40, 50, dtype=torch.bool),
           "priors": torch.rand(2, 7, 7)}
    assert render(image, out, names, {1}).size[0] > 100
    logs = [("run $a^$", [{"iteration": i, "loss": 1.0 / i, "loss_mask": 0.5 / i} for i in (1, 2, 3)])]
    _png(plot_losses(logs, str(tmp_path / "losses.png")))
    ap, iou = dict(zip(names, (10.0, 30.0, 20.0))), dict(zip(names, (0.1, 0.5, 0.3)))
    _png(plot_figure3([("$kind$", ap, regress([0.1, 0.5, 0.3], [10, 30, 20], min_points=3))], iou,
                      str(tmp_path / "figure3.png"), title="$t$", highlight=["a$^$b"]))


def test_figure3_leaves_out_classes_without_a_box_pair(tmp_path):
    """A weak class whose instances are each alone in their image has no mean box IoU (NaN): it is not plotted,
    and the axes are those of the other classes wherever it comes in the class order."""
    from opmask_fast.analysis.figure3 import regress
    from opmask_fast.analysis.plots import plot_figure3

    ap = {"aardvark": 5.0, "bear": 10.0, "cat": 30.0, "dog": 20.0}  # the NaN class first, as in its sort order
    iou = {"aardvark": float("nan"), "bear": 0.1, "cat": 0.5, "dog": 0.3}
    reg = regress([0.1, 0.5, 0.3], [10, 30, 20], min_points=3)
    _png(plot_figure3([("kind", ap, reg), ("other", {**ap, "aardvark": float("nan")}, reg)], iou,
                      str(tmp_path / "figure3.png")))
