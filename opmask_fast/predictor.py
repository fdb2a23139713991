"""The Python inference API: a checkpoint of ``opmask_fast.train`` in, per-image instances and COCO results out.

    from opmask_fast import Predictor
    predictor = Predictor("outputs/opmask_r18_lite/checkpoint.pth", device="cpu")
    inst = predictor("street.jpg")                  # one image -> one dict of instances
    batch = predictor.predict([array, pil_image])   # several -> a list
    coco = predictor.coco_results(batch, image_ids=[1, 2])
"""

from __future__ import annotations

import operator
import os
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .data.transforms import read_rgb, resize, resized_shape, rgb_array, upright
from .evaluation.mask_encoding import encode_masks
from .modeling.meta_arch import StaticInference
from .training.checkpoint import model_from_checkpoint

ImageInput = Union[str, "os.PathLike[str]", np.ndarray, Image.Image, Tensor]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB of an image file as viewers show it (upright by its EXIF orientation, as detectron2
    reads images); OSError naming the file when it cannot be read."""
    return read_rgb(os.fspath(path))


def as_rgb_array(image: ImageInput) -> np.ndarray:
    """One image as ``uint8 [H, W, 3]`` RGB. Accepts a path or a PIL image (any mode; both upright by their EXIF
    orientation) or a uint8 array / tensor of shape [H, W, 3] (RGB) or [H, W] (grey); anything else is a ValueError
    naming what was given."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ValueError(f"empty image: PIL image of size {image.size}")
        return rgb_array(upright(image))  # as a path to the same file is read
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"an image must be a path, a PIL image, or a uint8 array/tensor [H, W, 3]; got {type(image)}")
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"an image array must be uint8 [H, W, 3] (RGB) or [H, W]; got {image.dtype} {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image: {image.shape}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    # A flipped view (img[..., ::-1] after OpenCV, img[:, ::-1]) or a read-only one is copied: torch takes neither.
    return image if image.flags.c_contiguous and image.flags.writeable else np.array(image, order="C")


