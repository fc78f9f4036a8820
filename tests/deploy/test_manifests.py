"""Static validation of the deployment files: Dockerfile, .dockerignore, Kubernetes
manifests (deploy/k8s/) and the compose stack (deploy/compose/).

How each is checked (no Docker engine and no cluster are needed):

* Kubernetes built-in kinds (Deployment, Service, PodDisruptionBudget, PVC, Secret):
  kubernetes-validate in strict mode (unknown fields are errors) against the schemas of
  the oldest and the newest Kubernetes version we target.
* Custom resources: KEDA ScaledObject and prometheus-operator ServiceMonitor against JSON
  schemas vendored in tests/deploy/schemas/, derived from the CRD models of the PyPI
  packages cloudcoil-models-keda 2.16.1.0 and cloudcoil-models-prometheus-operator
  0.80.1.0 (descriptions dropped, unknown fields forbidden as `kubectl --validate=strict`
  does; schemas/README.md says how they were made).
* Compose: the official compose-spec JSON schema, vendored unchanged from the
  check-jsonschema 0.39.0 wheel on PyPI (schemas/compose-spec.json, Apache-2.0), always;
  and `docker compose config` (which needs no engine) when a Compose v2 CLI is installed,
  otherwise that test is skipped with the reason.
* Dockerfile: parsed here (stages, USER, ENTRYPOINT, HEALTHCHECK, pins); it is not built.
* Cross-checks against the server: the manifests' UNCLIP_* environment is parsed with the
  server's own `server.settings.Settings`; probe paths, ports, drain grace and deadlines
  are compared with it. tests/deploy/test_dashboard.py hits the same probe paths and
  the PromQL metric names on a live server.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yaml"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# The oldest Kubernetes release the manifests are meant for (every field used here, PDB
# unhealthyPodEvictionPolicy included, exists there) and the newest kubernetes-validate
# knows.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())

CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
}

# Kubernetes' resource.Quantity grammar (k8s.io/apimachinery/pkg/api/resource).
QUANTITY = re.compile(
    r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(\d+(\.\d*)?|\.\d+)))?$"
)
# On top of preStop + drain grace: uvicorn's graceful shutdown (WRITE_GRACE_S, server/serving.py)
# and the process' exit.
PRESTOP_SLACK_S = 20


# ------------------------------------------------------------------------------- helpers
def manifest_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def all_docs() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    """The one manifest of `kind` (named `name`, when several are)."""
    found = [d for _, d in all_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def secret_env(container: dict[str, Any], name: str) -> dict[str, Any]:
    """The secretKeyRef of the container's variable `name` (never an inline value)."""
    found = [e for e in container["env"] if e["name"] == name]
    assert len(found) == 1 and "value" not in found[0], f"{name} comes from a Secret, not inline"
    return found[0]["valueFrom"]["secretKeyRef"]


