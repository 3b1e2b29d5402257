"""Readers for the raw dataset layouts (docs/datasets.md): which files pair up, and how labels decode.

Cityscapes (target domain; splits ``train`` and ``val``; ``test`` has no real labels and is left out)::

    ROOT/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    ROOT/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png    8-bit labelIds

GTA5 (source domain; split ``train``)::

    ROOT/images/NNNNN.png
    ROOT/labels/NNNNN.png      palette PNG whose *indices* are Cityscapes labelIds

SYNTHIA-RAND-CITYSCAPES (source domain; split ``train``)::

    ROOT/RGB/NNNNNNN.png
    ROOT/GT/LABELS/NNNNNNN.png  16-bit, several channels, class id in R (OpenCV BGR: [..., 2])

Files are paired by their stem (the row id), never by position in a numbered range: the GTA5
archive has gaps. A stem with only an image or only a label is still listed, with the missing
side ``None``, so that the caller can report it. Label readers return trainIds (uint8, 255 =
ignore; ids outside the table -> 255) and raise :class:`Defect` for a file they cannot use.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from road_ray.labels import cityscapes_to_trainid, synthia_to_trainid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Defect(Exception):
    """An input file that cannot become a row; the message is the reason shown in the manifest."""


@dataclass(frozen=True)
class Sample:
    """One row to be: an image and its label, as paths relative to the dataset root."""

    id: str
    split: str
    image: str | None
    label: str | None


@dataclass(frozen=True)
class Layout:
    """How one dataset lies on disk and how its labels decode."""

    name: str
    domain: str
    expected: str  # the layout, as told in error messages
    list_samples: Callable[[Path], dict[str, list[Sample]]]
    read_label: Callable[[bytes], np.ndarray]


# --- listing -------------------------------------------------------------------------------


def require_folders(root: Path, folders: tuple[str, ...], expected: str) -> None:
    """ValueError naming ``root`` and the expected layout unless every folder exists."""
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder; expected {expected}")
    missing = [f for f in folders if not (root / f).is_dir()]
    if missing:
        raise ValueError(f"{root}: missing {', '.join(f + '/' for f in missing)}; expected {expected}")


def index_files(folder: Path, pattern: str, suffix: str, root: Path) -> dict[str, str]:
    """``{stem: path relative to root}`` for the files under ``folder`` matching ``pattern``."""
    if not folder.is_dir():
        return {}
    return {
        p.name[: -len(suffix)]: p.relative_to(root).as_posix()
        for p in sorted(folder.glob(pattern))
        if p.is_file() and p.name.endswith(suffix)
    }


def pair_by_stem(split: str, images: dict[str, str], labels: dict[str, str]) -> list[Sample]:
    """One Sample per stem found on either side, sorted by id (the order rows are written in)."""
    return [Sample(stem, split, images.get(stem), labels.get(stem)) for stem in sorted(images.keys() | labels.keys())]


def require_samples(root: Path, samples: dict[str, list[Sample]], expected: str) -> dict[str, list[Sample]]:
    if not any(s.image for split in samples.values() for s in split):
        raise ValueError(f"{root}: found no images; expected {expected}")
    return samples


CITYSCAPES_SPLITS = ("train", "val")
CITYSCAPES_EXPECTED = (
    "leftImg8bit/ and gtFine/ (Cityscapes layout: leftImg8bit/{train,val}/{city}/"
    "{city}_{seq}_{frame}_leftImg8bit.png, gtFine/{train,val}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png)"
)


def list_cityscapes(root: Path) -> dict[str, list[Sample]]:
    require_folders(root, ("leftImg8bit", "gtFine"), CITYSCAPES_EXPECTED)
    samples = {}
    for split in CITYSCAPES_SPLITS:
        image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        if not (image_dir.is_dir() or label_dir.is_dir()):
            continue
        images = index_files(image_dir, "*/*_leftImg8bit.png", "_leftImg8bit.png", root)
        labels = index_files(label_dir, "*/*_gtFine_labelIds.png", "_gtFine_labelIds.png", root)
        samples[split] = pair_by_stem(split, images, labels)
    return require_samples(root, samples, CITYSCAPES_EXPECTED)


GTA5_EXPECTED = "images/ and labels/ (GTA5 layout: images/NNNNN.png, labels/NNNNN.png palette PNGs)"


def list_gta5(root: Path) -> dict[str, list[Sample]]:
    require_folders(root, ("images", "labels"), GTA5_EXPECTED)
    images = index_files(root / "images", "*.png", ".png", root)
    labels = index_files(root / "labels", "*.png", ".png", root)
    return require_samples(root, {"train": pair_by_stem("train", images, labels)}, GTA5_EXPECTED)


SYNTHIA_EXPECTED = "RGB/ and GT/LABELS/ (SYNTHIA-RAND-CITYSCAPES layout: RGB/NNNNNNN.png, GT/LABELS/NNNNNNN.png)"


def list_synthia(root: Path) -> dict[str, list[Sample]]:
    require_folders(root, ("RGB", "GT/LABELS"), SYNTHIA_EXPECTED)
    images = index_files(root / "RGB", "*.png", ".png", root)
    labels = index_files(root / "GT" / "LABELS", "*.png", ".png", root)
    return require_samples(root, {"train": pair_by_stem("train", images, labels)}, SYNTHIA_EXPECTED)


# --- decoding ------------------------------------------------------------------------------


def describe(exc: Exception) -> str:
    """A reason for the manifest, the same on every run (no object addresses)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    return f"{type(exc).__name__}: {exc}"


def is_rgb8_png(data: bytes) -> bool:
    """True for a PNG whose header says 8-bit truecolour without alpha (IHDR bit depth 8, colour type 2)."""
    header_ok = len(data) > 25 and data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return header_ok and data[24] == 8 and data[25] == 2


def decode_image(data: bytes) -> np.ndarray:
    """RGB uint8 (H, W, 3) of any image file PIL reads; Defect if it is corrupt or truncated."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise Defect(f"corrupt or truncated image ({describe(exc)})") from None


def read_index_label(data: bytes) -> np.ndarray:
    """Cityscapes labelIds / GTA5 palette indices -> trainIds.

    A palette ("P") PNG becomes its index array: its colours are never looked at.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            ids = np.asarray(im)
    except Exception as exc:
        raise Defect(f"corrupt or truncated label ({describe(exc)})") from None
    if ids.ndim != 2:
        raise Defect(f"label has {ids.shape[2]} channels (mode {im.mode}); expected single-channel label ids")
    return cityscapes_to_trainid(ids)


def read_synthia_label(data: bytes) -> np.ndarray:
    """SYNTHIA GT/LABELS (16-bit, multi-channel, class id in R) -> trainIds."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # the reason goes to the manifest
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise Defect(f"corrupt label (cv2: {exc})") from None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if array is None:
        raise Defect("corrupt or truncated label (OpenCV cannot decode it)")
    if array.ndim != 3 or array.shape[2] < 3:
        raise Defect(f"label has shape {array.shape}; expected a multi-channel label with the class id in R")
    return synthia_to_trainid(array[..., 2])  # BGR(A) order: R is channel 2


LAYOUTS: dict[str, Layout] = {
    "cityscapes": Layout("cityscapes", "target", CITYSCAPES_EXPECTED, list_cityscapes, read_index_label),
    "gta5": Layout("gta5", "source", GTA5_EXPECTED, list_gta5, read_index_label),
    "synthia": Layout("synthia", "source", SYNTHIA_EXPECTED, list_synthia, read_synthia_label),
}
