"""What ``evaluate`` and ``predict`` check before they build a model or read an image (see ``cli.checks``).

Every function raises ``cli.UsageError`` (one line, exit code 2 at the command line) naming the option, file or
annotation at fault, and returns what it read so that nothing is read twice.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import ModelConfig
from ..data import CocoInstances, load_coco, val_dataset
from ..training.checkpoint import model_from_checkpoint
from .checks import (MAX_THREADS, CategoryGroups, build_dataset, check_device, check_number, check_output_dir,
                     check_paths, check_same_categories, choose_split, images_read, read_checkpoint)
from .errors import UsageError, user_errors

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass
class EvalPlan:
    state: dict  # the checkpoint's contents
    dataset: CocoInstances
    split: str
    output_dir: str
    model: torch.nn.Module | None = None  # on the CPU, built with evaluate's --set (None: build it from state)


def check_evaluate(args) -> EvalPlan:
    """Everything ``opmask_fast.evaluate`` needs: options, device, the checkpoint, the data it names or is given."""
    check_number(args, "max_images", minimum=1)
    check_number(args, "visualize", minimum=0)
    check_number(args, "num_threads", minimum=1, maximum=MAX_THREADS)
    check_device(args.device)
    state = read_checkpoint(args.checkpoint)
    meta = state["meta"]
    with user_errors(f"--checkpoint {args.checkpoint}: its model config cannot be used"):
        cfg = ModelConfig.from_dict(meta["model_config"])
    model = None
    if getattr(args, "set", None):
        # Built here with the changed config, so a change the weights do not fit (a head's width, the class count)
        # is refused before any data is read; the evaluation then uses this model.
        with user_errors("--set"):
            model, _ = model_from_checkpoint(args.checkpoint, "cpu", state=state, overrides=args.set)
        cfg = model.cfg
    data = dict(meta.get("data") or {})
    if args.val_ann or args.val_images:
        if not (args.val_ann and args.val_images):
            raise UsageError("give both --val-ann and --val-images")
        data.update(val_ann=args.val_ann, val_images=args.val_images)
        source = {"--val-ann": args.val_ann}, {"--val-images": args.val_images}
    else:
        if not data.get("val_ann") or not data.get("val_images"):
            raise UsageError(f"--checkpoint {args.checkpoint} names no validation data: give --val-ann and --val-images")
        source = ({"validation annotations of the checkpoint": data["val_ann"]},
                  {"validation images of the checkpoint": data["val_images"]})
    check_paths(files=source[0], folders=source[1])
    with user_errors():
        coco = load_coco(data["val_ann"])
    cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    check_same_categories(CategoryGroups(cats, set(), data["val_ann"]), meta["category_ids"], meta["category_names"],
                          f"the checkpoint {args.checkpoint}")
    split = choose_split(args.split, cats, ann_file=data["val_ann"], default=meta.get("split"))
    # Without --split the checkpoint's own strong classes are exact (a seeded voc40 included).
    strong = split if args.split else (meta.get("strong_ids") or split)
    dataset = build_dataset(lambda: val_dataset(data, cfg.input, strong, meta.get("split_seed", 0), coco=coco),
                            role="evaluation", used=images_read(args.max_images, getattr(args, "visualize", 0)))
    out = args.output_dir or os.path.dirname(os.path.abspath(args.checkpoint))
    if getattr(args, "prior_ablation", None):
        if not cfg.use_prior:
            raise UsageError(f"--prior-ablation needs a model with a prior; {args.checkpoint} is the baseline "
                             "(use_prior=False)")
        if not args.output_dir:  # the model's own metrics stay where they are
            out = os.path.join(out, f"ablation_{args.prior_ablation}")
    out = check_output_dir(out)
    if not any(r["anns"] for r in dataset.records):  # a valid set (e.g. images to predict on), but nothing to score
        logger.warning("%s has no usable annotation: every AP is empty ('-')", data["val_ann"])
    return EvalPlan(state=state, dataset=dataset, split=split, output_dir=out, model=model)


@dataclass
class PredictPlan:
    state: dict
    files: list[str]  # image file names in --images, sorted


def check_predict(args, extensions: tuple[str, ...]) -> PredictPlan:
    """Everything ``opmask_fast.predict`` needs: options, device, an image folder with images, the checkpoint."""
    check_number(args, "score_thresh", minimum=0, maximum=1)
    check_number(args, "num_threads", minimum=1, maximum=MAX_THREADS)
    check_device(args.device)
    check_paths(folders={"--images": args.images})
    # A broken link is listed (it is skipped with a warning when read, not silently); folders are not.
    files = sorted(f for f in os.listdir(args.images) if f.lower().endswith(extensions)
                   and (os.path.isfile(os.path.join(args.images, f)) or not os.path.exists(os.path.join(args.images, f))))
    if not files:
        raise UsageError(f"--images {args.images} holds no images ({', '.join(extensions)})")
    state = read_checkpoint(args.checkpoint)
    check_output_dir(args.output_dir)
    return PredictPlan(state=state, files=files)