def server_container(deploy: dict[str, Any]) -> dict[str, Any]:
    containers = deploy["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def validate_crd(doc: dict[str, Any]) -> list[str]:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]).read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def server_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    """The server's Settings as the server would parse them from this environment."""
    settings_mod = pytest.importorskip("server.settings")
    import os

    for key in list(os.environ):
        if key.startswith("UNCLIP_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return settings_mod.Settings()


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def duration_s(text: str | int | float) -> float:
    """A compose duration ('150s', '2m30s', '1h') in seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?", text.strip())
    assert parts and any(parts.groups()), f"not a duration: {text!r}"
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    return h * 3600 + m * 60 + s


# ------------------------------------------------------------------- Kubernetes schemas
def test_manifest_set_is_complete() -> None:
    kinds = sorted(d["kind"] for _, d in all_docs())
    assert kinds == sorted([
        "Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "ServiceMonitor",
        "Secret", "Secret", "PersistentVolumeClaim",
    ])
    assert (K8S / "README.md").is_file()


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_builtin_kinds_validate_strictly(path: Path, version: str) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_custom_resources_validate_against_crd_schemas(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if (doc["apiVersion"], doc["kind"]) not in CRD_SCHEMAS:
            continue
        assert validate_crd(doc) == []


def test_validators_reject_typos() -> None:
    """The validation above is not vacuous: a misspelt field fails each validator."""
    deploy = copy.deepcopy(the("Deployment"))
    server_container(deploy)["readinessProbe"]["httpGett"] = {"path": "/ready"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, K8S_VERSIONS[-1], strict=True)

    scaled = copy.deepcopy(the("ScaledObject"))
    scaled["spec"]["triggerz"] = scaled["spec"].pop("triggers")
    assert validate_crd(scaled)
    monitor = copy.deepcopy(the("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert validate_crd(monitor)


def test_resource_quantities_parse() -> None:
    """kubernetes-validate accepts any string for a quantity; the API server would not."""
    for _, doc in all_docs():
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                for section in ("requests", "limits"):
                    for name, q in c["resources"].get(section, {}).items():
                        assert QUANTITY.match(str(q)), f"{name}: {q!r}"
            for v in doc["spec"]["template"]["spec"]["volumes"]:
                if "emptyDir" in v and "sizeLimit" in v["emptyDir"]:
                    assert QUANTITY.match(str(v["emptyDir"]["sizeLimit"]))
        if doc["kind"] == "PersistentVolumeClaim":
            assert QUANTITY.match(str(doc["spec"]["resources"]["requests"]["storage"]))


# --------------------------------------------------------------- Deployment semantics
def test_one_gpu_per_pod() -> None:
    res = server_container(the("Deployment"))["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 1
    assert res["requests"].get("nvidia.com/gpu", 1) == 1


def test_probes_match_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    deploy = the("Deployment")
    c = server_container(deploy)
    settings = server_settings(literal_env(c), monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": settings.port}
    assert settings.host == "0.0.0.0", "the server must listen beyond loopback in a pod"

    expected = {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("http", settings.port), probe
        assert get.get("scheme", "HTTP") == "HTTP"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, (
        "the startup budget must cover loading large weights (>= 10 min)"
    )
    # Liveness must not restart a server that is busy on a long batch.
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60


def test_probe_paths_are_routes_of_the_server(tiny_model_dir: Path) -> None:
    """The probe and scrape paths are routes of the server's app (built by its factory,
    the model not loaded); test_dashboard.py also GETs them on a live server."""
    app_mod = pytest.importorskip("server.app", reason="server/app.py not importable yet")
    from server.settings import Settings

    app = app_mod.create_app(Settings(model_dir=tiny_model_dir))
    # FastAPI >= 0.16x keeps included routers nested: read the paths from its OpenAPI
    # schema (every route here is in it), plus the top-level routes.
    paths = set(app.openapi()["paths"]) | {getattr(route, "path", None) for route in app.routes}
    c = server_container(the("Deployment"))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] in paths, (probe, sorted(p for p in paths if p))
    assert the("ServiceMonitor")["spec"]["endpoints"][0]["path"] in paths


def test_drain_fits_in_the_termination_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """preStop sleep + drain grace (+ slack) <= terminationGracePeriodSeconds, and the
    drain grace covers the longest job the server admits (its maximum deadline)."""
    deploy = the("Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = server_container(deploy)
    settings = server_settings(literal_env(c), monkeypatch)
    assert "UNCLIP_DRAIN_GRACE_S" in literal_env(c)

    pre_stop = c["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep_s = pre_stop["sleep"]["seconds"]
    else:
        cmd = pre_stop["exec"]["command"]
        assert Path(cmd[0]).name == "sleep" and len(cmd) == 2, cmd
        sleep_s = float(cmd[1])
    assert 5 <= sleep_s <= 60

    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= sleep_s + settings.drain_grace_s + PRESTOP_SLACK_S, (
        grace, sleep_s, settings.drain_grace_s,
    )
    assert settings.drain_grace_s >= settings.max_deadline_s, (
        "a job admitted just before SIGTERM may run until its deadline"
    )
    assert settings.default_deadline_s <= settings.max_deadline_s


def test_security_context() -> None:
    deploy = the("Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = server_container(deploy)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid(), "same uid as the image's USER"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod.get("automountServiceAccountToken") is False

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "a writable /tmp on a read-only root"


def test_weights_and_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    deploy = the("Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = server_container(deploy)
    settings = server_settings(literal_env(c), monkeypatch)

    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = mounts[str(settings.model_dir)]
    assert str(settings.model_dir) == "/models"
    assert mount["readOnly"] is True
    claim = volumes[mount["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    assert claim["claimName"] == the("PersistentVolumeClaim")["metadata"]["name"]

    ref = secret_env(c, "UNCLIP_API_KEYS")
    secret = the("Secret", ref["name"])
    assert ref["key"] in secret.get("stringData", {}) or ref["key"] in secret.get("data", {})
    assert not ref.get("optional", False), "no API keys would mean no authentication"


def test_redis_url_from_an_optional_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """UNCLIP_REDIS_URL comes from its own Secret, optional (without it each pod keeps its
    jobs to itself); the example's value is a URL the server's settings accept."""
    ref = secret_env(server_container(the("Deployment")), "UNCLIP_REDIS_URL")
    assert ref["optional"] is True
    secret = the("Secret", ref["name"])
    url = secret["stringData"][ref["key"]]
    assert server_settings({"UNCLIP_REDIS_URL": url}, monkeypatch).redis_url == url


def test_selectors_and_references_agree() -> None:
    deploy, service = the("Deployment"), the("Service")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    sel = deploy["spec"]["selector"]["matchLabels"]
    assert sel.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    pdb = the("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in server_container(deploy)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports

    monitor = the("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for ep in monitor["spec"]["endpoints"]:
        assert ep["port"] in service_ports

    scaled = the("ScaledObject")
    ref = scaled["spec"]["scaleTargetRef"]
    assert (ref.get("kind", "Deployment"), ref["name"]) == ("Deployment", deploy["metadata"]["name"])
    assert "replicas" not in deploy["spec"], "KEDA owns the replica count"


def test_keda_trigger_reads_the_scraped_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Prometheus trigger queries the queue depth (plus running jobs) of the job that
    the ServiceMonitor creates (job label = the Service's name unless jobLabel is set),
    and its per-replica target is reachable: at most one replica's running capacity (the
    engine runs up to 2 x max_batch jobs at once). That the metric names exist on a live
    server is checked in test_dashboard.py."""
    scaled, service, monitor = the("ScaledObject"), the("Service"), the("ServiceMonitor")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["serverAddress"].startswith("http")
    query = meta["query"]
    assert "unclip_queue_depth" in query
    assert "jobLabel" not in monitor["spec"]
    selectors = re.findall(r"\b(unclip_\w+)\s*\{([^}]*)\}", query)
    assert len(selectors) == len(re.findall(r"\bunclip_\w+", query)), "every selector filters by job"
    for _, matchers in selectors:
        assert re.findall(r'job\s*=\s*"([^"]+)"', matchers) == [service["metadata"]["name"]]
    settings = server_settings(literal_env(server_container(the("Deployment"))), monkeypatch)
    assert 1 <= float(meta["threshold"]) <= 2 * settings.max_batch
    spec = scaled["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]


# ------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            instr, _, args = buf.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for instr, args in dockerfile_instructions():
        if instr == "FROM":
            m = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert m, args
            current = m.group(2) or f"stage{len(stages)}"
            stages[current] = [(instr, args)]
        elif current is not None:
            stages[current].append((instr, args))
    return stages


def stage_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in stage:
        if instr == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def dockerfile_uid() -> int:
    uids = set()
    for name in ("cpu", "cuda"):
        (user,) = [a for i, a in dockerfile_stages()[name] if i == "USER"]
        uids.add(int(user.split(":")[0]))
    assert len(uids) == 1
    return uids.pop()


def makefile_torch_pins() -> dict[str, str]:
    m = re.search(r"^TORCH_PINS\s*\??=\s*(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert m
    return dict(p.split("==") for p in m.group(1).split())


DOCKERFILE_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}
KNOWN_FLAGS = {
    "COPY": {"from", "chown", "chmod", "link", "parents", "exclude"},
    "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"},
    "FROM": {"platform"},
    "RUN": {"mount", "network", "security"},
}


def test_dockerfile_parses_with_buildkits_parser() -> None:
    """BuildKit's own Go parser (the `dockerfile` package) reads the same instructions as
    the small parser these tests use, only known instructions and flags, and the exec
    (JSON) form for ENTRYPOINT and HEALTHCHECK."""
    dockerfile = pytest.importorskip("dockerfile")
    parsed = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    assert [c.cmd.upper() for c in parsed] == [i for i, _ in dockerfile_instructions()]
    for c in parsed:
        assert c.cmd.upper() in DOCKERFILE_INSTRUCTIONS, c
        for flag in c.flags:
            name = flag.lstrip("-").split("=")[0]
            assert name in KNOWN_FLAGS.get(c.cmd.upper(), set()), (c.cmd, flag)
        if c.cmd.upper() in ("ENTRYPOINT", "HEALTHCHECK"):
            assert c.json, f"{c.cmd} in exec form"


def test_dockerfile_targets_and_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    stages = dockerfile_stages()
    assert "cpu" in stages and "cuda" in stages
    assert list(stages)[-1] == "cuda", "the CUDA runtime is the default (last) target"
    for name in ("cpu", "cuda"):
        stage = stages[name]
        instrs = [i for i, _ in stage]
        (user,) = [a for i, a in stage if i == "USER"]
        uid, _, gid = user.partition(":")
        assert uid.isdigit() and int(uid) != 0, "numeric non-root USER (runAsNonRoot can check it)"
        assert gid.isdigit() and int(gid) != 0
        # USER comes after every RUN of the runtime stage, and before ENTRYPOINT.
        assert instrs.index("USER") > max(i for i, x in enumerate(instrs) if x == "RUN")
        (entry,) = [a for i, a in stage if i == "ENTRYPOINT"]
        argv = json.loads(entry)  # exec form: the server is PID 1 and receives SIGTERM
        assert Path(argv[0]).name.startswith("python") and argv[1:] == ["-m", "server"]
        assert "CMD" not in instrs
        (health,) = [a for i, a in stage if i == "HEALTHCHECK"]
        cmd = json.loads(health[health.index("CMD") + 3:].strip())
        assert cmd[0].startswith("python") and "/health" in cmd[-1] and "curl" not in health
        env = stage_env(stage)
        settings = server_settings({k: v for k, v in env.items() if k.startswith("UNCLIP_")}, monkeypatch)
        assert settings.host == "0.0.0.0"
        (expose,) = [a for i, a in stage if i == "EXPOSE"]
        assert int(expose.split("/")[0]) == settings.port
        # The embedded default model is the one UNCLIP_MODEL_DIR names.
        copies = [a.split() for i, a in stage if i == "COPY" and not a.startswith("--from")]
        assert ["weights/default", str(settings.model_dir)] in copies


def test_dockerfile_pins_torch_like_the_makefile() -> None:
    pins = makefile_torch_pins()
    for name in ("cpu-build", "cuda-build"):
        args = dict(a.split("=", 1) for i, a in dockerfile_stages()[name] if i == "ARG" and "=" in a)
        assert args["TORCH_VERSION"] == pins["torch"]
        assert args["TORCHVISION_VERSION"] == pins["torchvision"]
    for name, extras in (("cpu-build", {"hf", "c2pa"}), ("cuda-build", {"gpu", "hf", "c2pa"})):
        stage = dockerfile_stages()[name]
        args = dict(a.split("=", 1) for i, a in stage if i == "ARG" and "=" in a)
        assert set(args["EXTRAS"].split(",")) == extras, name  # snapshots, C2PA (and xformers) by default
        assert extras <= set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
        run = " ".join(a for i, a in stage if i == "RUN")
        assert '"/src[$EXTRAS]"' in run or '"/src${EXTRAS:+[$EXTRAS]}"' in run, name


def dockerignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a pattern matching a
    parent directory matches the path."""
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_small_and_complete() -> None:
    for instr, args in dockerfile_instructions():
        if instr == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                sample = src + "/x.py" if (ROOT / src).is_dir() else src
                assert not dockerignored(sample), f"COPY source {src} is excluded by .dockerignore"
    for needed in ("pyproject.toml", "README.md", "server/app.py", "pipelines/unet.py",
                   "weights/default/stack.json"):
        assert not dockerignored(needed), needed
    for dropped in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "weights/other/x.safetensors",
                    "server/__pycache__/app.cpython-311.pyc", "runs/x", "bench/results/x.json"):
        assert dockerignored(dropped), dropped


# ---------------------------------------------------------------------------- compose
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_cli() -> list[str] | None:
    """A Compose v2 CLI: the docker plugin, or a standalone docker-compose v2."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cli in candidates:
        try:
            out = subprocess.run(cli + ["version", "--short"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and re.match(r"v?2\.", out.stdout.strip()):
            return cli
    return None


def test_compose_file_validates_against_the_compose_spec() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []
    # ... and the schema is strict enough to catch a typo.
    bad = compose()
    bad["services"]["unclip"]["stop_grace_periodd"] = bad["services"]["unclip"].pop("stop_grace_period")
    assert list(validator.iter_errors(bad))


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_docker_compose_config(profile: str | None) -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Compose v2 CLI here (`docker compose` / docker-compose v2): "
                    "validated against the compose-spec schema only")
    argv = cli + ["-f", str(COMPOSE_FILE)] + (["--profile", profile] if profile else []) + ["config", "--quiet"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=COMPOSE_DIR)
    assert out.returncode == 0, out.stderr


def test_compose_server_service(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    assert services["unclip"]["build"]["target"] == "cpu", "CPU image by default"
    assert services["unclip"]["build"]["dockerfile"] == "Dockerfile"
    assert (COMPOSE_DIR / services["unclip"]["build"]["context"] / "Dockerfile").resolve() == ROOT / "Dockerfile"
    assert services["unclip-gpu"]["build"]["target"] == "cuda"
    assert services["unclip-gpu"]["profiles"] == ["gpu"]
    for name in ("unclip", "unclip-gpu"):
        svc = services[name]
        settings = server_settings({k: str(v) for k, v in svc["environment"].items()
                                    if k.startswith("UNCLIP_") and "$" not in str(v)}, monkeypatch)
        assert svc["read_only"] is True
        assert any(t.split(":")[0] == "/tmp" for t in svc["tmpfs"])
        assert int(str(svc["user"]).split(":")[0]) == dockerfile_uid()
        assert duration_s(svc["stop_grace_period"]) > settings.drain_grace_s
        (mount,) = [v for v in svc["volumes"] if v["target"] == str(settings.model_dir)]
        assert mount["read_only"] is True
        assert any(p.endswith(f":{settings.port}") for p in svc["ports"])


def test_compose_servers_share_one_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack's Redis: the official image, memory bounded without eviction, the
    append-only file on a volume; every server names it in UNCLIP_REDIS_URL (parsed by the
    server's settings) and starts after it."""
    services = compose()["services"]
    redis = services["redis"]
    assert redis["image"].split(":")[0] == "redis" and "ports" not in redis, "inside the stack only"
    flags = redis["command"]
    assert flags[0] == "redis-server"
    assert flags[flags.index("--appendonly") + 1] == "yes" and flags[flags.index("--appendfsync") + 1] == "everysec"
    assert "--maxmemory" in flags and flags[flags.index("--maxmemory-policy") + 1] == "noeviction"
    assert [v.split(":")[1] for v in redis["volumes"]] == ["/data"]  # the image's working dir: the AOF
    for name in ("unclip", "unclip-gpu"):
        svc = services[name]
        url = server_settings({"UNCLIP_REDIS_URL": svc["environment"]["UNCLIP_REDIS_URL"]}, monkeypatch).redis_url
        assert url is not None and url.split("://")[1].split(":")[0] == "redis", url
        assert "redis" in svc["depends_on"]


def test_prometheus_scrapes_the_compose_servers() -> None:
    services = compose()["services"]
    prom = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "unclip"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{services[name]['environment']['UNCLIP_PORT']}" for name in ("unclip", "unclip-gpu")}
    mounts = services["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_provisioning_matches_the_mounts() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/dashboards/unclip.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == mounts["./grafana/dashboards"]
    assert (COMPOSE_DIR / "grafana/dashboards/unclip.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == mounts["./grafana/dashboards"] + "/unclip.json"

    datasources = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    # Panels use the dashboard's datasource variable (so the dashboard imports into any
    # Grafana); its default is the provisioned datasource.
    dashboard = json.loads((COMPOSE_DIR / "grafana/dashboards/unclip.json").read_text())
    assert set(_datasource_uids(dashboard)) == {"${datasource}"}
    (var,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert var["type"] == "datasource" and var["query"] == ds["type"]
    assert var["current"]["value"] == ds["uid"]


def _datasource_uids(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and "uid" in ds:
            yield ds["uid"]
        for v in node.values():
            yield from _datasource_uids(v)
    elif isinstance(node, list):
        for v in node:
            yield from _datasource_uids(v)


# ---- the deploy docs name what exists ------------------------------------------------

DEPLOY_DOCS = ("deploy/k8s/README.md", "docs/deploy.md")
REPO_PATH = re.compile(r"(?<![\w/.-])(?:\./)?((?:weights|deploy|docs|server|tests|bench|tools|pipelines)/[\w./*-]*)")


def named_paths(text: str) -> set[str]:
    """Repository paths a text names (`./weights/default/.` -> `weights/default`)."""
    return {m.rstrip("/.") for m in REPO_PATH.findall(text)}


def test_paths_named_in_the_deploy_docs_exist() -> None:
    """deploy/k8s/README.md once told operators to copy `./weights/shapes/.`, which did not exist."""
    assert named_paths("copy ./weights/shapes/. and docs/deploy.md.") == {"weights/shapes", "docs/deploy.md"}
    missing = {(doc, path) for doc in DEPLOY_DOCS for path in named_paths((ROOT / doc).read_text())
               if not any(ROOT.glob(path))}
    assert missing == set()
