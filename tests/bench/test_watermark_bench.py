"""bench/watermark.py's figures on two renders of the shapes world (no model): every change
it applies runs, the unchanged mark is found, unmarked images are not."""

from __future__ import annotations

import numpy as np

from bench.watermark import ATTACKS, per_size
from pipelines.imageio import to_uint8
from server.trust.watermark import Watermark
from tools.evaluation import scene_images
from tools.shapes import random_scenes


def test_per_size_reports_every_change_and_the_false_alarms() -> None:
    renders = to_uint8(scene_images(random_scenes(4, np.random.default_rng(3)), 256))
    r = per_size(Watermark("unclip-server"), Watermark("another key"), renders[:2], renders[2:])
    assert set(r["attacks"]) == set(ATTACKS)
    assert r["attacks"]["png"]["found"] == 1.0 and r["attacks"]["jpeg 75"]["found"] == 1.0
    assert r["unmarked"]["found"] == 0.0 and r["unmarked"]["max"] < 8
    assert 40 < r["psnr_db"] < 46 and r["judge_agreement"] == 1.0
