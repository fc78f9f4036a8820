"""Prometheus metrics after real engine work, parsed with prometheus_client's parser."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from pipelines import operations as ops
from pipelines.unclip import Sampling, UnCLIP
from server.app import create_app
from server.engine.core import Engine, QueueFull
from server.engine.stats import EngineStats
from server.metrics import Metrics
from server.settings import Settings

from .conftest import REPO

FAST = Sampling(prior_steps=2, decoder_steps=2, upsampler_steps=1, best_of=1)
METRICS_TABLE = REPO / "docs" / "operating.md"  # the page holding the `| metric | type | labels |` table

EXPECTED = {  # family (as the parser names it) -> type
    "unclip_requests": "counter",
    "unclip_request_duration_seconds": "histogram",
    "unclip_requests_rejected": "counter",
    "unclip_jobs": "counter",
    "unclip_job_duration_seconds": "histogram",
    "unclip_queue_wait_seconds": "histogram",
    "unclip_step_duration_seconds": "histogram",
    "unclip_batch_size": "histogram",
    "unclip_batch_mixed": "counter",
    "unclip_stage_batch_cap": "gauge",
    "unclip_queue_depth": "gauge",
    "unclip_global_queue_depth": "gauge",
    "unclip_running_jobs": "gauge",
    "unclip_images_generated": "counter",
    "unclip_moderation_refusals": "counter",
    "unclip_model_info": "gauge",
    "unclip_ready": "gauge",
    "unclip_store_up": "gauge",
    "unclip_gpu_memory_bytes": "gauge",
    "unclip_gpu_memory_reserved_bytes": "gauge",
    "unclip_process_resident_memory_bytes": "gauge",
    "unclip_process_cpu_seconds": "counter",
}


@pytest.fixture(scope="module")
def scraped(tiny_pipe: UnCLIP) -> tuple[dict, dict, str]:
    """Run jobs (3 images done, 1 failed, 1 rejected) and parse one scrape:
    (family -> type, (sample name, labels) -> value, content type)."""
    metrics = Metrics("tiny", [32, 64])
    engine = Engine(tiny_pipe, stats=metrics, queue_size=4)
    jobs = [engine.submit(ops.generate(tiny_pipe, "a", n=2, seed=1, opts=FAST), kind="generation"),
            engine.submit(ops.variations(tiny_pipe, torch.rand(1, 3, 32, 32) * 2 - 1, seed=2, opts=FAST),
                          kind="variation"),
            engine.submit(ops.generate(tiny_pipe, "a", size=999, opts=FAST), kind="generation"),
            engine.submit(ops.generate(tiny_pipe, "b", seed=3, opts=FAST), kind="generation")]
    with pytest.raises(QueueFull):
        engine.submit(ops.generate(tiny_pipe, "c", opts=FAST), kind="generation")
    engine.start()
    try:
        assert engine.wait_idle(120)
    finally:
        engine.stop()
    assert [j.state for j in jobs] == ["done", "done", "failed", "done"]
    metrics.observe_request("/v1/images/generations", "200", 0.5)
    metrics.observe_request("/v1/images/generations", "429", 0.001)
    metrics.set_ready(True)
    body, content_type = metrics.render()
    types, values = {}, {}
    for family in text_string_to_metric_families(body.decode()):
        types[family.name] = family.type
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, values, content_type


def value(values: dict, name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


def test_names_and_types(scraped) -> None:
    types, _, content_type = scraped
    assert {name: types.get(name) for name in EXPECTED} == EXPECTED
    assert all(name.startswith("unclip_") for name in types), sorted(types)
    assert content_type.startswith("text/plain")


def test_values_after_jobs(scraped) -> None:
    _, values, _ = scraped
    assert value(values, "unclip_jobs_total", kind="generation", outcome="done") == 2
    assert value(values, "unclip_jobs_total", kind="generation", outcome="failed") == 1
    assert value(values, "unclip_jobs_total", kind="variation", outcome="done") == 1
    assert value(values, "unclip_images_generated_total", kind="generation") == 3
    assert value(values, "unclip_requests_rejected_total", reason="queue_full") == 1
    assert value(values, "unclip_requests_rejected_total", reason="draining") == 0
    assert value(values, "unclip_requests_total", route="/v1/images/generations", outcome="429") == 1
    assert value(values, "unclip_request_duration_seconds_count", route="/v1/images/generations") == 2
    assert value(values, "unclip_queue_depth") == 0 and value(values, "unclip_running_jobs") == 0
    assert value(values, "unclip_ready") == 1
    assert 50 * 2**20 < value(values, "unclip_process_resident_memory_bytes") < 64 * 2**30
    assert value(values, "unclip_model_info", model="tiny", sizes="32,64") == 1
    assert value(values, "unclip_queue_wait_seconds_count", kind="generation") == 3  # the failed one started too
    for stage in ("prior", "decoder", "upsampler.0"):
        count = value(values, "unclip_step_duration_seconds_count", stage=stage)
        assert count == value(values, "unclip_batch_size_count", stage=stage) > 0
    # the generations' three prior tracks started together: batched
    prior_calls = value(values, "unclip_batch_size_count", stage="prior")
    assert value(values, "unclip_batch_size_sum", stage="prior") > prior_calls
    assert value(values, "unclip_batch_size_bucket", stage="prior", le="+Inf") == \
        value(values, "unclip_batch_size_count", stage="prior")


def test_no_high_cardinality_labels(scraped) -> None:
    _, values, _ = scraped
    allowed = {"route", "outcome", "reason", "kind", "stage", "le", "model", "sizes"}
    used = {k for _, labels in values for k, _ in labels}
    assert used <= allowed, used - allowed


def test_metrics_instances_are_independent() -> None:
    a, b = Metrics("m", [32]), Metrics("m", [32])  # own registries: no duplicate-name error
    a.set_ready(True)
    assert b"unclip_ready 0.0" in b.render()[0] and b"unclip_ready 1.0" in a.render()[0]
    assert isinstance(a, EngineStats)


def test_route_label_is_the_full_template(tiny_model_dir: Path) -> None:
    """The `route` label is the path template with the router's /v1 prefix (what the
    dashboard's `route=~"/v1/images/.+"` selects), never the raw path. No lifespan: the
    model is not loaded, the routes answer 404 or 503 and are counted all the same."""
    client = TestClient(create_app(Settings(model_dir=tiny_model_dir)))
    for method, path in (("GET", "/v1/images/jobs/job_x"), ("POST", "/v1/images/generations"),
                         ("GET", "/v1/models"), ("GET", "/nowhere")):
        client.request(method, path)
    routes = {s.labels["route"] for family in text_string_to_metric_families(client.get("/metrics").text)
              if family.name == "unclip_requests" for s in family.samples}
    assert routes == {"/v1/images/jobs/{job_id}", "/v1/images/generations", "/v1/models", "unmatched"}


def documented_metrics(text: str) -> dict[str, str]:
    """series name -> type cell, from each row of the markdown table headed
    `| metric | type | labels |` (a row may name several series)."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if re.match(r"\|\s*metric\s*\|\s*type\s*\|", line))
    out: dict[str, str] = {}
    for row in itertools.takewhile(lambda line: line.startswith("|"), lines[head + 2:]):
        names, kind = (cell.strip() for cell in row.strip("|").split("|")[:2])
        out.update((name, kind) for name in re.findall(r"`(unclip_\w+)`", names))
    return out


def exported_metrics(metrics: Metrics) -> dict[str, str]:
    """series name as queries write it (counter `x_total`, info `x_info`) -> type, of every
    family in the registry that GET /metrics renders (labelled families without children too)."""
    suffix = {"counter": "_total", "info": "_info"}
    return {family.name + suffix.get(family.type, ""): family.type for family in metrics.registry.collect()}


def test_metrics_table_lists_every_family() -> None:
    """The metrics table has a row for each exported family, with its type, and no row for
    a family the server does not export (the process collector's are Linux only)."""
    documented = documented_metrics(METRICS_TABLE.read_text())
    exported = exported_metrics(Metrics("m", [32]))
    assert sorted(set(exported) - set(documented)) == [], f"exported but not in {METRICS_TABLE.name}'s table"
    assert sorted(set(documented) - set(exported)) == [], f"in {METRICS_TABLE.name}'s table but not exported"
    wrong = {name: (documented[name], kind) for name, kind in exported.items()
             if kind not in re.findall(r"\w+", documented[name])}
    assert not wrong, f"documented type vs exported: {wrong}"
