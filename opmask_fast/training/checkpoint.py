"""Checkpoints: atomic writes, the RNG state that makes a resumed run continue exactly, and the model rebuilt from a
checkpoint (`model_from_checkpoint`, what evaluation, the reports and the `Predictor` load)."""

from __future__ import annotations

import math
import os
import random

from collections.abc import Sequence

import numpy as np
import torch

from ..config import ModelConfig, apply_override
from ..modeling.weights import WeightsMismatchError
from .initial_weights import build_with_weights, check_model_weights


def save_atomic(obj: dict, path: str) -> None:
    """Writes ``obj`` with ``torch.save`` to a temporary file in the same folder, syncs it, then renames it over
    ``path``.

    A crash (or an exception) while writing leaves the previous file at ``path`` intact and no temporary file behind.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(path: str) -> list[str]:
    """Removes the temporary files ``save_atomic`` leaves beside ``path`` when its process is killed mid-write (the
    file at ``path`` itself is always whole). Call it before writing ``path`` again; returns what was removed."""
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}.tmp-"
    removed = [os.path.join(folder, f) for f in os.listdir(folder) if f.startswith(prefix)] if os.path.isdir(folder) \
        else []
    for f in removed:
        os.remove(f)
    return removed


class CheckpointError(ValueError):
    """A file that is not a checkpoint of opmask_fast (or not one that fits its use); the message names it."""


def load_checkpoint(path: str) -> dict:
    """Loads a file written by ``torch.save`` (tensors and plain Python values only: ``weights_only``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: anything ``torch.load`` cannot read safely (text, random bytes, a truncated file, a pickle of
            arbitrary objects) or that holds no dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}" + (" (it is a folder)" if os.path.isdir(path) else ""))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own message is many lines of advice about weights_only; say what matters
        kind = "the file is empty" if os.path.getsize(path) == 0 else \
            "not written by torch.save, truncated, or holding objects other than tensors and plain values"
        raise CheckpointError(f"cannot read checkpoint {path}: it is not a checkpoint ({kind}); expected a "
                              "checkpoint.pth written by opmask_fast.train or a state dict saved with torch.save") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(state).__name__}, not a dict")
    return state


def check_model_checkpoint(state: dict, path: str) -> dict:
    """Checks that ``state`` (from ``load_checkpoint``) is a checkpoint written by ``opmask_fast.train``: model weights
    and the meta data (model config, categories) needed to rebuild the model. Returns ``state``.

    Raises:
        CheckpointError: naming the file and what is missing.
    """
    meta = state.get("meta")
    model = state.get("model")
    if not isinstance(meta, dict) or not isinstance(model, dict):
        keys = ", ".join(sorted(map(str, state))[:8]) + (" ..." if len(state) > 8 else "")
        raise CheckpointError(f"{path} is not a checkpoint of opmask_fast.train: it has no 'model' and 'meta' entries "
                              f"(its keys: {keys or 'none'})")
    missing = [k for k in ("model_config", "category_ids", "category_names") if k not in meta]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of opmask_fast.train: its meta has no {', '.join(missing)}")
    if not all(torch.is_tensor(v) for v in model.values()):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict of tensors")
    return state


def check_checkpoint_weights(state: dict, path: str) -> None:
    """Whether a checkpoint's weights fit its own model config, shapes only (the model built on the meta device), so
    a command refuses a damaged file before any data is read (``model_from_checkpoint`` finds the same when it builds
    the model, after the data)."""
    try:
        check_model_weights(checkpoint_config(state, path), state["model"], source=repr(path))
    except WeightsMismatchError as e:
        raise CheckpointError(f"{path}: its weights do not fit its own model config ({e})") from None


def train_seconds(state: dict) -> float:
    """The wall seconds of training a checkpoint records up to its iteration (0 where it records none)."""
    seconds = state.get("train_seconds")
    ok = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds) and seconds >= 0
    return float(seconds) if ok else 0.0


def get_rng_state(device: torch.device | None = None) -> dict:
    """RNG state of torch (CPU, and the CUDA generator of ``device`` when it is a GPU), numpy and random, as tensors
    and plain values (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }
    if device is not None and torch.device(device).type == "cuda":
        # The process' own GPU only: a run resumed where fewer GPUs are visible must still restore it.
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restores ``get_rng_state``'s state; its CUDA generator to ``device`` when that is a GPU."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate(_to_tuples(state["python"]))
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # every visible GPU's, as older checkpoints hold it: the device's own
        index = torch.device(device).index if device is not None else None
        cuda = cuda[index or 0] if cuda and (index or 0) < len(cuda) else None
    if isinstance(cuda, torch.Tensor) and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def checkpoint_config(state: dict, path: str) -> ModelConfig:
    """The model config a checkpoint's meta holds (a fresh copy); CheckpointError naming ``path`` if unusable."""
    try:
        return ModelConfig.from_dict(state["meta"]["model_config"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its model config cannot be used: {e}") from None


def model_from_checkpoint(path: str, device: str | torch.device = "cpu", *, state: dict | None = None,
                          overrides: Sequence[str] = ()):
    """Rebuilds the model a checkpoint was trained with and loads its weights. Returns ``(model, meta)``.

    Args:
        state: the checkpoint's contents when already read (``cli.checks.read_checkpoint``).
        overrides: ``KEY=VALUE`` changes of its model config (``config.apply_override``), e.g. test-time proposal counts.

    Raises:
        CheckpointError: not a checkpoint of ``opmask_fast.train``, or weights that do not fit its own config.
    """
    state = check_model_checkpoint(load_checkpoint(path) if state is None else state, path)
    meta = state["meta"]
    cfg = checkpoint_config(state, path)
    for item in overrides:
        apply_override(cfg, item)
    cfg.validate()
    cfg.backbone.weights = None  # the checkpoint holds every weight; the ImageNet file need not exist any more
    try:
        model = build_with_weights(cfg, state=state["model"], source=repr(path))
    except WeightsMismatchError as e:
        what = "its own model config" if not overrides else f"its model config with {', '.join(overrides)}"
        raise CheckpointError(f"{path}: its weights do not fit {what} ({e})") from None
    model.to(device).eval()
    return model, meta
