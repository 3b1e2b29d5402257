"""Crop boxes: where a training crop came from in its original image (docs/method.md).

Random crops lose their position; the spatial-aware splitting layer (paper Sec. 3.2) needs
it back. Every crop therefore carries a box, a row of ``BOX_FIELDS`` (float32):

- ``top``, ``left``: the crop's corner in the *resized* image (pixels, >= 0);
- ``height``, ``width``: the crop's size in the resized image (pixels; the part beyond the
  resized image, if any, is padding at the bottom/right);
- ``image_height``, ``image_width``: the *original* image's size;
- ``scale``: resized size / original size (the crop was cut from the image resized by it);
- ``flip``: 1.0 if the crop was mirrored horizontally after cutting, else 0.0.

So crop pixel ``(y, x)`` (centre ``y + 0.5, x + 0.5``) shows the original-image point
``((top + y + 0.5) / scale, (left + x_c) / scale)`` with ``x_c = width - (x + 0.5)`` when
flipped and ``x + 0.5`` otherwise.
"""

from __future__ import annotations

import numpy as np

BOX_FIELDS: tuple[str, ...] = ("top", "left", "height", "width", "image_height", "image_width", "scale", "flip")
BOX_SIZE = len(BOX_FIELDS)
TOP, LEFT, HEIGHT, WIDTH, IMAGE_HEIGHT, IMAGE_WIDTH, SCALE, FLIP = range(BOX_SIZE)


def make_box(
    top: float,
    left: float,
    height: float,
    width: float,
    image_height: float,
    image_width: float,
    scale: float = 1.0,
    flip: bool = False,
) -> np.ndarray:
    """One box as a float32 vector in ``BOX_FIELDS`` order."""
    return np.array(
        [top, left, height, width, image_height, image_width, scale, 1.0 if flip else 0.0], dtype=np.float32
    )


def whole_image_box(image_height: int, image_width: int) -> np.ndarray:
    """The box of an uncropped, unscaled, unflipped image."""
    return make_box(0, 0, image_height, image_width, image_height, image_width)


def check_boxes(boxes: np.ndarray | object) -> None:
    """Raise ValueError unless ``boxes`` is (B, 8) and every box lies inside its resized image.

    Works on numpy arrays and torch tensors (anything with ``.shape`` and indexing).
    """
    shape = tuple(boxes.shape)
    if len(shape) != 2 or shape[1] != BOX_SIZE:
        raise ValueError(f"crop boxes: expected shape (B, {BOX_SIZE}) with fields {BOX_FIELDS}, got {shape}")
    b = np.asarray(boxes.detach().cpu() if hasattr(boxes, "detach") else boxes, dtype=np.float64)
    if not np.all(np.isfinite(b)):
        raise ValueError("crop boxes: contain NaN or inf")
    bad = (
        (b[:, TOP] < 0)
        | (b[:, LEFT] < 0)
        | (b[:, HEIGHT] <= 0)
        | (b[:, WIDTH] <= 0)
        | (b[:, IMAGE_HEIGHT] <= 0)
        | (b[:, IMAGE_WIDTH] <= 0)
        | (b[:, SCALE] <= 0)
        # the crop must start inside the resized image (padding only at bottom/right)
        | (b[:, TOP] >= b[:, IMAGE_HEIGHT] * b[:, SCALE] + 1e-3)
        | (b[:, LEFT] >= b[:, IMAGE_WIDTH] * b[:, SCALE] + 1e-3)
    )
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        fields = dict(zip(BOX_FIELDS, b[i].tolist()))
        raise ValueError(f"crop box {i} lies outside its image: {fields}")
