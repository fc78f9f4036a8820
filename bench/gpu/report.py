"""The summary lines of a run's headline numbers (gpu.json holds the rest)."""

from __future__ import annotations

from typing import Any

from .plan import PARTS


def summary(results: dict[str, Any]) -> list[str]:
    """A few lines of the headline numbers (the JSON holds the rest)."""
    lines = [f"{name}: {r['status']} {r.get('reason') or r.get('error') or ''}".rstrip()
             for name, r in results.items() if name in PARTS]
    lines += precision_lines("precision", results.get("precision", {}))
    if "xformers_over_sdpa" in results.get("attention", {}):
        lines.append(f"xformers / sdpa images/s: {results['attention']['xformers_over_sdpa']:.2f}")
    lines += versus_lines("", results.get("ours_vs_diffusers", {}))
    for key, r in results.get("http", {}).get("levels", {}).items():
        if "images_per_s" in r:
            lines.append(f"http {key}: {r['images_per_s']:.2f} images/s, p50 {r['p50_s']:.2f} s, "
                         f"batch by stage {r['batch_by_stage']}")
    k = results.get("kandinsky", {})
    lines += precision_lines("kandinsky precision", k.get("precision", {}))
    lines += versus_lines("kandinsky ", k)
    if "speed_peak_gpu_allocated_bytes" in k:
        lines.append(f"kandinsky peak GPU memory: {k['speed_peak_gpu_allocated_bytes'] / 2**30:.1f} GiB "
                     f"(speed runs), {k['peak_gpu_allocated_bytes'] / 2**30:.1f} GiB (part)")
    return lines + gpu_setting_lines(results)


def precision_lines(label: str, section: dict[str, Any]) -> list[str]:
    lines = []
    for dtype, r in section.items():
        if isinstance(r, dict) and "stages" in r:
            errs = {k: round(v["max_abs"], 4) for k, v in {**r["stages"], "end_to_end": r["end_to_end"]}.items()}
            lines.append(f"{label} {dtype} max |diff|: {errs}")
    return lines


def versus_lines(label: str, section: dict[str, Any]) -> list[str]:
    return [f"{label}{key}: ours {r['ours']['images_per_s']:.2f} images/s, diffusers "
            f"{r['diffusers']['images_per_s']:.2f} ({r['ours_over_diffusers']:.2f}x)"
            for key, r in section.items() if key.startswith("batch_")]


def gpu_setting_lines(results: dict[str, Any]) -> list[str]:
    """flops, cuda_graphs and compile, where measured."""
    lines = []
    f = results.get("flops", {})
    if "matmul_peak" in f:
        lines.append(f"matmul peak {f['matmul_peak']['bfloat16']['side']}^3: bf16 "
                     f"{f['matmul_peak']['bfloat16']['tflop_s']:.0f} TFLOP/s, fp16 "
                     f"{f['matmul_peak']['float16']['tflop_s']:.0f}")
    for key, r in f.items():
        if key.startswith("batch_"):
            lines.append(f"decoder step {key}: {r['flops_per_step'] / 1e12:.2f} TFLOP in {r['median_step_s'] * 1e3:.1f}"
                         f" ms = {r['tflop_s']:.0f} TFLOP/s ({100 * r['of_bf16_peak']:.0f}% of the bf16 peak)")
    g = results.get("cuda_graphs", {})
    if "graph_over_eager" in g:
        lines.append(f"cuda graph, decoder step batch {g['batch']}: {g['eager']['steps_per_s']:.1f} -> "
                     f"{g['graph']['steps_per_s']:.1f} steps/s ({g['graph_over_eager']:.2f}x)")
    c = results.get("compile", {})
    if "compiled_over_eager" in c:
        lines.append(f"torch.compile ({c['mode']}), decoder step batch {c['batch']}: {c['compile_s']:.0f} s to "
                     f"compile, {c['eager']['steps_per_s']:.1f} -> {c['compiled']['steps_per_s']:.1f} steps/s "
                     f"({c['compiled_over_eager']:.2f}x)")
    return lines
