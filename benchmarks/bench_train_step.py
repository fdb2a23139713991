"""Cost per image of one training step and one inference step of the main job's model (CPU).

The model is the tiny preset as the main job trains it (64 RoIs per image, box head 64-64-128-128), on batches of the
embedded synthetic dataset (4 images of 128 px, generated into a temporary cache on first use), one torch thread as
the main job runs each training. Providers: the adaptive prior (``feature_range``, the main job's headline), the
baseline (no prior) and the paper's recipe, so the prior's share of a step is read off in one run; then three cheaper
models, candidates for a faster main job (see ``PROVIDERS``).

    python -m pytest benchmarks/bench_train_step.py --benchmark-only

Reports seconds per step; divide by 4 for seconds per image (the table at the end does).
"""

from __future__ import annotations

import pytest
import torch

from opmask_fast.config import build_model, get_preset
from opmask_fast.data import SyntheticSpec, ensure_synthetic
from opmask_fast.data.loader import train_loader
from opmask_fast.engine.setup import apply_override, train_dataset
from opmask_fast.engine.solver import TrainConfig, build_optimizer

# provider -> (ModelConfig fields, `--set` overrides on top of the preset). The first three are the main job's models;
# the last three are cheaper models measured as candidates for a faster main job (a trunk half as wide, the mask head on
# mask-supervised RoIs only, 32 RoIs per image at half foreground), kept so their speed-up is re-measured in every run.
# The summary's ratios are against the first provider (the main job's headline model), in the same run.
_RANGE = dict(prior_scale="feature_range")
PROVIDERS = {
    "opmask_range": (_RANGE, []),
    "baseline": (dict(use_prior=False), []),
    "opmask": (dict(prior_scale="none"), []),
    "range_w32": (_RANGE, ["backbone.width=32"]),
    "range_w32_sup": (_RANGE, ["backbone.width=32", "roi_heads.mask_head_on_supervised_only=True"]),
    "range_w32_sup_r32": (_RANGE, ["backbone.width=32", "roi_heads.mask_head_on_supervised_only=True",
                                   "roi_heads.batch_size_per_image=32", "roi_heads.positive_fraction=0.5"]),
}
BATCH, STEPS = 4, 6


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    paths = ensure_synthetic(SyntheticSpec(seed=0, num_train=40, num_val=4), str(tmp_path_factory.mktemp("cache")))
    ds = train_dataset({**paths}, get_preset("opmask_r18_tiny").input, "circle,triangle,cross")
    it = train_loader(ds, batch_size=BATCH, seed=0)
    return [next(it) for _ in range(STEPS)]


def _model(provider: str):
    cfg = get_preset("opmask_r18_tiny")
    cfg.num_classes = 6
    fields, extra = PROVIDERS[provider]
    for item in extra:
        apply_override(cfg, item)
    for k, v in fields.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    return build_model(cfg.validate())


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_train_step(benchmark, batches, provider):
    benchmark.group = "train step (4 images)"
    model = _model(provider).train()
    opt = build_optimizer(model, TrainConfig())
    state = {"i": 0}

    def step():
        images, targets = batches[state["i"] % STEPS]
        state["i"] += 1
        loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)
        opt.step()

    for _ in range(2):  # warm-up: allocator and oneDNN primitive caches
        step()
    benchmark.pedantic(step, rounds=8, iterations=1)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_inference_step(benchmark, batches, provider):
    benchmark.group = "inference step (4 images)"
    model = _model(provider).eval()
    images = batches[0][0]

    def run():
        with torch.no_grad():
            model(images)

    run()
    benchmark.pedantic(run, rounds=8, iterations=1)
