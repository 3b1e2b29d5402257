"""Label spaces (docs/datasets.md): Cityscapes' 19 training classes and the dataset id tables.

All label maps inside road-ray are *trainIds* (0..18, 255 = ignore). The tables below
convert the datasets' own encodings to trainIds, and trainIds back to Cityscapes
labelIds (what the official ``cityscapesscripts`` evaluator reads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255

CLASS_NAMES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
NUM_CLASSES = len(CLASS_NAMES)

# Cityscapes colour palette, indexed by trainId.
PALETTE: np.ndarray = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ],
    dtype=np.uint8,
)

# Cityscapes labelId -> trainId (also GTA5's label PNG palette indices).
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
TRAINID_TO_CITYSCAPES_ID: dict[int, int] = {v: k for k, v in CITYSCAPES_ID_TO_TRAINID.items()}

# SYNTHIA-RAND-CITYSCAPES class id (first channel of GT/LABELS) -> trainId.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0,
    4: 1,
    2: 2,
    21: 3,
    5: 4,
    7: 5,
    15: 6,
    9: 7,
    6: 8,
    16: 9,
    1: 10,
    10: 11,
    17: 12,
    8: 13,
    18: 14,
    19: 15,
    20: 16,
    12: 17,
    11: 18,
}

SYNTHIA16_TRAINIDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA13_TRAINIDS: tuple[int, ...] = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)


def lookup_table(mapping: dict[int, int], size: int = 65536) -> np.ndarray:
    """A dense uint8 table: ``table[id] = trainId``, every id not in ``mapping`` -> 255."""
    table = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for k, v in mapping.items():
        table[k] = v
    return table


_CITYSCAPES_LUT = lookup_table(CITYSCAPES_ID_TO_TRAINID, 256)
_SYNTHIA_LUT = lookup_table(SYNTHIA_ID_TO_TRAINID, 65536)
_TRAINID_TO_ID_LUT = np.zeros(256, dtype=np.uint8)  # ignore -> labelId 0 ("unlabeled")
for _t, _i in TRAINID_TO_CITYSCAPES_ID.items():
    _TRAINID_TO_ID_LUT[_t] = _i


def cityscapes_to_trainid(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes/GTA5 labelIds -> trainIds. Ids outside the table (incl. -1) -> 255."""
    ids = np.asarray(label_ids)
    out = np.full(ids.shape, IGNORE_INDEX, dtype=np.uint8)
    valid = (ids >= 0) & (ids < 256)
    out[valid] = _CITYSCAPES_LUT[ids[valid].astype(np.int64)]
    return out


def synthia_to_trainid(class_ids: np.ndarray) -> np.ndarray:
    """SYNTHIA class ids (the first channel of GT/LABELS) -> trainIds; others -> 255."""
    ids = np.asarray(class_ids).astype(np.int64)
    out = np.full(ids.shape, IGNORE_INDEX, dtype=np.uint8)
    valid = (ids >= 0) & (ids < 65536)
    out[valid] = _SYNTHIA_LUT[ids[valid]]
    return out


def trainid_to_cityscapes(train_ids: np.ndarray) -> np.ndarray:
    """trainIds -> Cityscapes labelIds (255 -> 0), for the official evaluator's PNGs."""
    return _TRAINID_TO_ID_LUT[np.asarray(train_ids, dtype=np.uint8)]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """trainIds (H, W) -> RGB (H, W, 3) in the Cityscapes palette; ignore is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[np.asarray(train_ids, dtype=np.uint8)]


@dataclass(frozen=True)
class LabelSpace:
    """The classes a benchmark is scored on: ``miou`` averages IoU over ``eval_ids``.

    ``ignored_gt_ids``: ground-truth classes treated as ignore (their pixels are left out of the
    confusion matrix before any IoU); ``convention`` says so in words, printed with the scores.
    """

    name: str
    eval_ids: tuple[int, ...]
    extra_subsets: tuple[tuple[str, tuple[int, ...]], ...] = ()
    ignored_gt_ids: tuple[int, ...] = ()
    convention: str = ""


SYNTHIA_ABSENT_TRAINIDS: tuple[int, ...] = tuple(i for i in range(NUM_CLASSES) if i not in SYNTHIA16_TRAINIDS)

LABEL_SPACES: dict[str, LabelSpace] = {
    "cityscapes19": LabelSpace("cityscapes19", tuple(range(NUM_CLASSES))),
    # SYNTHIA -> Cityscapes is reported as mIoU16 (the headline) and mIoU13, the field's way
    # (AdaptSegNet, ADVENT): Cityscapes' terrain, truck and train are ignored in the ground
    # truth, and mIoU13 averages 13 of the same 16 IoUs.
    "synthia16": LabelSpace(
        "synthia16",
        SYNTHIA16_TRAINIDS,
        (("miou16", SYNTHIA16_TRAINIDS), ("miou13", SYNTHIA13_TRAINIDS)),
        ignored_gt_ids=SYNTHIA_ABSENT_TRAINIDS,
        convention="SYNTHIA-16: ground-truth terrain, truck and train pixels ignored (as AdaptSegNet/ADVENT); "
        "mIoU13 = the 16-class IoUs without wall, fence and pole",
    ),
}


def get_label_space(name: str) -> LabelSpace:
    if name not in LABEL_SPACES:
        raise ValueError(f"unknown label space {name!r}; expected one of {', '.join(LABEL_SPACES)}")
    return LABEL_SPACES[name]
