"""The invisible watermark (server/trust/watermark.py) on renders of the shapes world, whose
flat colours hide it worst: found after what images go through (JPEG, halving, a crop),
never in unmarked images or under another key, and checked by `python -m tools.watermark`
with its exit codes. tests/server/test_trust.py checks it on a real server's images."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.watermark import psnr
from pipelines.imageio import to_uint8
from server.trust.watermark import STRENGTH, THRESHOLD, Watermark
from tools import watermark as watermark_tool
from tools.evaluation import scene_images
from tools.shapes import random_scenes

from .conftest import REPO

KEY = "unclip-server"


@pytest.fixture(scope="module")
def renders() -> np.ndarray:
    """uint8 [4, 256, 256, 3]: random scenes of the shapes world."""
    return to_uint8(scene_images(random_scenes(4, np.random.default_rng(5)), 256))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_the_mark_is_found_after_jpeg_halving_and_cropping(renders: np.ndarray) -> None:
    mark = Watermark(KEY)
    for image in map(Image.fromarray, mark.mark(renders)):
        half = image.resize((128, 128), Image.Resampling.BICUBIC)
        for seen in (image, jpeg(image, 75), half, image.crop((30, 50, 230, 220)), jpeg(half, 85)):
            assert mark.detect(seen).marked, mark.detect(seen)
        assert mark.detect(half).side == 256  # found once rescaled to the size it was marked at


def test_unmarked_images_and_other_keys_are_not_found(renders: np.ndarray) -> None:
    mark = Watermark(KEY)
    for pixels in np.concatenate([renders, Watermark("another key").mark(renders)]):
        found = mark.detect(Image.fromarray(pixels))
        assert not found.marked and found.score < THRESHOLD / 2 + 1, found


def test_the_mark_is_faint_and_the_same_for_a_batch_or_one_image(renders: np.ndarray) -> None:
    mark = Watermark(KEY)
    marked = mark.mark(renders)
    change = marked.astype(np.int16) - renders
    assert marked.dtype == np.uint8 and np.abs(change).max() <= 4 * STRENGTH
    assert (change[..., 0] == change[..., 1]).mean() > 0.95  # luminance only, but for clipped pixels
    assert 40 < psnr(renders, marked) < 46, psnr(renders, marked)
    assert np.array_equal(marked[2], mark.mark(renders[2]))
    odd = renders[0, :200, :150]  # not a multiple of the tile: the pattern is cut off, not stretched
    assert np.array_equal(mark.mark(odd), marked[0, :200, :150])


def test_only_where_asked_at_any_size_of_the_mask(renders: np.ndarray) -> None:
    mark, where = Watermark(KEY), np.zeros((4, 4), bool)
    where[:, :2] = True  # the left half, given at 4 x 4 for 256 px images
    marked = mark.mark(renders, where)
    assert np.array_equal(marked[..., 128:, :], renders[..., 128:, :])
    assert np.array_equal(marked[..., :128, :], mark.mark(renders)[..., :128, :])
    assert mark.detect(Image.fromarray(marked[0])).marked  # half an image still carries it


def test_the_check_tool_says_marked_or_not_with_its_exit_code(renders: np.ndarray, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    marked, plain, broken = tmp_path / "marked.jpg", tmp_path / "plain.png", tmp_path / "broken.png"
    jpeg(Image.fromarray(Watermark(KEY).mark(renders[0])), 80).save(marked)
    Image.fromarray(renders[0]).save(plain)
    broken.write_bytes(b"not an image")
    done = subprocess.run([sys.executable, "-m", "tools.watermark", str(marked), str(plain)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # as a user runs it
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith(f"{marked}: marked (score ") and f"{plain}: not marked" in done.stdout, done.stdout
    assert watermark_tool.main([str(marked)]) == 0
    assert watermark_tool.main(["--key", "another key", str(marked)]) == 1
    capsys.readouterr()
    assert watermark_tool.main([str(marked), str(broken)]) == 2
    assert str(broken) in capsys.readouterr().err
