"""Every PromQL expression of the deployment (the Grafana dashboard's panels and the KEDA
trigger's query) names only metrics that the server really exports.

The exported set comes from a LIVE server: `python -m server` runs as a subprocess on a
free 127.0.0.1 port, serving the tiny random-weight model directory of tests/conftest.py;
once /ready answers 200, one small request of each kind (the five image operations, an
async job polled to its end, the models list, an image file) gives the series samples,
and GET /metrics is parsed with prometheus_client's own parser.

Metric names are taken from each expression with a regex (strings, label matchers, range
selectors, `by (...)`-style label lists and Grafana variables removed first; identifiers
followed by `(` are functions or aggregations). A name is exported if it is a sample name
of the scrape, or a series name that a family of the scrape produces by its type: a
counter `x` gives `x_total`, a histogram `x` gives `x_bucket`, `x_sum`, `x_count`, a summary
`x`, `x_sum`, `x_count`, a gauge only `x`. So a gauge that happens to end in `_count` is
not mistaken for a histogram part, and `x` alone never matches a counter's `x_total`.
When promql-parser is installed, every expression is also parsed by it (syntax), and the
names it finds must equal the regex's; and each of its selectors (a metric and its label
matchers, regexes included) must select at least one series of the scrape, so that no
panel is empty for a label value the server never exports.

The same live server answers the probe paths of the Deployment, the ServiceMonitor and the
Dockerfile's HEALTHCHECK, and finally drains and exits 0 on SIGTERM, as the Deployment's
termination sequence expects.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

yaml = pytest.importorskip("yaml")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.server.conftest import FAST, FAST_DECODER, half_transparent, png  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "compose" / "grafana" / "dashboards" / "unclip.json"
SCALEDOBJECT = ROOT / "deploy" / "k8s" / "scaledobject.yaml"
DEPLOYMENT = ROOT / "deploy" / "k8s" / "deployment.yaml"
SERVICEMONITOR = ROOT / "deploy" / "k8s" / "servicemonitor.yaml"
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yaml"

READY_TIMEOUT_S = 300.0
GENERATION = {"prompt": "a red circle", "size": "32x32", "n": 1, "response_format": "b64_json", **FAST}
API_KEY = "deploy-test-key"
# The routes that send_traffic requests besides the image operations' (as templates).
OTHER_ROUTES = ("/v1/images/jobs/{job_id}", "/v1/models", "/v1/files/images/{image_id}.{ext}")

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "start", "end", "atan2",
}
# Grafana's interval variables, replaced by a duration so that the text is plain PromQL.
GRAFANA_VARS = re.compile(r"\$\{?__(rate_interval|interval|range)(:\w+)?\}?")


# -------------------------------------------------------------------- the expressions
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every PromQL expression in the dashboard."""
    dash = dashboard()
    out = []
    for panel in panels(dash):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            raise AssertionError("query variables: teach this test to read their PromQL")
    return out


def keda_exprs() -> list[tuple[str, str]]:
    scaled = yaml.safe_load(SCALEDOBJECT.read_text())
    return [(f"KEDA trigger {i}", t["metadata"]["query"])
            for i, t in enumerate(scaled["spec"]["triggers"]) if t["type"] == "prometheus"]


def all_exprs() -> list[tuple[str, str]]:
    return dashboard_exprs() + keda_exprs()


def plain_promql(expr: str) -> str:
    return GRAFANA_VARS.sub("5m", expr)


def metric_names(expr: str) -> set[str]:
    """The metric (series) names an expression selects, by regex."""
    expr = plain_promql(expr)
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, is_call = m.group(1), m.group(2)
        if is_call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def call_arguments(expr: str, funcs: tuple[str, ...]) -> list[tuple[str, str]]:
    """(function, argument text) of each call of one of `funcs` (balanced parentheses)."""
    out = []
    for m in re.finditer(r"\b(%s)\s*\(" % "|".join(funcs), expr):
        depth, i = 1, m.end()
        while depth and i < len(expr):
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        out.append((m.group(1), expr[m.end(): i - 1]))
    return out


