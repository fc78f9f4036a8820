"""The server's memory: resident set size of `python -m server` at rest and after work.

Starts the server on 127.0.0.1 with a model directory (default weights/default), reads
`unclip_process_resident_memory_bytes` from its /metrics once it is ready (at rest), after
one generation at the model's defaults and final size, and after --concurrency generations
sent at once (batched by the engine); prints MiB and the model's weight bytes on disk.

    .venv/bin/python -m bench.server_memory [--model-dir weights/default] [--concurrency 4]

Writes bench/results/server_memory-<model>-<time>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench import write_result
from bench.load import REPO, Server

MIB = 2**20


def resident_bytes(server: Server) -> float:
    """The server process's RSS as its /metrics reports it."""
    for s in server.samples():
        if s.name == "unclip_process_resident_memory_bytes":
            return s.value
    raise RuntimeError("/metrics has no unclip_process_resident_memory_bytes")


def generate(server: Server, prompt: str) -> None:
    r = httpx.post(server.base + "/v1/images/generations", json={"prompt": prompt, "response_format": "b64_json"},
                   timeout=600)
    r.raise_for_status()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=REPO / "weights" / "default")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-size", type=int, default=64)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    weights = sum(f.stat().st_size for f in args.model_dir.glob("*.safetensors"))
    out = {"model_dir": str(args.model_dir), "weights_mib": weights / MIB}
    with tempfile.TemporaryDirectory() as tmp, Server(args.model_dir, args, Path(tmp) / "server.log") as server:
        out["rest_mib"] = resident_bytes(server) / MIB
        generate(server, "a small red circle at the top left on a blue background")
        out["after_one_mib"] = resident_bytes(server) / MIB
        prompts = [f"a large blue square in the center on a {'white' if i % 2 else 'black'} background"
                   for i in range(args.concurrency)]
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda prompt: generate(server, prompt), prompts))
        out[f"after_{args.concurrency}_concurrent_mib"] = resident_bytes(server) / MIB
    for key, value in out.items():
        print(f"{key:28s} {value:.1f}" if isinstance(value, float) else f"{key:28s} {value}")
    print(f"wrote {write_result(f'server_memory-{args.model_dir.name}', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
