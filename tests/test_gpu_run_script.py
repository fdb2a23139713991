"""benchmarks/gpu_run.sh parses, and its final table is built from the stage results it writes (no GPU needed)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("script", ["gpu_run.sh", "gpu_prepare.sh"])
def test_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", os.path.join(ROOT, "benchmarks", script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_summary_table(tmp_path):
    (tmp_path / "stages.tsv").write_text("build\tok\t95\nCUDA op tests\tFAILED (exit 1)\t40\n")
    res = {f"{p} {d}": {"s_per_img": t, "min": t, "detections": 100}
           for d, ts in (("fp32", (0.06, 0.05, 0.08)), ("bf16", (0.04, 0.03, 0.05)))
           for p, t in zip(("opmask", "baseline", "torchvision"), ts)}
    (tmp_path / "model.json").write_text(json.dumps({"device": "GPU X", "size": [800, 1333], "proposals": 1000,
                                                     "rounds": 20, "results": res}))
    row = {"R": 512, "dtype": "fp32", "mode": "fwd", "unfused": 0.5, "triton": 0.2, "floor_ms_measured_bw": 0.1,
           "x_floor": 2.0, "speedup_vs_unfused": 2.5}
    (tmp_path / "prior.json").write_text(json.dumps({"device": "GPU X", "copy_TBps": 3.0, "fused_provider": "triton",
                                                     "rows": [row]}))
    static = {"device": "GPU X", "size": [800, 1344], "host_syncs": "none", "load": {"class_candidates": 1000.0},
              "rows": [{"model": "OPMask", "dtype": "bf16", "batch": 1, "dynamic_s_per_img": 0.03,
                        "static_s_per_img": 0.025, "graph_s_per_img": 0.019}],
              "stage_config": "bf16, batch 1", "stages": {"OPMask": [{"stage": "paste", "host_ms": 1.5, "gpu_ms": 0.25}]}}
    (tmp_path / "static.json").write_text(json.dumps(static))
    step = {"device": "GPU X", "size": "800x1344", "batch": 2, "rounds": 15,
            "rows": [{"dtype": "bf16", "recipe": "headline", "step_s": 0.2, "without_prior_s": 0.198, "share": 0.01,
                      "prior_kernels_ms": 0.5}]}
    (tmp_path / "train_step.json").write_text(json.dumps(step))
    path = {"benchmarks": [{"group": "prior path feature_std R=512 float32 fwd cuda", "params": {"provider": "fused"},
                            "stats": {"median": 0.002},
                            "extra_info": {"kernel_ms": 1.5, "floor_GBps": 900.0, "device": "GPU X",
                                           "top_kernels": [["roi_align_forward_kernel", 1.0],
                                                           ["add_weighted_map_kernel", 0.4]]}}]}
    (tmp_path / "prior_path.json").write_text(json.dumps(path))
    # as train writes it: training records, then the evaluation's record
    (tmp_path / "train_metrics.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"iteration": 40, "seconds_per_iter": 0.7, "loss": 3.0}, {"iteration": 50, "seconds_per_iter": 0.5, "loss": 2.0},
        {"iteration": 50, "eval": {"bbox_AP": 0.1}})) + "\n")
    (tmp_path / "train_metrics.json").write_text(json.dumps({"num_images": 50, "seconds_per_image": 0.07,
                                                             "bbox_AP": 0.1, "mask_AP": 0.0, "train_seconds": 40}))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_validate.py"), "summary", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "| CUDA op tests | FAILED (exit 1) | 40 |" in out
    assert "| fp32 | 0.0600 | 0.0500 | 0.0800 | 1.20 |" in out and "| bf16 | 0.0400 | 0.0300 | 0.0500 | 1.33 |" in out
    assert "| R=512 fp32 fwd | 0.500 | 0.200 | 0.100 | 2.0x | 2.50x |" in out
    assert "| OPMask | bf16 | 1 | 0.0300 | 0.0250 | 0.0190 |" in out and "| paste | 0.250 | 1.500 |" in out
    assert "| bf16 | headline | 0.2000 | 0.1980 | 1.0% | 0.500 |" in out
    assert ("| prior path feature_std R=512 float32 fwd cuda | fused | 2.000 | 1.500 | - | roi_align_forward_kernel "
            "1.000, add_weighted_map_kernel 0.400 |") in out
    assert "training: 50 iterations, 0.500 s/iter, last loss 2.000" in out and "evaluation: 50 images" in out
    assert (tmp_path / "summary.md").read_text().strip() == out.strip()


def test_kernel_names_are_shortened_for_the_prior_path_table():
    pytest.importorskip("torchvision")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from bench_prior_path import short_kernel_name

    cases = {
        "void opmask_fast::add_weighted_map_kernel<float, float>(float const*, float const*, float*, "
        "opmask_fast::MapStats const*, float*, long, long, long, long)": "add_weighted_map_kernel",
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*, 1ul> >"
        "(int, at::native::FillFunctor<float>, std::array<char*, 1ul>)": "vectorized_elementwise_kernel",
        "_object_prior_add_fwd_kernel": "_object_prior_add_fwd_kernel",
        "Memcpy DtoD (Device -> Device)": "Memcpy DtoD",
    }
    for name, short in cases.items():
        assert short_kernel_name(name) == short
