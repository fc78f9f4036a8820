"""Figures for docs/benchmarks.md, drawn from a benchmark's result with matplotlib (no
display): `bench.pipeline --plot PNG` and `bench.load --plot PNG` write theirs after the
run, and this command draws one again from a saved result:

    .venv/bin/python -m bench.plots bench/results/pipeline-kandinsky-small-<time>.json docs/img/x.png

A pipeline result (bench/pipeline.py: "results" by batch) is drawn as images/s of ours and
diffusers' at each batch, with the ratio over each pair; a load result (bench/load.py:
"runs") as images/s and p50 latency against concurrency.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

COLOURS = {"ours": "#1f6feb", "diffusers": "#9a9a9a"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pipeline_figure(result: dict[str, Any], path: Path) -> Path:
    """Grouped bars: images/s of ours and diffusers' per batch, "1.47x" above each pair."""
    plt = _pyplot()
    batches = sorted(result["results"], key=int)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    width = 0.38
    for i, name in enumerate(("ours", "diffusers")):
        rates = [result["results"][b][name]["images_per_s"] for b in batches]
        ax.bar([k + (i - 0.5) * width for k in range(len(batches))], rates, width, label=name, color=COLOURS[name])
    for k, b in enumerate(batches):
        top = max(result["results"][b][n]["images_per_s"] for n in COLOURS)
        ax.annotate(f"{result['ratio'][b]:.2f}×", (k, top), ha="center", va="bottom", fontsize=9)
    highest = max(result["results"][b][n]["images_per_s"] for b in batches for n in COLOURS)
    ax.set_ylim(0, highest * 1.3)  # room for the ratios and the legend
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_ylabel("images/s")
    dtype = str(result["dtype"]).removeprefix("torch.")
    ax.set_title(f"{result.get('family', 'karlo')} ({result['config']}): ours ({dtype}) vs diffusers", fontsize=10)
    ax.legend(frameon=False, fontsize=8, loc="upper left", ncols=2)
    return _save(fig, ax, path)


def load_figure(result: dict[str, Any], path: Path) -> Path:
    """Closed-loop generations: images/s (bars) and p50 latency (line) per concurrency."""
    plt = _pyplot()
    runs = sorted((r for r in result["runs"] if r["name"] == "generation"), key=lambda r: r["concurrency"])
    if not runs:
        raise ValueError("the load result has no closed-loop generation runs")
    levels = [str(r["concurrency"]) for r in runs]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.bar(levels, [r["images_per_s"] for r in runs], color=COLOURS["ours"], label="images/s")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("images/s")
    latency = ax.twinx()
    latency.plot(levels, [r["p50_s"] for r in runs], color="#d1242f", marker="o", label="p50 latency")
    latency.set_ylabel("p50 latency (s)")
    latency.set_ylim(bottom=0)
    ax.set_title(f"{result['model']} at {result['size']} px on {result.get('device', 'cpu')}", fontsize=10)
    fig.legend(loc="upper left", frameon=False, fontsize=8, bbox_to_anchor=(0.12, 0.88))
    return _save(fig, ax, path)


def _save(fig: Any, ax: Any, path: Path) -> Path:
    ax.spines[["top"]].set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})  # no version stamp: the same result, the same file
    _pyplot().close(fig)
    return path


def draw(result: dict[str, Any], path: Path) -> Path:
    """The figure of a pipeline or a load result."""
    if "results" in result:
        return pipeline_figure(result, path)
    if "runs" in result:
        return load_figure(result, path)
    raise ValueError("not a bench.pipeline or bench.load result (no 'results' or 'runs')")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", type=Path, help="a bench/results JSON file")
    ap.add_argument("png", type=Path, help="where to write the figure")
    args = ap.parse_args(argv)
    print(f"wrote {draw(json.loads(args.result.read_text()), args.png)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
