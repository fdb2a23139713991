"""Load ImageNet ResNet weights into the backbone from a local file (nothing is ever downloaded).

Accepted files:
- a torchvision ResNet state dict saved with `torch.save` (optionally under a "state_dict" / "model" key);
- detectron2's ImageNet pickles `R-50.pkl` / `R-101.pkl` (MSRA caffe2 names such as `res2_0_branch2a_w`, affine-only BN);
- detectron2-named state dicts (`stem.conv1.weight`, `res2.0.conv1.norm.weight`, ...), as .pkl or .pth.
Pickles are read with an unpickler that only builds numpy arrays and plain containers, so a weights file cannot run code.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor, nn


class WeightsMismatchError(ValueError):
    """The file's tensors do not fit the backbone; the message lists every missing, unexpected or mis-shaped key."""


_NORM_SUFFIX = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var",
                "weight": "weight", "bias": "bias", "running_mean": "running_mean", "running_var": "running_var",
                "num_batches_tracked": "num_batches_tracked"}
_CAFFE2_RULES = [
    (re.compile(r"^conv1_w$"), lambda m: "conv1.weight"),
    (re.compile(r"^res_conv1_bn_(s|b|rm|riv)$"), lambda m: f"bn1.{_NORM_SUFFIX[m[1]]}"),
    (re.compile(r"^res(\d)_(\d+)_branch2([abc])_w$"), lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{'abc'.index(m[3]) + 1}.weight"),
    (re.compile(r"^res(\d)_(\d+)_branch2([abc])_bn_(s|b|rm|riv)$"),
     lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{'abc'.index(m[3]) + 1}.{_NORM_SUFFIX[m[4]]}"),
    (re.compile(r"^res(\d)_(\d+)_branch1_w$"), lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
    (re.compile(r"^res(\d)_(\d+)_branch1_bn_(s|b|rm|riv)$"),
     lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.{_NORM_SUFFIX[m[3]]}"),
    (re.compile(r"^fc1000_([wb])$"), lambda m: f"fc.{'weight' if m[1] == 'w' else 'bias'}"),
]
_D2_RULES = [
    (re.compile(r"^stem\.conv1\.weight$"), lambda m: "conv1.weight"),
    (re.compile(r"^stem\.conv1\.norm\.(\w+)$"), lambda m: f"bn1.{m[1]}"),
    (re.compile(r"^res(\d)\.(\d+)\.conv(\d)\.weight$"), lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
    (re.compile(r"^res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)$"), lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
    (re.compile(r"^res(\d)\.(\d+)\.shortcut\.weight$"), lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
    (re.compile(r"^res(\d)\.(\d+)\.shortcut\.norm\.(\w+)$"), lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
    (re.compile(r"^linear\.(weight|bias)$"), lambda m: f"fc.{m[1]}"),
]
_OPTIONAL = ("running_mean", "running_var", "num_batches_tracked")  # absent from caffe2 files, absent from GroupNorm


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"), ("builtins", "set")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")
        return super().find_class(module, name)


def read_weights_file(path: str) -> dict[str, Tensor]:
    """Raw name -> tensor mapping of a weights file (see the module docstring for the formats)."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights file not found: {path!r} (weights are only read from a local file)")
    try:
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or not a weights file at all
        raise ValueError(f"could not read backbone weights from {path!r}: {type(e).__name__}: {e}") from e
    for key in ("blobs", "model", "state_dict"):
        if isinstance(data, dict) and key in data and isinstance(data[key], dict):
            data = data[key]
    if not isinstance(data, dict):
        raise ValueError(f"{path!r} holds a {type(data).__name__}, not a dict of tensors")
    out = OrderedDict()
    for k, v in data.items():
        if not isinstance(k, str) or k.endswith("_momentum") or k.startswith("__"):
            continue
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, Tensor):
            out[k] = v
    return out


def convert_to_torchvision_names(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Rename caffe2 / detectron2 keys to the backbone's torchvision names. Returns (state, format) with format one of
    "torchvision", "caffe2" (MSRA pickles) or "detectron2"."""
    for prefix in ("module.", "backbone.bottom_up.", "backbone.body."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    keys = list(state)
    fmt = "caffe2" if "conv1_w" in keys else ("detectron2" if any(k.startswith("stem.") for k in keys) else "torchvision")
    rules = {"caffe2": _CAFFE2_RULES, "detectron2": _D2_RULES}.get(fmt)
    if rules is None:
        return dict(state), fmt
    out = {}
    for k, v in state.items():
        for pattern, repl in rules:
            m = pattern.match(k)
            if m:
                out[repl(m)] = v
                break
        else:
            out[k] = v  # left as is: reported as unexpected below
    return out, fmt


def load_backbone_weights(resnet: nn.Module, path: str) -> str:
    """Copy the weights in `path` into `resnet` (an `opmask_fast.modeling.backbone.ResNet`); returns the file's format.

    The classifier (`fc.*`) is ignored; BatchNorm statistics missing from the file (caffe2 pickles fold them into the
    affine parameters) become mean 0 / variance 1; statistics the model has no buffer for (GroupNorm) are skipped.
    Raises:
        FileNotFoundError / ValueError: missing or unreadable file.
        WeightsMismatchError: any other missing, unexpected or mis-shaped key (all of them listed).
    """
    state, fmt = convert_to_torchvision_names(read_weights_file(path))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    target = resnet.state_dict()
    missing = [k for k in target if k not in state and not k.endswith(_OPTIONAL)]
    unexpected = [k for k in state if k not in target and not k.endswith(_OPTIONAL)]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}" for k in state
              if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        lines = [f"backbone weights in {path!r} ({fmt} format) do not match the model:"]
        for title, items in (("missing in file", missing), ("unexpected in file", unexpected), ("shape mismatch", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:40]) + (" ..." if len(items) > 40 else ""))
        raise WeightsMismatchError("\n".join(lines))
    with torch.no_grad():
        for k, t in target.items():
            if k in state:
                t.copy_(state[k].to(t.dtype))
            elif k.endswith("running_mean"):
                t.zero_()
            elif k.endswith("running_var"):
                t.fill_(1.0)
    return fmt