def _number(value, kind):
    """``kind(value)`` (int by ``operator.index``, or float) of a number: Python's, NumPy's or a one-element tensor;
    None for anything else (a string, a bool)."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError, RuntimeError):
        return None


class Predictor:
    """Runs a trained OPMask (or baseline) checkpoint on images.

    Args:
        checkpoint: ``checkpoint.pth`` written by ``opmask_fast.train`` (it holds the model config and categories).
        device: where the model runs ("cpu", "cuda", "cuda:1").
        score_thresh: detections scoring below this are dropped (before NMS and the top-k); default the model's
            (0.05).
        batch_size: images per forward pass in `predict`.
        state: the checkpoint's contents when already read (``cli.checks.read_checkpoint``), so it is not read
            twice.
        static: run the static-shape inference path (`modeling.meta_arch.StaticInference`: the same detections, no
            host synchronisation until the results are read), the images of each `batch_size` chunk that share a
            size as one batch; False runs the model's dynamic path on `batch_size` images at once, padded to the
            largest as detectron2 batches them (the convolutions near an image's border then see the padding, so a
            mixed-size batch gives slightly other detections than one image at a time; the static path does not mix
            sizes).

    Each image gives a dict (tensors on the CPU, in the image's own pixel coordinates):
        boxes ``Tensor[M, 4]`` xyxy float32, scores ``Tensor[M]``, labels ``Tensor[M]`` int64 (0..K-1),
        category_ids ``list[int]`` (the dataset's ids), category_names ``list[str]``, masks ``Tensor[M, H, W]`` bool,
        mask_probs ``Tensor[M, 28, 28]``, priors ``Tensor[M, P, P]`` (the object mask prior of each detection: P = 7,
        or 14 with ``prior_resolution="mask"``),
        image_size ``(H, W)``.
    """

    def __init__(self, checkpoint: str, *, device: str | torch.device = "cpu", score_thresh: float | None = None,
                 batch_size: int = 1, state: dict | None = None, static: bool = True):
        size = _number(batch_size, operator.index)
        if size is None or size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        batch_size = size
        thresh = None if score_thresh is None else _number(score_thresh, float)
        if score_thresh is not None and (thresh is None or not 0.0 <= thresh <= 1.0):  # NaN: every comparison false
            raise ValueError(f"score_thresh must be a number in [0, 1], got {score_thresh!r}")
        score_thresh = thresh
        self.device = torch.device(device)
        if self.device.type == "cuda" and (not torch.cuda.is_available()
                                           or (self.device.index or 0) >= torch.cuda.device_count()):
            raise ValueError(f"device {str(self.device)!r}: this machine has {torch.cuda.device_count()} usable "
                             "CUDA GPU(s); use device='cpu'")
        self.model, self.meta = model_from_checkpoint(checkpoint, self.device, state=state)
        self.cfg = self.model.cfg
        self.category_ids: list[int] = list(self.meta["category_ids"])
        self.category_names: list[str] = list(self.meta["category_names"])
        strong = set(self.meta.get("strong_ids", self.category_ids))
        self.weak_labels = {i for i, c in enumerate(self.category_ids) if c not in strong}  # box-only in training
        if score_thresh is not None:  # the model's own filter, applied before per-class NMS and the top-k
            self.cfg.roi_heads.score_thresh = float(score_thresh)
        self.score_thresh = self.cfg.roi_heads.score_thresh
        self.batch_size = batch_size
        self.static = StaticInference(self.model) if static else None

    def __call__(self, image: ImageInput) -> dict[str, Any]:
        """Instances of one image (see the class docstring)."""
        return self.predict([image])[0]

    @torch.no_grad()
    def predict(self, images: Sequence[ImageInput]) -> list[dict[str, Any]]:
        """Instances of each image, in order (``batch_size`` images per forward pass)."""
        if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image, Tensor)):
            raise ValueError("predict takes a list of images; call the predictor itself for one image")
        arrays = [as_rgb_array(im) for im in images]
        out = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start:start + self.batch_size]
            tensors, sizes = [], []
            for arr in chunk:
                h, w = arr.shape[:2]
                t = torch.from_numpy(arr).permute(2, 0, 1).float()
                t, _ = resize(t, None, resized_shape(h, w, self.cfg.input.min_size_test, self.cfg.input.max_size))
                tensors.append(t.to(self.device))
                sizes.append((h, w))
            dets = self._static_detections(tensors, sizes) if self.static is not None else \
                self.model(tensors, output_sizes=sizes)
            for det, size in zip(dets, sizes):
                out.append(self._instances(det, size))
        return out

    def _static_detections(self, tensors: list[Tensor], sizes: list[tuple[int, int]]) -> list[dict]:
        # Images of one (resized) size run as one batch: the static module takes a single image size per call.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(tuple(t.shape), []).append(i)
        dets: list[dict] = [{} for _ in tensors]
        for members in groups.values():
            out = self.static(torch.stack([tensors[i] for i in members]))
            counts = out["count"].tolist()  # the one read of the device's results
            for b, (i, n) in enumerate(zip(members, counts)):
                dets[i] = {k: v[b, :n] for k, v in out.items() if k != "count"}
        return self.model.postprocess(dets, [tuple(t.shape[1:]) for t in tensors], sizes)

    def _instances(self, det: dict, size: tuple[int, int]) -> dict[str, Any]:
        keep = (det["scores"] >= self.score_thresh).nonzero().flatten()
        inst = {k: v[keep].cpu() for k, v in det.items() if isinstance(v, Tensor)}
        labels = inst["labels"].tolist()
        inst["category_ids"] = [self.category_ids[i] for i in labels]
        inst["category_names"] = [self.category_names[i] for i in labels]
        inst["image_size"] = size
        return inst

    @staticmethod
    def coco_results(instances: dict | Sequence[dict], image_ids: int | Sequence[int]) -> list[dict]:
        """COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``, ``segmentation`` as compressed RLE
        with a str ``counts``: JSON-ready, loadable by ``COCO.loadRes``) of one image's instances or a list of them."""
        if isinstance(instances, dict):
            instances, image_ids = [instances], [image_ids]
        if isinstance(image_ids, int) or len(image_ids) != len(instances):
            raise ValueError("coco_results needs one image id per image")
        results = []
        for inst, image_id in zip(instances, image_ids):
            rles = encode_masks(inst["masks"])
            for i, ((x0, y0, x1, y1), score) in enumerate(zip(inst["boxes"].tolist(), inst["scores"].tolist())):
                results.append({"image_id": int(image_id), "category_id": inst["category_ids"][i],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score, "segmentation": rles[i]})
        return results
