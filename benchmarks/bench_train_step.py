"""Cost per image of one training step and one inference step of the main job's models (CPU).

The main job trains the lite preset (``opmask_r18_lite``: ResNet-18 32 wide, box head 64-64-64-64, 32 RoIs per image
at half foreground, 4 mask-head convs) on batches of the embedded synthetic dataset (4 images of 128 px, generated
into a temporary cache on first use), one torch thread per training. Providers: the 7x7 recipe (prior x feature std +
box projection loss, the box head's own 7x7 map as the prior; the reference of the ratios), the baseline and the
paper's recipe, the prior at the mask head's resolution with the box head trained through it or detached (the
headline), then the study's other models: the lite preset with OPMask's 7 mask-head convs and the tiny preset
(``opmask_r18_tiny``: 64 wide, box head 64-64-128-128, 64 RoIs per image, 7 mask-head convs), so each cut's speed-up
and the prior's share of a step are read off in one run (see ``PROVIDERS``).

    python -m pytest benchmarks/bench_train_step.py --benchmark-only --benchmark-timer=time.process_time

Reports seconds per step; divide by 4 for seconds per image (the table at the end does).
"""

from __future__ import annotations

import pytest
import torch

from opmask_fast.config import apply_override, get_preset
from opmask_fast.data import SyntheticSpec, ensure_synthetic, train_dataset
from opmask_fast.data.loader import train_loader
from opmask_fast.modeling import build_model
from opmask_fast.training.solver import TrainConfig, build_optimizer
from opmask_fast.variants import apply_variant

# provider -> (preset, variant of opmask_fast.variants, `--set` overrides): the 7x7 recipe, the main job's baseline and
# paper recipe, the prior at mask resolution (box convs trained through it; the main job's headline, a 16-wide prior
# head of its own trained by the mask-supervised RoIs; the same head 32 wide; the box head read without gradient), then
# the other models of docs/study.md (the lite preset with OPMask's 7-conv mask head, the tiny preset), kept so the
# ratios between them are measured in every run. The summary's ratios are against the first provider, in the same run.
PROVIDERS = {
    "lite_std_boxproj": ("opmask_r18_lite", "opmask_std_boxproj", []),
    "lite_baseline": ("opmask_r18_lite", "baseline", []),
    "lite_opmask": ("opmask_r18_lite", "opmask", []),
    "lite_std_boxproj_maskres": ("opmask_r18_lite", "opmask_std_boxproj_maskres", []),
    "lite_std_boxproj_maskres_separate16_suponly": ("opmask_r18_lite", "opmask_std_boxproj_maskres_separate16_suponly",
                                                    []),
    "lite_std_boxproj_maskres_separate32": ("opmask_r18_lite", "opmask_std_boxproj_maskres_separate32", []),
    "lite_std_boxproj_maskres_detach": ("opmask_r18_lite", "opmask_std_boxproj_maskres_detach", []),
    "lite7_std_boxproj": ("opmask_r18_lite", "opmask_std_boxproj", ["roi_heads.mask_head_num_convs=7"]),
    "tiny_std_boxproj": ("opmask_r18_tiny", "opmask_std_boxproj", []),
    "tiny_range": ("opmask_r18_tiny", "opmask_range", []),
    "tiny_baseline": ("opmask_r18_tiny", "baseline", []),
}
BATCH, STEPS = 4, 6


def batch_stream(cache: str):
    """Training batches of BATCH synthetic images (the embedded dataset's rules, generated into `cache`), endless."""
    paths = ensure_synthetic(SyntheticSpec(seed=0, num_train=40, num_val=4), cache)
    ds = train_dataset({**paths}, get_preset("opmask_r18_tiny").input, "circle,triangle,cross")
    return train_loader(ds, batch_size=BATCH, seed=0)


def make_model(provider: str, *sets: str):
    """The provider's model (`PROVIDERS`), with further `--set`-style fields on top, seeded."""
    preset, variant, extra = PROVIDERS[provider]
    cfg = apply_variant(get_preset(preset), variant)
    cfg.num_classes = 6
    for item in [*extra, *sets]:
        apply_override(cfg, item)
    torch.manual_seed(0)
    return build_model(cfg.validate())


def make_step(model):
    """One training step of `model` on a batch `(images, targets)`: the main job's (SGD, clipping by value)."""
    opt = build_optimizer(model, TrainConfig())

    def step(images, targets):
        loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)
        opt.step()

    return step


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    it = batch_stream(str(tmp_path_factory.mktemp("cache")))
    return [next(it) for _ in range(STEPS)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_train_step(benchmark, batches, provider):
    benchmark.group = "train step (4 images)"
    train_step = make_step(make_model(provider).train())
    state = {"i": 0}

    def step():
        train_step(*batches[state["i"] % STEPS])
        state["i"] += 1

    for _ in range(2):  # warm-up: allocator and oneDNN primitive caches
        step()
    benchmark.pedantic(step, rounds=8, iterations=1)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_inference_step(benchmark, batches, provider):
    benchmark.group = "inference step (4 images)"
    model = make_model(provider).eval()
    images = batches[0][0]

    def run():
        with torch.no_grad():
            model(images)

    run()
    benchmark.pedantic(run, rounds=8, iterations=1)
