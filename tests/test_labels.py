"""Label tables of docs/datasets.md."""

import numpy as np

from road_ray import labels as L


def test_cityscapes_table():
    ids = np.array([[7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]])
    assert L.cityscapes_to_trainid(ids).tolist() == [list(range(19))]
    others = np.array([0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, -1, 34, 255])
    assert (L.cityscapes_to_trainid(others) == 255).all()


def test_synthia_table_and_subsets():
    ids = np.array([3, 4, 2, 21, 5, 7, 15, 9, 6, 16, 1, 10, 17, 8, 18, 19, 20, 12, 11, 0, 13, 14, 22, 1000])
    assert L.synthia_to_trainid(ids).tolist() == list(range(19)) + [255] * 5
    assert len(L.SYNTHIA16_TRAINIDS) == 16 and len(L.SYNTHIA13_TRAINIDS) == 13
    assert set(L.SYNTHIA13_TRAINIDS) <= set(L.SYNTHIA16_TRAINIDS)
    assert 9 not in L.SYNTHIA16_TRAINIDS and 14 not in L.SYNTHIA16_TRAINIDS and 16 not in L.SYNTHIA16_TRAINIDS
    assert {3, 4, 5} & set(L.SYNTHIA13_TRAINIDS) == set()


def test_round_trip_to_label_ids_and_colours():
    train = np.arange(19, dtype=np.uint8)
    assert L.cityscapes_to_trainid(L.trainid_to_cityscapes(train)).tolist() == train.tolist()
    assert L.trainid_to_cityscapes(np.array([255], dtype=np.uint8)).tolist() == [0]
    rgb = L.colorize(np.array([[0, 10, 255]], dtype=np.uint8))
    assert (
        rgb[0, 0].tolist() == [128, 64, 128]
        and rgb[0, 1].tolist() == [70, 130, 180]
        and rgb[0, 2].tolist() == [0, 0, 0]
    )
    assert len(L.CLASS_NAMES) == len(L.PALETTE) == 19
