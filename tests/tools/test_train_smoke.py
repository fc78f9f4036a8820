"""Smoke test of the training recipe (tools.train) and the evaluation command on toy sizes.

Every stage trains 2 steps, is resumed from its checkpoint to step 3, and must then equal,
bit for bit, a run that went to step 3 in one go; the export loads through the real loader
and generates; bench/eval_shapes.py runs on the export and prints its table.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipelines import operations as O
from pipelines.checkpoints import build_on_meta, load_model_dir, read_weights
from pipelines.clip import KEPT_TOKEN_IDS
from pipelines.config import StackConfig
from pipelines.diffusion import Schedule, to_x0_eps
from pipelines.unclip import UnCLIP, run_direct
from tools.evaluation import box_mask, inpaint_scores, judged, scene_images, write_card
from tools.shapes import Scene
from tools.train import checkpoint
from tools.train.__main__ import main
from tools.train.config import UpsamplerTrain
from tools.train.data import INPAINT_BOX_SIDE, Batch, box_masks, compatibility, sample_batch
from tools.train.export import module_of
from tools.train.loop import LoopOptions, StopFlag, out_of_time
from tools.train.objectives import diffusion_loss, diffusion_target, timesteps
from tools.train.run import open_run, write_config
from tools.train.upsampler_stage import WINDOW_MARGIN, blur_lowres, resized_crop, warp_lowres, windows
from tools.train.widen import FIRST_CONV

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("clip", "prior", "decoder", "upsampler")
STAGES = ("clip", "prior", "decoder", "upsampler_0", "upsampler_1")


def cli(*args: str) -> int:
    """Run `python -m tools.train ...` in-process (no signal handlers installed)."""
    return main([*args, "--quiet"], stop=StopFlag())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Run a: each stage to step 2, then resumed to its planned 3; run b: 3 in one go."""
    root = tmp_path_factory.mktemp("train")
    a, b = root / "a", root / "b"
    for command in COMMANDS:
        assert cli(command, "--run", str(a), "--preset", "smoke", "--steps", "2") == 0
        assert cli(command, "--run", str(a)) == 0
        assert cli(command, "--run", str(b), "--preset", "smoke") == 0
    return a, b


