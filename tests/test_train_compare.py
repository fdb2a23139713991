"""The side-by-side comparison: table formatting, seeds, mean and spread, reuse of finished runs."""

import json
import math
import os

import pytest

from opmask_fast import compare


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


def test_reuse_reads_finished_runs(tmp_path):
    for v, weak in (("baseline", 1.0), ("opmask", 2.0)):
        os.makedirs(tmp_path / f"{v}_s0")
        json.dump(_metrics(weak, 20.0), open(tmp_path / f"{v}_s0" / "metrics.json", "w"))
    args = compare.build_parser().parse_args(["--variants", "baseline,opmask", "--output-dir", str(tmp_path),
                                              "--reuse"])
    results = compare.run_all(args)
    assert [m["mask_AP_weak"] for m in results["baseline"]] == [1.0]
    assert results["opmask"][0]["seed"] == 0 and math.isclose(results["opmask"][0]["train_minutes"], 100 / 60)


def test_unknown_variant(tmp_path):
    args = compare.build_parser().parse_args(["--variants", "baseline,nope", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"unknown variants \['nope'\]"):
        compare.run_all(args)
