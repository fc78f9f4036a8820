"""What the served model draws (server/world.py): world.json read and checked, the model
card's `world` and `suggested_size`, and GET /v1/models/{id}/random-caption."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipelines.sizes import SizeRule
from server.world import BadWorld, load_about, shapes_world
from tests.server.conftest import ServerProc
from tools.shapes import ATTRIBUTES, parse_caption


def test_the_shapes_world_is_described_in_its_own_words() -> None:
    world = shapes_world()
    assert "circle, square or triangle" in world.description and "8 colours" in world.description
    assert all(parse_caption(example) for example in world.examples)
    assert list(parse_caption(world.examples[0])) == list(ATTRIBUTES)
    captions = {world.caption(np.random.default_rng(seed)) for seed in range(5)}
    assert len(captions) > 1 and all(list(parse_caption(c)) == list(ATTRIBUTES) for c in captions)


def test_world_json_is_optional_and_checked(tmp_path: Path) -> None:
    assert load_about(tmp_path, SizeRule.squares([32, 64])).world is None
    (tmp_path / "world.json").write_text(json.dumps({"world": "shapes", "suggested_size": 32}))
    about = load_about(tmp_path, SizeRule.squares([32, 64]))
    assert about.world.name == "shapes" and about.suggested_size == 32
    for bad in ({"world": "faces"}, {"suggested_size": 48}):
        (tmp_path / "world.json").write_text(json.dumps(bad))
        with pytest.raises(BadWorld):
            load_about(tmp_path, SizeRule.squares([32, 64]))


def test_the_card_and_random_captions(world_server: ServerProc, server: ServerProc) -> None:
    card = httpx.get(world_server.url("/v1/models")).json()["data"][0]
    assert card["suggested_size"] == "32x32" and card["world"]["examples"] == list(shapes_world().examples)
    caption = httpx.get(world_server.url("/v1/models/tiny/random-caption")).json()
    assert caption["object"] == "model.caption" and list(parse_caption(caption["caption"])) == list(ATTRIBUTES)
    assert httpx.get(world_server.url("/v1/models/other/random-caption")).status_code == 404
    plain = httpx.get(server.url("/v1/models/tiny")).json()
    assert plain["world"] is None and plain["suggested_size"] is None
    answer = httpx.get(server.url("/v1/models/tiny/random-caption"))
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "world_unknown"
