"""bench/plots.py draws the benchmarks' figures from their results: a pipeline result as bars
per batch, a load result as images/s and latency per concurrency; anything else is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bench.plots import draw, main

PIPELINE = {"family": "kandinsky", "config": "small", "dtype": "torch.float32", "ratio": {"1": 1.5, "4": 1.1},
            "results": {"1": {"ours": {"images_per_s": 0.06}, "diffusers": {"images_per_s": 0.04}},
                        "4": {"ours": {"images_per_s": 0.07}, "diffusers": {"images_per_s": 0.065}}}}
LOAD = {"model": "shapes-default", "size": 256, "device": "cpu",
        "runs": [{"name": "generation", "concurrency": c, "images_per_s": r, "p50_s": p}
                 for c, r, p in ((1, 0.7, 1.4), (4, 0.8, 4.9), (16, 0.75, 19.0))] +
                [{"name": "mixed", "concurrency": 4, "images_per_s": 0.5, "p50_s": 3.0}]}


@pytest.mark.parametrize("result", [PIPELINE, LOAD], ids=["pipeline", "load"])
def test_a_result_becomes_a_png(result: dict, tmp_path: Path) -> None:
    path = draw(result, tmp_path / "figure.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (600, 384)  # 5 x 3.2 in at 120 dpi
        assert len(img.convert("RGB").getcolors(1 << 16)) > 50  # drawn, not blank


def test_the_same_result_draws_the_same_file(tmp_path: Path) -> None:
    a, b = draw(PIPELINE, tmp_path / "a.png"), draw(PIPELINE, tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()


def test_a_result_of_another_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a bench.pipeline or bench.load result"):
        draw({"ratios": {}}, tmp_path / "x.png")
    (tmp_path / "r.json").write_text('{"runs": [{"name": "mixed", "concurrency": 4}]}')
    with pytest.raises(ValueError, match="no closed-loop generation runs"):
        main([str(tmp_path / "r.json"), str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()