@pytest.fixture(scope="module")
def exported(runs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    assert cli("export", "--run", str(runs[0]), "--out", str(out)) == 0
    return out


def _same(x: object, y: object) -> bool:
    """Deep equality of nested dicts / lists of tensors and plain values."""
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(_same(i, j) for i, j in zip(x, y))
    if torch.is_tensor(x):
        return torch.equal(x, y)
    return x == y


@pytest.mark.parametrize("stage", STAGES)
def test_resumed_stage_equals_uninterrupted_run(runs: tuple[Path, Path], stage: str) -> None:
    a, b = (checkpoint.load(r / stage) for r in runs)
    assert a["step"] == b["step"] == 3
    for part in ("model", "ema", "optimizer"):
        assert _same(a[part], b[part]), f"{stage}: {part} differs after resuming"
    logged = [json.loads(line)["step"] for line in (runs[0] / stage / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]  # two sessions: steps 1-2, then 3


def test_downstream_stages_record_their_clip(runs: tuple[Path, Path]) -> None:
    for stage in ("prior", "decoder"):
        assert checkpoint.load(runs[0] / stage)["meta"]["clip_step"] == 3
    assert (runs[0] / "clip_stats.safetensors").is_file()


def test_prior_refused_before_clip_is_trained(tmp_path: Path) -> None:
    assert cli("prior", "--run", str(tmp_path / "r"), "--preset", "smoke") == 2
    assert cli("clip", "--run", str(tmp_path / "r"), "--preset", "default") == 2  # the run is a smoke run


class StopAfterFirstStep(StopFlag):
    """A stop request (as SIGTERM sets it) that arrives during the first step."""

    reads = 0

    @property
    def requested(self) -> bool:
        self.reads += 1
        return self.reads > 1

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


def test_stop_request_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    run = tmp_path / "r"
    args = ["upsampler", "--index", "1", "--run", str(run), "--preset", "smoke", "--quiet"]
    assert main(args, stop=StopAfterFirstStep()) == 0
    assert checkpoint.step_of(run / "upsampler_1") == 1


def test_budget_leaves_room_for_a_step_and_a_checkpoint(tmp_path: Path) -> None:
    opts = LoopOptions(deadline=time.monotonic() + 10.0)
    assert not out_of_time(opts, 1.0)  # 1.5 x 1 s + 5 s margin fits in 10 s
    assert out_of_time(opts, 4.0)
    run = tmp_path / "r"
    assert cli("clip", "--run", str(run), "--preset", "smoke", "--minutes", "0.001") == 0  # spent at once
    assert checkpoint.step_of(run / "clip") == 0


def test_export_loads_and_generates(exported: Path) -> None:
    files = {p.name for p in exported.iterdir()}
    assert {"stack.json", "clip.safetensors", "clip_stats.safetensors", "prior.safetensors", "decoder.safetensors",
            "upsampler_0.safetensors", "upsampler_1.safetensors", "MODEL_CARD.md"} <= files
    assert KEPT_TOKEN_IDS in load_file(str(exported / "clip.safetensors"))  # the shapes world's token rows only
    stack = load_model_dir(exported)
    assert stack.clip_std.min() > 0 and not torch.equal(stack.clip_mean, torch.zeros_like(stack.clip_mean))
    pipe = UnCLIP(stack)
    out = run_direct(pipe, O.generate(pipe, "a red circle", n=1, seed=0))
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()


def test_eval_command_prints_the_table(exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("eval_shapes", ROOT / "bench" / "eval_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "eval.json"
    argv = ["--model-dir", str(exported), "-n", "3", "--cases", "2", "--variety-seeds", "2", "--out", str(out),
            "--write-card"]
    head = (exported / "MODEL_CARD.md").read_text()
    assert module.main(argv) == 0
    text = capsys.readouterr().out
    for word in ("shape", "colour", "background", "size", "position", "all five", "variety", "variations",
                 "text diff", "inpaint", "one generation", "captions.accuracy.all", "inpaint.rate"):
        assert word in text
    res = json.loads(out.read_text())
    assert res["captions"]["accuracy"]["n"] == 3 and len(res["captions"]["samples"]) == 3
    assert res["variations"]["n"] == res["text_diff"]["n"] == res["inpaint"]["n"] == 2
    assert res["inpaint"]["kept_max_abs_diff"] == 0.0
    card = (exported / "MODEL_CARD.md").read_text()
    assert card.startswith(head.rstrip("\n")) and card.count("## Evaluation") == 1 and "captions.accuracy.all" in card


def test_sweep_command_measures_each_combination(exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("sweep_sampling", ROOT / "bench" / "sweep_sampling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "sweep.json"
    argv = ["--model-dir", str(exported), "-n", "2", "--size", "32", "--grid", "decoder_guidance=1,3",
            "decoder_steps=2", "--out", str(out)]
    assert module.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["settings"] for r in rows] == [{"decoder_guidance": 1.0, "decoder_steps": 2},
                                             {"decoder_guidance": 3.0, "decoder_steps": 2}]
    assert all(r["accuracy"]["n"] == 2 and r["s_per_image"] > 0 for r in rows)
    assert "decoder_guidance=3.0" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        module.parse_axis("guidance=2")
    with pytest.raises(SystemExit, match="decoder_steps takes int values"):
        module.parse_axis("decoder_steps=abc")


def test_write_card_replaces_the_evaluation_section(tmp_path: Path) -> None:
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# model\n\nfacts\n")
    write_card(card, "## Evaluation\n\nfirst\n")
    write_card(card, "## Evaluation\n\nsecond\n")
    assert card.read_text() == "# model\n\nfacts\n\n## Evaluation\n\nsecond\n"


def test_partial_captions_have_several_positives() -> None:
    scenes = [Scene("circle", "red", "blue", "small", "top"), Scene("square", "red", "white", "large", "left"),
              Scene("circle", "green", "blue", "small", "top")]
    named = [("colour",), tuple(Scene.__dataclass_fields__), ("shape", "background")]
    pos = compatibility(Batch(scenes, ["a red shape", "...", "a circle on a blue background"], named, 0))
    assert pos.tolist() == [[True, True, False], [False, True, False], [True, False, True]]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_targets_invert_through_the_sampler_conversion(prediction: str) -> None:
    s = Schedule.make("squaredcos_cap_v2")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    a = s.abar(t).float().view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    got, _ = to_x0_eps(s, x_t, t, diffusion_target(s, x0, noise, t, prediction), prediction)
    np.testing.assert_allclose(got[:3].numpy(), x0[:3].numpy(), atol=1e-3)  # eps at t=999 divides by ~0.006


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_sdedit_loss_noises_the_condition_and_targets_the_render(prediction: str) -> None:
    """With `start`, x_t is the condition noised to t; a network whose output turns that
    x_t into the render exactly (through the sampler's own conversion) scores 0."""
    s = Schedule.make("squaredcos_cap_v2")
    g = torch.Generator().manual_seed(2)
    x0, cond = torch.rand(64, 3, 8, 8, generator=g) * 2 - 1, torch.rand(64, 3, 8, 8, generator=g) * 2 - 1
    seen = []

    def perfect(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((x_t, t))
        a = s.abar(t).float().view(-1, 1, 1, 1)
        return x0 if prediction == "x0" else (a.sqrt() * x_t - x0) / (1 - a).sqrt()

    t = torch.randint(1, 50, (64,), generator=g)
    loss = diffusion_loss(perfect, x0, s, prediction, torch.Generator().manual_seed(0), t=t, start=cond)
    assert loss.item() < 1e-4  # v's targets reach ~(cond - x0) / 0.03 at small t: float32 rounding
    x_t, tt = seen[0]
    a = s.abar(tt).float().view(-1, 1, 1, 1)
    assert ((x_t - a.sqrt() * cond) / (1 - a).sqrt()).std().item() == pytest.approx(1.0, abs=0.05)
    back, _ = to_x0_eps(s, x_t, tt, perfect(x_t, tt), prediction)
    assert torch.allclose(back, x0, atol=1e-3)
    assert ((x_t - a.sqrt() * x0) / (1 - a).sqrt()).std().item() > 2  # not x0 noised


def test_timesteps_stay_in_the_stage_range() -> None:
    t = timesteps(4096, 1000, torch.Generator().manual_seed(0), zero_rows=3, low=5, high=50)
    assert t[:3].tolist() == [0, 0, 0] and t[3:].min() >= 5 and t.max() < 50 and len(set(t.tolist())) == 46


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_input_perturbation_noises_the_input_but_not_the_target(gamma: float) -> None:
    """An eps model that reads the noise back from x_t exactly (it knows x0) scores 0 without
    perturbation; with it, it reads noise + gamma xi against the target noise: MSE ~ gamma^2."""
    s = Schedule.make("squaredcos_cap_v2")
    x0 = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def read_noise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = s.abar(t).float().view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    t = torch.full((64,), 500)
    loss = diffusion_loss(read_noise, x0, s, "eps", torch.Generator().manual_seed(0), t=t, perturb=gamma)
    assert loss.item() == pytest.approx(gamma**2, rel=0.05, abs=1e-8)


def test_snapshot_keeps_what_resuming_needs_and_restore_resumes(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """A snapshot of a run whose decoder is unfinished: finished stages keep fp16 EMA only,
    the unfinished one model + EMA + rng without AdamW state; restored into an empty run,
    the decoder trains on from its step (fresh optimizer) and the export still works."""
    run, snap, again = tmp_path / "r", tmp_path / "snap", tmp_path / "again"
    for command in ("clip", "prior"):
        assert cli(command, "--run", str(run), "--preset", "smoke") == 0
    assert cli("decoder", "--run", str(run), "--preset", "smoke", "--steps", "2") == 0
    assert cli("snapshot", "--run", str(run), "--snapshot", str(snap)) == 0
    clip_snap, dec_snap = checkpoint.load(snap / "clip"), checkpoint.load(snap / "decoder")
    assert set(clip_snap) == {"step", "meta", "elapsed_s", "ema"}
    assert {v.dtype for v in clip_snap["ema"].values() if v.is_floating_point()} == {torch.float16}
    assert set(dec_snap) == {"step", "meta", "elapsed_s", "model", "ema", "rng"} and dec_snap["step"] == 2
    full = sum(f.stat().st_size for f in run.rglob("checkpoint.pt"))
    assert sum(f.stat().st_size for f in snap.rglob("checkpoint.pt")) < full / 2

    assert cli("restore", "--run", str(again), "--snapshot", str(snap)) == 0
    assert checkpoint.step_of(again / "decoder") == 2 and (again / "clip_stats.safetensors").is_file()
    assert cli("decoder", "--run", str(again)) == 0  # resumes at 2 with a fresh optimizer, to 3
    resumed = checkpoint.load(again / "decoder")
    assert resumed["step"] == 3 and "optimizer" in resumed
    assert not _same(resumed["model"], dec_snap["model"])
    assert cli("clip", "--run", str(again)) == 0  # a finished stage from a snapshot stays finished
    assert checkpoint.step_of(again / "clip") == 3


def test_restore_keeps_stages_that_trained_further(runs: tuple[Path, Path], tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    assert cli("snapshot", "--run", str(runs[1]), "--snapshot", str(snap)) == 0
    run = tmp_path / "r"
    assert cli("clip", "--run", str(run), "--preset", "smoke", "--steps", "2") == 0
    assert cli("restore", "--run", str(run), "--snapshot", str(snap)) == 0
    assert checkpoint.step_of(run / "clip") == 3  # the snapshot's 3 replaced the run's 2
    before = checkpoint.load(run / "clip")
    assert cli("restore", "--run", str(run), "--snapshot", str(snap)) == 0  # nothing newer: kept
    assert _same(checkpoint.load(run / "clip")["ema"], before["ema"])
    assert cli("restore", "--run", str(tmp_path / "x"), "--snapshot", str(tmp_path / "none")) == 2


def _tensors(model: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {f.name: load_file(str(f)) for f in sorted(model.glob("*.safetensors"))}


def test_restore_from_the_exported_model_extends_a_finished_run(runs: tuple[Path, Path], exported: Path,
                                                                 tmp_path: Path) -> None:
    """A snapshot's record without checkpoints (what git holds) and the exported model give
    back a run that exports the same model bit for bit and trains on past its planned steps."""
    snap, again = tmp_path / "snap", tmp_path / "again"
    assert cli("snapshot", "--run", str(runs[0]), "--snapshot", str(snap), "--no-checkpoints") == 0
    assert not list(snap.rglob("checkpoint.pt")) and (snap / "stages.json").is_file()
    assert cli("restore", "--run", str(again), "--snapshot", str(snap), "--model", str(exported)) == 0
    assert all(checkpoint.step_of(again / stage) == 3 for stage in STAGES)
    out = tmp_path / "re-exported"
    assert cli("export", "--run", str(again), "--out", str(out)) == 0
    assert _same(_tensors(out), _tensors(exported))

    assert cli("decoder", "--run", str(again), "--steps", "4") == 0  # from the EMA, fresh optimizer
    extended = checkpoint.load(again / "decoder")
    assert extended["step"] == 4 and "optimizer" in extended and extended["meta"]["clip_step"] == 3
    logged = [json.loads(line)["step"] for line in (again / "decoder" / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]  # the record's log, then the new step


def test_restore_refuses_a_model_of_another_architecture(runs: tuple[Path, Path], tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    assert cli("snapshot", "--run", str(runs[0]), "--snapshot", str(snap), "--no-checkpoints") == 0
    assert cli("restore", "--run", str(tmp_path / "r"), "--snapshot", str(snap),
               "--model", str(ROOT / "weights" / "default")) == 2  # the shipped model, not the smoke run's


def test_shipped_record_and_weights_resume_the_default_training(tmp_path: Path) -> None:
    """weights/training/default (the record git keeps) + weights/default: every stage comes
    back at its recorded step with the exported EMA weights, and one trains on a step."""
    record, snap, run = ROOT / "weights" / "training" / "default", tmp_path / "snap", tmp_path / "run"
    shutil.copytree(record, snap, ignore=shutil.ignore_patterns("checkpoint.pt"))  # as a fresh clone has it
    steps = {stage: facts["step"] for stage, facts in json.loads((snap / "stages.json").read_text()).items()}
    assert cli("restore", "--run", str(run), "--snapshot", str(snap),
               "--model", str(ROOT / "weights" / "default")) == 0
    model = ROOT / "weights" / "default"
    meta = build_on_meta(StackConfig.load(model / "stack.json"))
    for stage, step in steps.items():
        ckpt = checkpoint.load(run / stage)
        assert ckpt["step"] == step  # CLIP's pruned token embedding comes back full, as the loader reads it
        assert _same(ckpt["ema"], read_weights(model / f"{stage}.safetensors", meta.get_submodule(module_of(stage))))
    assert cli("upsampler", "--index", "3", "--run", str(run), "--steps", str(steps["upsampler_3"] + 1),
               "--batch", "2", "--device", "cpu") == 0
    assert checkpoint.step_of(run / "upsampler_3") == steps["upsampler_3"] + 1


def test_crop_rendering_equals_cropping_whole_renders() -> None:
    """render_crops: each target crop is the crop of the whole jittered render at the output
    size, and the resized condition window's centre is the crop of the whole condition
    resized (exactly where the window stays on the canvas); most crops centred on the
    shape hold an outline."""
    from pipelines.sampling import upsample_for
    hp = UpsamplerTrain(steps=1, batch=8, lr=1e-3, crop=32, render_crops=True, p_shape_crop=1.0)
    rng = np.random.default_rng(0)
    batch = sample_batch(rng, 8, 1.0)
    crop, under = windows(rng, batch, 64, 128, hp)
    whole_high, whole_low = batch.images(128), upsample_for(batch.images(64), 128)
    high = batch.images(128, crop)
    low = resized_crop(batch.images(64, under), 2, 32)
    inside = 0
    for i in range(8):
        top, left = int(crop.top[i]), int(crop.left[i])
        assert top % 2 == 0 and left % 2 == 0
        assert torch.equal(high[i], whole_high[i, :, top:top + 32, left:left + 32])
        if min(top, left) >= 2 * WINDOW_MARGIN and max(top, left) + 32 <= 128 - 2 * WINDOW_MARGIN:
            inside += 1
            assert torch.allclose(low[i], whole_low[i, :, top:top + 32, left:left + 32], atol=1e-6)
    assert inside > 0
    outlines = [(high[i].flatten(1).std(1) > 0.05).any() for i in range(8)]
    assert sum(outlines) >= 6, outlines


def test_extend_adds_the_presets_new_upsamplers_and_keeps_the_rest(tmp_path: Path) -> None:
    """A run created before its preset gained an upsampler gets it from `extend`, the
    stages it had unchanged; a second extend adds nothing."""
    run = open_run(tmp_path / "r", "smoke")
    old = dataclasses.replace(run.config, stack=dataclasses.replace(run.config.stack,
                                                                    upsamplers=run.config.stack.upsamplers[:1]),
                              upsamplers=run.config.upsamplers[:1])
    write_config(run.path, old)
    assert open_run(run.path).stages()[-1] == "upsampler_0"
    assert cli("extend", "--run", str(run.path)) == 0
    grown = open_run(run.path)
    assert grown.stages()[-1] == "upsampler_1" and grown.config == run.config
    assert cli("extend", "--run", str(run.path)) == 0 and open_run(run.path).config == run.config


def test_lowres_blur_softens_square_corners_of_chosen_rows_only() -> None:
    """The upsampler's blur degradation: blurred small squares lose their sharp corners (the
    judged fill drops towards the decoder's rounded squares'), rows not drawn for it stay
    bit-identical, and p = 0 is the identity."""
    low = scene_images([Scene("square", "red", "blue", "small", "center")] * 8, 32)
    assert blur_lowres(low, np.random.default_rng(0), 0.0, 1.5) is low
    some = blur_lowres(low, np.random.default_rng(3), 0.5, 1.5)
    changed = [not torch.equal(some[i], low[i]) for i in range(8)]
    assert 0 < sum(changed) < 8 and some.shape == low.shape
    sharp = np.mean([j.fill for j in judged(low)])
    soft = np.mean([j.fill for j in judged(blur_lowres(low, np.random.default_rng(4), 1.0, 1.5))])
    assert soft < sharp - 0.03, (soft, sharp)


def test_lowres_warp_makes_square_edges_wavy_of_chosen_rows_only() -> None:
    """The upsampler's warp degradation: warped large squares fill less of their box (wavy
    sides, as the decoder draws them) while circles keep their fill; rows not drawn for it
    stay bit-identical, the border keeps the background, and p = 0 is the identity."""
    squares = scene_images([Scene("square", "red", "blue", "large", "center")] * 8, 32)
    circles = scene_images([Scene("circle", "red", "blue", "large", "center")] * 8, 32)
    assert warp_lowres(squares, np.random.default_rng(0), 0.0, 1.5) is squares
    some = warp_lowres(squares, np.random.default_rng(3), 0.5, 1.5)
    changed = [not torch.equal(some[i], squares[i]) for i in range(8)]
    assert 0 < sum(changed) < 8 and some.shape == squares.shape
    assert all(j.background == "blue" for j in judged(some))
    fill = {name: np.mean([j.fill for j in judged(x)]) for name, x in
            (("square", squares), ("square_warped", warp_lowres(squares, np.random.default_rng(4), 1.0, 1.5)),
             ("circle", circles), ("circle_warped", warp_lowres(circles, np.random.default_rng(4), 1.0, 1.5)))}
    assert fill["square_warped"] < fill["square"] - 0.02, fill
    assert abs(fill["circle_warped"] - fill["circle"]) < 0.02, fill


def test_inpaint_scores_accept_a_right_edit_and_refuse_a_wrong_one() -> None:
    """The evaluation's inpainting check on renders: a base scene with a small corner shape
    whose central box is replaced by a large green square counts; the base alone, or a
    green circle there, does not."""
    base = Scene("circle", "red", "blue", "small", "top left")
    keep = box_mask(128)

    def edited(shape: str) -> torch.Tensor:
        target = scene_images([Scene(shape, "green", "blue", "large", "center")], 128)
        return keep * scene_images([base], 128) + (1 - keep) * target
    assert inpaint_scores(edited("square"))["rate"] == 1.0
    assert inpaint_scores(edited("circle"))["rate"] == 0.0
    assert inpaint_scores(scene_images([base], 128)) == {"rate": 0.0, "green": 0.0, "square": 0.0, "center": 0.0}


def test_box_masks_hide_one_box_in_the_chosen_rows() -> None:
    """p = 1: every row keeps all but one box with sides in INPAINT_BOX_SIDE of the image;
    p = 0: nothing kept and no random draw (existing runs resume identically)."""
    rng = np.random.default_rng(0)
    keep = box_masks(rng, 64, 32, 1.0)
    lo, hi = (round(f * 32) for f in INPAINT_BOX_SIDE)
    for row in keep[:, 0]:
        hidden = (row == 0).nonzero()
        (top, left), (bottom, right) = hidden.min(0).values, hidden.max(0).values
        h, w = int(bottom - top + 1), int(right - left + 1)
        assert lo <= h <= hi and lo <= w <= hi
        assert len(hidden) == h * w, "the hidden pixels form one box"
    assert len({tuple(r.nonzero().min(0).values.tolist()) for r in (keep[:, 0] == 0)}) > 16, "boxes move"
    state = rng.bit_generator.state
    assert not box_masks(rng, 8, 32, 0.0).any() and rng.bit_generator.state == state
    half = box_masks(np.random.default_rng(1), 400, 32, 0.5)
    assert 0.4 < (half.flatten(1).max(1).values > 0).float().mean() < 0.6


def test_widen_gives_a_trained_decoder_inpainting_inputs_it_first_ignores(tmp_path: Path) -> None:
    """A plain smoke decoder refuses p_inpaint > 0; trained 2 steps without, widened: config
    +4 input channels, the first conv's old weights kept and the new ones zero, AdamW state
    dropped; training goes on with p_inpaint, and widening twice is refused."""
    run = tmp_path / "r"
    assert cli("clip", "--run", str(run), "--preset", "smoke") == 0
    cfg = json.loads((run / "train.json").read_text())
    cfg["stack"]["decoder"]["model"].update(in_channels=3, inpaint_channels=0)
    (run / "train.json").write_text(json.dumps(cfg))
    assert cli("decoder", "--run", str(run), "--steps", "2") == 2  # p_inpaint 0.5 needs the inputs
    cfg["decoder"]["p_inpaint"] = 0.0
    (run / "train.json").write_text(json.dumps(cfg))
    assert cli("decoder", "--run", str(run), "--steps", "2") == 0
    before = checkpoint.load(run / "decoder")
    assert cli("widen", "--run", str(run)) == 0
    after = checkpoint.load(run / "decoder")
    model = json.loads((run / "train.json").read_text())["stack"]["decoder"]["model"]
    assert (model["in_channels"], model["inpaint_channels"]) == (7, 4)
    for part in ("model", "ema"):
        old, new = before[part][FIRST_CONV], after[part][FIRST_CONV]
        assert new.shape[1] == 7 and torch.equal(new[:, :3], old) and not new[:, 3:].any()
    assert "optimizer" not in after and after["step"] == 2
    cfg = json.loads((run / "train.json").read_text())
    cfg["decoder"]["p_inpaint"] = 0.5
    (run / "train.json").write_text(json.dumps(cfg))
    assert cli("decoder", "--run", str(run), "--batch", "16") == 0  # surely some rows with a box
    trained = checkpoint.load(run / "decoder")
    assert trained["step"] == 3 and trained["model"][FIRST_CONV][:, 3:].abs().sum() > 0, "the new inputs are learnt"
    assert cli("widen", "--run", str(run)) == 2
