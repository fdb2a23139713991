"""What the pictures share: matplotlib on the Agg backend, text drawn as written, the prior's colour map, detection
colours, and figures rendered to images."""

from __future__ import annotations

import colorsys
import functools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

PRIOR_CMAP = "inferno"


def literal_text(draw):
    """Decorates a function that makes a figure: its texts (class names and run labels from the user's files) are
    drawn as written. matplotlib would read a ``$`` pair as math and fail on a name such as ``a$^$b``."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with plt.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapper


def colour(i: int) -> np.ndarray:
    """A distinct saturated RGB colour in [0, 1] for detection ``i``."""
    return np.array(colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95))


def figure_to_image(fig) -> Image.Image:
    """Renders a matplotlib figure to an RGB PIL image and closes the figure."""
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return Image.fromarray(arr)
