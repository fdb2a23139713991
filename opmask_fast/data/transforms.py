"""Decoding an image to 8-bit RGB, upright by its EXIF orientation; resize (short side / max side) and horizontal
flip of an image with its instance targets."""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

# Modes PIL opens 16-bit grey files in; convert("RGB") would clip every value above 255 (near white).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def rgb_array(image: Image.Image) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB of a PIL image of any mode: 16-bit grey scaled to 8 bits (the top byte; a 32-bit "I"
    image too when a value exceeds 255, as older Pillow opens 16-bit PNGs), every other mode through PIL's own
    conversion (through LA or RGBA where PIL has no direct one, as for "La")."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        grey = np.asarray(image).astype(np.int64)
        if image.mode != "I" or grey.max(initial=0) > 255:
            grey = grey.clip(0, 65535) >> 8
        return np.repeat(grey.clip(0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    try:
        rgb = image.convert("RGB")
    except ValueError:  # e.g. "La" (premultiplied alpha) converts only to "LA"
        try:
            rgb = image.convert({"La": "LA"}.get(image.mode, "RGBA")).convert("RGB")
        except ValueError:
            raise ValueError(f"cannot convert an image of PIL mode {image.mode!r} to RGB") from None
    return np.asarray(rgb, dtype=np.uint8).copy()


EXIF_ORIENTATION = 0x0112  # the EXIF tag: 1 as stored; 2-8 a flip and/or rotation to show it upright
# Orientation -> the transpose that shows the stored pixels upright (the EXIF 2.3 table, as Pillow's exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}

# Where Pillow's getexif() finds an orientation: EXIF, a PNG's text copy of it, XMP (tiff:Orientation).
_ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp")


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 without the tag or with an unusable one. Read from the header:
    a PNG whose eXIf chunk follows the image data counts as without (Pillow would decode the image to find it)."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a readable image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def shown_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` as viewers show the image: the stored size, swapped by an EXIF orientation of 5-8."""
    w, h = image.size
    return (h, w) if exif_orientation(image) >= 5 else (w, h)


def upright(image: Image.Image, annotated_size: tuple[int, int] | None = None) -> Image.Image:
    """The image as viewers show it, its EXIF orientation applied (detectron2's ``read_image`` does the same).

    Args:
        annotated_size: the ``(width, height)`` the annotation gives. Where it is the stored size and not the shown
            one (a rotation by 90 degrees of a non-square image), the annotation was made on the stored pixels and
            the image is returned as stored.
    """
    orientation = exif_orientation(image)
    if orientation == 1:
        return image
    if annotated_size is not None and tuple(annotated_size) == image.size != shown_size(image):
        return image
    # The pixels only, as detectron2 turns them: ImageOps.exif_transpose also rewrites the EXIF block, which raises
    # on blocks that Pillow reads but cannot write back (a tag of an unexpected type), for an image that decodes.
    turned = image.transpose(_UPRIGHT[orientation])
    for key in _ORIENTATION_SOURCES:  # the turned pixels are upright: no orientation left to apply again
        turned.info.pop(key, None)
    return turned


class ImageReadError(OSError):
    """An image file that cannot be read, named in the message: the user's data, not a bug (the commands report it
    in one line, also when a data-loading worker raised it)."""


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """An image file that does not exist."""


def read_rgb(path, annotated_size: tuple[int, int] | None = None) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB of an image file, upright by its orientation (`upright`, with ``annotated_size``).

    Raises:
        ImageNotFoundError (a FileNotFoundError) / ImageReadError (an OSError) naming the file: missing, or not
            decodable (any error of Pillow's decoders on a damaged file, which raise nearly anything, is one here;
            running out of memory is not, nor an OSError of the system's, with an errno: permissions, open files).
    """
    try:
        with Image.open(path) as im:
            return rgb_array(upright(im, annotated_size))
    except FileNotFoundError:
        raise ImageNotFoundError(f"image not found: {path}") from None
    except OSError as e:
        if e.errno is not None:  # the system's (too many open files, an I/O error): not the image's, kept as it is
            raise
        raise ImageReadError(f"cannot read image {path}: {e}") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - see Raises
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def resized_shape(height: int, width: int, short_side: int, max_side: int) -> tuple[int, int]:
    """The (height, width) after scaling the short side to ``short_side`` while keeping the long side <= ``max_side``.

    Same rule as detectron2's ResizeShortestEdge, so boxes and masks scale by ``new / old`` per axis.
    """
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_side:
        scale = max_side / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize(image: Tensor, target: dict | None, size: tuple[int, int]) -> tuple[Tensor, dict | None]:
    """Resizes ``image: Tensor[3, H, W]`` (float 0..255) to ``size`` and scales ``target`` with it.

    Boxes scale per axis; masks ``Tensor[N, H, W]`` uint8 use nearest-neighbour so they stay binary.
    """
    h, w = image.shape[-2:]
    nh, nw = size
    if (nh, nw) == (h, w):
        return image, target
    image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    if target is None:
        return image, None
    target = dict(target)
    scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32)
    target["boxes"] = target["boxes"] * scale
    masks = target.get("masks")
    if masks is not None and masks.numel() > 0:
        target["masks"] = F.interpolate(masks[None].float(), size=(nh, nw), mode="nearest")[0].to(torch.uint8)
    elif masks is not None:
        target["masks"] = masks.new_zeros((masks.shape[0], nh, nw))
    return image, target


def hflip(image: Tensor, target: dict | None) -> tuple[Tensor, dict | None]:
    """Mirrors ``image: Tensor[3, H, W]`` and its boxes (xyxy) and masks left-right."""
    w = image.shape[-1]
    image = image.flip(-1)
    if target is None:
        return image, None
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = w - target["boxes"][:, 2], w - target["boxes"][:, 0]
    target["boxes"] = boxes
    if target.get("masks") is not None:
        target["masks"] = target["masks"].flip(-1)
    return image, target


class ResizeFlip:
    """The standard detection augmentation: a short side drawn from ``short_sides``, capped by ``max_side``, and a
    horizontal flip with probability ``flip_prob``.

    Randomness comes from the ``rng`` passed per call so that a resumed run draws exactly the same augmentations.
    """

    def __init__(self, *, short_sides: Sequence[int], max_side: int, flip_prob: float = 0.0) -> None:
        if not short_sides or min(short_sides) <= 0 or max_side <= 0:
            raise ValueError(f"short_sides {short_sides} and max_side {max_side} must be positive")
        self.short_sides = tuple(int(s) for s in short_sides)
        self.max_side = int(max_side)
        self.flip_prob = float(flip_prob)

    def __call__(self, image: Tensor, target: dict | None, rng: random.Random | None = None):
        rng = rng or random.Random(0)
        short = self.short_sides[0] if len(self.short_sides) == 1 else rng.choice(self.short_sides)
        size = resized_shape(image.shape[-2], image.shape[-1], short, self.max_side)
        image, target = resize(image, target, size)
        if self.flip_prob > 0 and rng.random() < self.flip_prob:
            image, target = hflip(image, target)
        return image, target
