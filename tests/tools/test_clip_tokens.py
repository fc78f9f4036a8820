"""The shipped CLIP stores only the token-embedding rows of the shapes world's tokens
(`python -m tools.convert prune-tokens`): every token a shapes-world caption can hold is one
of them, and every other token reads the one fallback row."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pipelines.checkpoints import build_on_meta, load_model_dir, random_stack, read_weights, save_model_dir
from pipelines.clip import FALLBACK_TOKEN_ROW, KEPT_TOKEN_IDS, KEPT_TOKEN_ROWS, TOKEN_EMBEDDING
from pipelines.config import StackConfig
from tools.convert import PAD_TOKEN_ID, main, shapes_token_ids
from tools.shapes import COLOURS, SHAPES, SIZES, all_captions
from tools.shapes.world import POSITION_PHRASES
from tools.train.data import sample_batch

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "weights" / "default"
# In-domain prompts of the README, the tests and the benches (the playground has none of its own).
REPO_PROMPTS = (
    "a small red circle at the top left on a blue background", "a large green triangle in the center on a white "
    "background", "a green square on a white background", "a red circle", "a blue square", "a green square",
    "a blue circle", "a red square", "a blue circle on the left", "A Small RED Circle  at the top left", "",
)


@pytest.fixture(scope="module")
def tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=24)


def test_every_token_of_shapes_captions_is_a_kept_row(tokenizer) -> None:
    """500 generated captions (canonical and partial), every word of the vocabularies and
    the repository's in-domain prompts tokenise to kept rows only, padding included, and the
    shipped file keeps exactly those rows."""
    kept = set(shapes_token_ids())
    captions = sample_batch(np.random.default_rng(0), 500, 0.3).captions
    assert set(captions) <= set(all_captions())
    words = [*SHAPES, *COLOURS, *SIZES, *POSITION_PHRASES.values(), "a", "an", "shape", "on a background"]
    texts = [*captions, *words, *REPO_PROMPTS]
    ids = set(tokenizer(texts).flatten().tolist())
    assert PAD_TOKEN_ID in ids and tokenizer.sot_token_id in ids and tokenizer.eot_token_id in ids
    assert ids <= kept, sorted(ids - kept)
    assert len(kept) == 29  # 26 words, start and end of text, padding
    with safe_open(str(MODEL / "clip.safetensors"), "pt") as f:
        assert TOKEN_EMBEDDING not in f.keys()
        assert f.get_tensor(KEPT_TOKEN_IDS).tolist() == list(shapes_token_ids())


def test_shipped_clip_rebuilds_kept_rows_and_the_fallback(tokenizer) -> None:
    """The loader gives the shipped CLIP its full (49408, 128) matrix: kept rows as stored,
    every other token (an out-of-domain word such as `cat`) the fallback row."""
    cfg = StackConfig.load(MODEL / "stack.json")
    module = build_on_meta(cfg).get_submodule("clip.model")
    with safe_open(str(MODEL / "clip.safetensors"), "pt") as f:
        ids, rows, fallback = (f.get_tensor(k) for k in (KEPT_TOKEN_IDS, KEPT_TOKEN_ROWS, FALLBACK_TOKEN_ROW))
    weight = read_weights(MODEL / "clip.safetensors", module)[TOKEN_EMBEDDING]
    assert weight.shape == module.token_embedding.weight.shape == (49408, 128)
    assert torch.equal(weight[ids], rows)
    cat = tokenizer.encode("cat")
    assert cat and not set(cat) & set(ids.tolist())
    assert torch.equal(weight[cat], fallback.expand(len(cat), -1))


def test_prune_tokens_rewrites_a_full_file_and_is_idempotent(tmp_path: Path) -> None:
    """`python -m tools.convert prune-tokens` on a full-matrix model directory: the CLIP file
    shrinks, loads, encodes shapes captions bit for bit as before, and a second run writes
    the same bytes."""
    model = tmp_path / "m"
    save_model_dir(random_stack(StackConfig.tiny(), seed=2), model)
    captions = ["a small red circle at the top left on a blue background", "a shape", ""]
    before = load_model_dir(model, dtype=torch.float32).clip.encode_text(captions)
    full_size = (model / "clip.safetensors").stat().st_size
    assert main(["prune-tokens", "--model", str(model)]) == 0
    once = (model / "clip.safetensors").read_bytes()
    assert len(once) < full_size
    after = load_model_dir(model, dtype=torch.float32).clip.encode_text(captions)
    assert torch.equal(before.pooled, after.pooled) and torch.equal(before.states, after.states)
    assert main(["prune-tokens", "--model", str(model)]) == 0
    assert (model / "clip.safetensors").read_bytes() == once
    shutil.rmtree(model)
    assert main(["prune-tokens", "--model", str(model)]) == 2  # no model directory: a one-line error