def test_metric_name_regex() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{route=~"/v1/.*", le!="x"}[$__rate_interval])))'
    ) == {"a_seconds_bucket"}
    assert metric_names("sum(rate(b_total[5m])) / clamp_min(sum(c_count) without (x), 1e-3) offset 1h") == {
        "b_total", "c_count"}
    assert metric_names('max_over_time(d[10m:1m]) > bool 2 and on (instance) e or {__name__="f"}') == {
        "d", "e", "f"}
    assert metric_names("sum(g) by (reason)") == {"g"}


# ------------------------------------------------------------------- the live server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 10.0,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class LiveServer:
    def __init__(self, proc: subprocess.Popen, base: str, log: Path):
        self.proc, self.base, self.log = proc, base, log
        self.metrics_text = ""

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def live_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    port = free_port()
    log = tmp_path_factory.mktemp("live-server") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNCLIP_")}
    env.update(
        UNCLIP_MODEL_DIR=str(tiny_model_dir), UNCLIP_HOST="127.0.0.1", UNCLIP_PORT=str(port),
        UNCLIP_API_KEYS=API_KEY, UNCLIP_DRAIN_GRACE_S="20", UNCLIP_DEVICE="cpu",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode} before ready:\n{server.log_tail()}")
            try:
                status, _ = http("GET", server.base + "/ready", timeout=5)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready within {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}")
            time.sleep(0.5)

        send_traffic(server)
        status, body = http("GET", server.base + "/metrics")
        assert status == 200, body[:500]
        server.metrics_text = body.decode()
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def image_requests() -> dict[str, dict[str, Any]]:
    """path -> httpx.post keywords of one request of each image operation: 32x32, two steps
    a stage; the generation answers a URL (its file is fetched), the others base64."""
    def form(**fields: Any) -> dict[str, str]:
        return {k: str(v) for k, v in {"size": "32x32", "response_format": "b64_json", **FAST_DECODER,
                                        **fields}.items()}

    def files(*images: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
        return [(name, (f"{i}.png", data, "image/png")) for i, (name, data) in enumerate(images)]

    return {
        "/v1/images/generations": {"json": {**GENERATION, "response_format": "url"}},
        "/v1/images/edits": {"data": form(prompt="fill it", **FAST),
                             "files": files(("image", png(32, half_transparent(32))))},
        "/v1/images/variations": {"data": form(), "files": files(("image", png(32)))},
        "/v1/images/interpolations": {"data": form(frames=2),
                                      "files": files(("image[]", png(32, seed=1)), ("image[]", png(32, seed=2)))},
        "/v1/images/text-diffs": {"data": form(prompt="a dog", source_prompt="a cat", frames=2),
                                  "files": files(("image", png(32)))},
    }


def send_traffic(server: LiveServer) -> None:
    """One request of each kind, each answered 200 (202): the image operations at once (the
    engine batches them), the file of the generation's URL, an async generation polled to
    its end, the models list."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.base, headers=auth, timeout=300) as client, ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda item: client.post(item[0], **item[1]), image_requests().items()))
        for r in answers:
            assert r.status_code == 200, (r.url, r.text[:500], server.log_tail())
        assert client.get(answers[0].json()["data"][0]["url"]).status_code == 200
        job = client.post("/v1/images/generations", json=GENERATION, headers={"Prefer": "respond-async"})
        assert job.status_code == 202, job.text[:500]
        deadline = time.monotonic() + 120
        while (status := client.get(f"/v1/images/jobs/{job.json()['id']}").json()["status"]) != "completed":
            assert status in ("queued", "in_progress") and time.monotonic() < deadline, status
            time.sleep(0.2)
        assert client.get("/v1/models").status_code == 200


def exported(text: str) -> tuple[set[str], dict[str, str]]:
    """(series names the scrape can hold, family name -> type)."""
    names: set[str] = set()
    types: dict[str, str] = {}
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",), "unknown": ("",), "untyped": ("",), "info": ("_info",), "stateset": ("",),
    }
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names, types


def family_of(series: str, types: dict[str, str]) -> tuple[str, str] | None:
    """(family, type) that produces `series`, by the suffix its type gives."""
    for suffix, kinds in (("_bucket", ("histogram",)), ("_sum", ("histogram", "summary")),
                          ("_count", ("histogram", "summary")), ("_total", ("counter",))):
        if series.endswith(suffix) and types.get(series[: -len(suffix)]) in kinds:
            return series[: -len(suffix)], types[series[: -len(suffix)]]
    if series in types:
        return series, types[series]
    return None


# ------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("where,expr", all_exprs(), ids=[w for w, _ in all_exprs()])
def test_promql_names_exported_metrics(live_server: LiveServer, where: str, expr: str) -> None:
    names, types = exported(live_server.metrics_text)
    used = metric_names(expr)
    assert used, f"{where}: no metric in {expr!r}"
    missing = sorted(n for n in used if n not in names)
    assert not missing, (
        f"{where}: {missing} not exported; the server exports: "
        f"{sorted(n for n in types if n.startswith('unclip_'))}"
    )


@pytest.mark.parametrize("where,expr", all_exprs(), ids=[w for w, _ in all_exprs()])
def test_promql_uses_metric_types_rightly(live_server: LiveServer, where: str, expr: str) -> None:
    """rate()/increase() over counters or histogram/summary parts only; histogram_quantile
    over histogram buckets only; no rate() of a gauge."""
    _, types = exported(live_server.metrics_text)
    text = plain_promql(expr)
    for func, arg in call_arguments(text, ("rate", "irate", "increase")):
        for name in metric_names(arg):
            fam = family_of(name, types)
            assert fam is not None, f"{where}: {name} not exported"
            family, kind = fam
            counter_like = (kind == "counter" and name == family + "_total") or (
                kind in ("histogram", "summary") and name != family)
            assert counter_like, f"{where}: {func}() of {name}, a {kind}"
    for _, arg in call_arguments(text, ("histogram_quantile",)):
        for name in metric_names(arg):
            fam = family_of(name, types)
            assert name.endswith("_bucket") and fam and fam[1] == "histogram", f"{where}: {name} ({fam})"


# Labels that Prometheus (and prometheus-operator) attach to every scraped series.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "endpoint", "container", "target"}


def exported_labels(text: str) -> dict[str, set[str]]:
    """series name -> label names seen on its samples (the family's, `le` on buckets)."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def used_labels(expr: str) -> set[str]:
    """Label names in matchers and in by/without/on/ignoring/group_* lists."""
    text = plain_promql(expr)
    labels = set()
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        labels.update(x.strip() for x in group.split(",") if x.strip())
    return labels - {"__name__"}


@pytest.mark.parametrize("where,expr", all_exprs(), ids=[w for w, _ in all_exprs()])
def test_promql_labels_exist(live_server: LiveServer, where: str, expr: str) -> None:
    """A label the expression filters or groups by is one the server puts on those
    series (after the generation request every used series has samples), or a target
    label Prometheus adds."""
    seen = exported_labels(live_server.metrics_text)
    names = metric_names(expr)
    missing_samples = sorted(n for n in names if n not in seen)
    assert not missing_samples, f"{where}: no samples of {missing_samples} to read their labels from"
    allowed = TARGET_LABELS.union(*(seen[n] for n in names))
    assert used_labels(expr) <= allowed, f"{where}: {sorted(used_labels(expr) - allowed)} not labels of {names}"


def selectors(node: Any) -> Iterator[Any]:
    """The vector selectors (promql_parser.VectorSelector) of a parsed expression, those
    inside range selectors and subqueries included."""
    import promql_parser

    if isinstance(node, promql_parser.VectorSelector):
        yield node
        return
    for attr in ("expr", "lhs", "rhs", "vector_selector", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (int, float, str)):
            yield from selectors(child)
    for child in getattr(node, "args", None) or []:
        yield from selectors(child)


def selector_name(selector: Any) -> str:
    """The metric a selector names, by name or by a `__name__="..."` matcher."""
    return selector.name or next(m.value for m in selector.matchers.matchers if m.name == "__name__")


def label_matches(labels: dict[str, str], matcher: Any) -> bool:
    """PromQL's matcher semantics: a missing label is "", regexes are anchored."""
    import promql_parser

    value, op = labels.get(matcher.name, ""), matcher.op
    if op in (promql_parser.MatchOp.Re, promql_parser.MatchOp.NotRe):
        return (re.fullmatch(matcher.value, value) is not None) == (op == promql_parser.MatchOp.Re)
    return (value == matcher.value) == (op == promql_parser.MatchOp.Equal)


def exported_series(text: str) -> dict[str, list[dict[str, str]]]:
    """series name -> the label sets of its samples in the scrape."""
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample.labels)
    return out


def test_label_matches() -> None:
    promql_parser = pytest.importorskip("promql_parser")
    (sel,) = selectors(promql_parser.parse('m{route=~"/v1/images/.+", kind!="warmup", le="1", x!~"a|b"}'))
    matchers = sel.matchers.matchers
    assert all(label_matches({"route": "/v1/images/edits", "kind": "edit", "le": "1"}, m) for m in matchers)
    assert not label_matches({"route": "/images/edits"}, matchers[0])
    assert not label_matches({"route": "x/v1/images/edits"}, matchers[0])  # anchored
    assert not label_matches({"kind": "warmup"}, matchers[1])
    assert label_matches({}, matchers[1]) and not label_matches({}, matchers[2])
    assert not label_matches({"x": "a"}, matchers[3]) and label_matches({"x": "ab"}, matchers[3])


@pytest.mark.parametrize("where,expr", all_exprs(), ids=[w for w, _ in all_exprs()])
def test_promql_parses(where: str, expr: str) -> None:
    """Syntax, by a real PromQL parser; its names agree with the regex's."""
    promql_parser = pytest.importorskip("promql_parser")
    tree = promql_parser.parse(plain_promql(expr))
    assert {selector_name(sel) for sel in selectors(tree)} == metric_names(expr), where


@pytest.mark.parametrize("where,expr", all_exprs(), ids=[w for w, _ in all_exprs()])
def test_promql_selectors_select_exported_series(live_server: LiveServer, where: str, expr: str) -> None:
    """Every selector selects at least one series of the scrape after one request of each
    kind: one series with the metric's name satisfies all of its label matchers (=, !=,
    =~, !~), but those on labels Prometheus attaches to every target (job, instance...).
    A matcher on a value the server never exports (route="/images/..." for "/v1/images/...")
    leaves a panel empty although its metric and label names exist."""
    promql_parser = pytest.importorskip("promql_parser")
    series = exported_series(live_server.metrics_text)
    for sel in selectors(promql_parser.parse(plain_promql(expr))):
        name = selector_name(sel)
        matchers = [m for m in sel.matchers.matchers if m.name != "__name__" and m.name not in TARGET_LABELS]
        assert series.get(name), f"{where}: no series {name}"
        assert any(all(label_matches(labels, m) for m in matchers) for labels in series[name]), (
            f"{where}: no series of {name} has {[(m.name, str(m.op), m.value) for m in matchers]}; its values: "
            f"{ {m.name: sorted({labels.get(m.name, '') for labels in series[name]}) for m in matchers} }")


def test_requests_labelled_by_full_route_template(live_server: LiveServer) -> None:
    """Each request of send_traffic is counted under its route template with the /v1
    prefix ("/v1/images/jobs/{job_id}"), never the raw path."""
    routes = {labels["route"] for labels in exported_series(live_server.metrics_text)["unclip_requests_total"]}
    assert set(image_requests()) | set(OTHER_ROUTES) <= routes, sorted(routes)
    assert not any(route.startswith("/images/") or "/job_" in route for route in routes), sorted(routes)


def panel_exprs(word: str) -> list[str]:
    """The expressions of the one dashboard panel whose title holds `word` (any case)."""
    by_title = {p.get("title", "").lower(): [t.get("expr", "") for t in p.get("targets", [])]
                for p in panels(dashboard())}
    hits = [exprs for title, exprs in by_title.items() if word in title]
    assert len(hits) == 1, f"one panel titled with {word!r}: {sorted(by_title)}"
    return hits[0]


def test_dashboard_has_the_panels() -> None:
    """Throughput, queue depth, latency p50/p99, batch size, rejections by reason, GPU
    memory: each a panel whose expressions say so."""
    find = panel_exprs
    assert any("rate(" in e for e in find("throughput"))
    assert any("queue_depth" in e for e in find("queue depth"))
    latency = " ".join(find("latency"))
    assert ("histogram_quantile(0.5," in latency.replace(" ", "")
            or "histogram_quantile(0.50," in latency.replace(" ", ""))
    assert "histogram_quantile(0.99," in latency.replace(" ", "")
    assert find("batch size")
    assert any(re.search(r"by\s*\(\s*reason\s*\)", e) for e in find("rejections"))
    assert find("gpu memory")


def test_queue_depth_panel_counts_the_shared_queue() -> None:
    """The compose stack runs the server with Redis, where each engine's unclip_queue_depth
    stays near 0 (a replica claims only into free slots) and the backlog waits in the
    shared queue, unclip_global_queue_depth (0 without Redis; every replica reports the
    same number, so its max). The panel's total adds both; each replica's own queue is
    still plotted."""
    server = yaml.safe_load(COMPOSE.read_text())["services"]["unclip"]
    assert server["environment"].get("UNCLIP_REDIS_URL", "").startswith("redis://")
    exprs = [plain_promql(e) for e in panel_exprs("queue depth")]
    totals = [e for e in exprs if metric_names(e) == {"unclip_global_queue_depth", "unclip_queue_depth"}]
    assert len(totals) == 1, exprs
    assert re.search(r"\bmax\s*\(\s*unclip_global_queue_depth\s*\)", totals[0]), totals[0]
    assert re.search(r"\bsum\s*\(\s*unclip_queue_depth\s*\)", totals[0]), totals[0]
    assert any(metric_names(e) == {"unclip_queue_depth"} and re.search(r"by\s*\(\s*instance\s*\)", e)
               for e in exprs), exprs


def test_probe_paths_answer(live_server: LiveServer) -> None:
    deploy = yaml.safe_load(DEPLOYMENT.read_text())
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    monitor = yaml.safe_load(SERVICEMONITOR.read_text())
    paths |= {ep["path"] for ep in monitor["spec"]["endpoints"]}
    from tests.deploy.test_manifests import dockerfile_instructions

    health = [path for instr, args in dockerfile_instructions() if instr == "HEALTHCHECK"
              for path in re.findall(r"http://[^/'\"]+(/[\w/]*)", args)]
    assert len(health) == 2, health  # cpu and cuda targets
    paths |= set(health)
    for path in sorted(paths):
        status, body = http("GET", live_server.base + path)  # no API key: probes are open
        assert status == 200, (path, status, body[:300])


def test_sigterm_drains_and_exits_cleanly(live_server: LiveServer) -> None:
    """Runs last in this module: SIGTERM (what the kubelet sends after preStop) makes the
    server stop being ready and exit 0 within its drain grace."""
    live_server.proc.send_signal(signal.SIGTERM)
    try:
        code = live_server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server still running 60 s after SIGTERM:\n{live_server.log_tail()}")
    assert code == 0, live_server.log_tail()
