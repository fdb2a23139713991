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
from dataclasses import dataclass

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
    (re.compile(r"^(?:linear|stem\.fc)\.(weight|bias)$"), lambda m: f"fc.{m[1]}"),  # stem.fc: converted torchvision
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


def _read_raw(path: str):
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path!r} (weights are only read from a local file)")
    try:
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                return _NumpyOnlyUnpickler(f, encoding="latin1").load()
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or not a weights file at all
        # torch's own message is many lines of advice about weights_only; its first line is what matters
        first = (str(e).strip().splitlines() or [""])[0][:200]
        what = "the file is empty" if os.path.getsize(path) == 0 else \
            "not written by torch.save or pickle, truncated, or holding objects other than tensors and arrays"
        raise ValueError(f"could not read weights from {path!r}: it is not a checkpoint or weights file ({what}; "
                         f"{type(e).__name__}: {first})") from e


def _tensor_dict(data, path: str) -> dict[str, Tensor]:
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
            v = torch.from_numpy(np.ascontiguousarray(v)).reshape(v.shape)  # ascontiguousarray makes 0-d arrays 1-d
        if isinstance(v, Tensor):
            out[k] = v
    return out


def read_weights_file(path: str) -> dict[str, Tensor]:
    """Raw name -> tensor mapping of a weights file (see the module docstring for the formats)."""
    return _tensor_dict(_read_raw(path), path)


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


def check_state(state: dict[str, Tensor], target: dict[str, Tensor], *, what: str, optional: tuple[str, ...] = ()
                ) -> None:
    """Raise `WeightsMismatchError` listing every key of `target` missing from `state`, every key of `state` the target
    lacks and every shape that differs; keys ending in one of `optional` may be absent on either side."""
    missing = [k for k in target if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in target and not k.endswith(optional)]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}" for k in state
              if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{what} do not match the model:"]
        for title, items in (("missing in file", missing), ("unexpected in file", unexpected), ("shape mismatch", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:40]) + (" ..." if len(items) > 40 else ""))
        raise WeightsMismatchError("\n".join(lines))


def backbone_state(path: str) -> tuple[dict[str, Tensor], str]:
    """The ResNet tensors of a backbone weights file under torchvision names (classifier dropped), and its format."""
    state, fmt = convert_to_torchvision_names(read_weights_file(path))
    return {k: v for k, v in state.items() if not k.startswith("fc.")}, fmt


def check_backbone_weights(resnet: nn.Module, path: str) -> tuple[dict[str, Tensor], str]:
    """The file's tensors and format if they fit `resnet` (also one on the meta device); else WeightsMismatchError."""
    state, fmt = backbone_state(path)
    check_state(state, resnet.state_dict(), what=f"backbone weights in {path!r} ({fmt} format)", optional=_OPTIONAL)
    return state, fmt


def load_backbone_weights(resnet: nn.Module, path: str) -> str:
    """Copy the weights in `path` into `resnet` (an `opmask_fast.modeling.backbone.ResNet`); returns the file's format.

    The classifier (`fc.*`) is ignored; BatchNorm statistics missing from the file (caffe2 pickles fold them into the
    affine parameters) become mean 0 / variance 1; statistics the model has no buffer for (GroupNorm) are skipped.
    Raises:
        FileNotFoundError / ValueError: missing or unreadable file.
        WeightsMismatchError: any other missing, unexpected or mis-shaped key (all of them listed).
    """
    state, fmt = check_backbone_weights(resnet, path)
    target = resnet.state_dict()
    with torch.no_grad():
        for k, t in target.items():
            if k in state:
                t.copy_(state[k].to(t.dtype))
            elif k.endswith("running_mean"):
                t.zero_()
            elif k.endswith("running_var"):
                t.fill_(1.0)
    return fmt


# --------------------------------------------------------------------------------------- what kind of file is this?
@dataclass(frozen=True)
class WeightsFile:
    """What `inspect_weights_file` found in a file.

    kind: "backbone" (ImageNet ResNet weights for `load_backbone_weights`) or "model" (every weight of an OPMaskModel).
    format: "torchvision", "caffe2" (MSRA pickles), "detectron2" (detectron2 names), "checkpoint" (written by
        `opmask_fast.train`: weights + meta) or "state_dict" (an OPMaskModel state dict alone).
    pixel_format: for backbones, what the weights were trained on: "torchvision" (RGB, ImageNet mean/std, stride in the
        3x3 conv) or "msra" (BGR, std 1, stride in the 1x1 conv); None for full models.
    model_config: the `ModelConfig.to_dict()` a checkpoint was trained with, or None.
    """

    path: str
    kind: str
    format: str
    pixel_format: str | None = None
    model_config: dict | None = None


_MODEL_PREFIXES = ("rpn.", "roi_heads.", "backbone.fpn_", "backbone.lateral", "backbone.output")


def inspect_weights_file(path: str) -> WeightsFile:
    """Decide whether `path` holds backbone weights or a whole model, and in which format (reads the file once).

    Raises:
        FileNotFoundError / ValueError: missing or unreadable file.
        WeightsMismatchError: the file is neither a ResNet backbone file nor an opmask_fast model; names what it holds.
    """
    raw = _read_raw(path)
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict) and isinstance(raw.get("meta"), dict):
        return WeightsFile(path, "model", "checkpoint", model_config=raw["meta"].get("model_config"))
    author = str(raw.get("__author__", "")) if isinstance(raw, dict) else ""
    state = _tensor_dict(raw, path)
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith(_MODEL_PREFIXES) for k in state) and "backbone.bottom_up.conv1.weight" in state:
        return WeightsFile(path, "model", "state_dict")
    renamed, fmt = convert_to_torchvision_names(state)
    if "conv1.weight" in renamed and any(k.startswith("layer1.0.") for k in renamed):
        # MSRA weights (caffe2 pickles, detectron2's default) were trained on BGR images with the stride in the 1x1
        # conv; torchvision's, and detectron2 pickles converted from them (__author__ "torchvision"), on RGB images.
        msra = fmt == "caffe2" or (fmt == "detectron2" and author.lower() != "torchvision")
        return WeightsFile(path, "backbone", fmt, pixel_format="msra" if msra else "torchvision")
    keys = list(state)
    raise WeightsMismatchError(
        f"{path!r} matches neither a ResNet backbone file (torchvision, detectron2 or MSRA names: conv1.weight + "
        f"layer1.0.*, stem.conv1.weight + res2.0.*, or conv1_w + res2_0_*) nor an opmask_fast model (a checkpoint "
        f"with 'model' and 'meta', or a state dict with backbone.bottom_up.conv1.weight and rpn.* / roi_heads.* "
        f"keys); it holds {len(keys)} tensors, e.g. {', '.join(keys[:6]) or 'none'}"
    )


def read_model_state(path: str) -> dict[str, Tensor]:
    """The tensors of a whole-model file (a checkpoint of `opmask_fast.train` or an OPMaskModel state dict)."""
    state = _tensor_dict(_read_raw(path), path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_model_state(model: nn.Module, state: dict[str, Tensor], *, source: str) -> None:
    """`model.load_state_dict(state)` after `check_state`, so a mismatch lists every key and names `source`."""
    check_state(state, model.state_dict(), what=f"model weights in {source}")
    model.load_state_dict(state)
