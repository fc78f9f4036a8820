"""The command lines: `python -m server` (every setting a flag, flag over variable over default,
argparse's exit statuses) run as real processes, `Settings.from_cli` in process, and the
`--help` / unknown-flag behaviour of `python -m tools.convert` and `python -m tools.train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import httpx
import pytest

from server.settings import Settings
from tools import convert
from tools.train import __main__ as train

from .conftest import REPO, ServerProc, free_port, wait_ready

TIMEOUT_S = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any UNCLIP_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNCLIP_")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def run_server_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m server ARGS` that is expected to exit by itself (help, usage errors)."""
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def flag(name: str) -> str:
    """The command-line flag of a Settings field."""
    return "--" + name.replace("_", "-")


def test_help_lists_every_flag_with_its_variable() -> None:
    done = run_server_cli("--help")
    assert done.returncode == 0, done.stderr
    assert "--port" in done.stdout and "UNCLIP_PORT" in done.stdout
    for name in Settings.model_fields:
        assert flag(name) in done.stdout and f"UNCLIP_{name.upper()}" in done.stdout, name
    assert "(default: 8000)" in done.stdout


def test_flags_are_parsed_before_torch_is_imported() -> None:
    """`--help` and a bad flag answer without importing the model's stack (torch alone takes
    seconds to import), so both are instant."""
    probe = ("import sys\nfrom server.__main__ import main\nfor args in (['--help'], ['--port', 'x']):\n"
             "    try:\n        main(args)\n    except SystemExit as done:\n        print('exit', done.code)\n"
             "print('torch' in sys.modules, 'diffusers' in sys.modules, 'uvicorn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.stdout.splitlines()[-3:] == ["exit 0", "exit 2", "False False False"], done.stderr


@pytest.mark.parametrize("args, expected", [(["--no-such-flag"], "--no-such-flag"),
                                            (["--port", "notanumber"], "--port"),
                                            (["--max-batch", "0"], "--max-batch")])
def test_bad_flag_or_value_exits_2(args: list[str], expected: str) -> None:
    done = run_server_cli(*args)
    assert done.returncode == 2
    assert "error" in done.stderr and expected in done.stderr


# ---- a real server on the port of the flag ---------------------------------------------

@pytest.fixture
def start_cli_server(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProc]]:
    """Starts `python -m server --port P ...` (a free P, the tiny model); stops it at the end."""
    started: list[ServerProc] = []

    def start(env: Optional[dict[str, str]] = None) -> ServerProc:
        port = free_port()
        log_path = tmp_path / f"server-{port}.log"
        args = ["--port", str(port), "--host", "127.0.0.1", "--model-dir", str(tiny_model_dir),
                "--device", "cpu", "--warmup", "false"]
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "server", *args], cwd=REPO, env=clean_env(**(env or {})),
                                    stdout=out, stderr=subprocess.STDOUT)
        started.append(ServerProc(proc, port, log_path))
        return started[-1]

    try:
        yield start
    finally:
        for server in started:
            server.stop(timeout=TIMEOUT_S)


def refuses_connections(port: int) -> bool:
    """Whether nothing serves HTTP on 127.0.0.1:port."""
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_serves_on_the_port_of_the_flag(start_cli_server: Callable[..., ServerProc]) -> None:
    server = start_cli_server()
    wait_ready(server, TIMEOUT_S, path="/health")
    assert server.stop(timeout=TIMEOUT_S) == 0


def test_flag_beats_variable(start_cli_server: Callable[..., ServerProc]) -> None:
    env_port = free_port()
    server = start_cli_server(env={"UNCLIP_PORT": str(env_port)})
    wait_ready(server, TIMEOUT_S, path="/health")
    assert env_port != server.port and refuses_connections(env_port)
    assert server.stop(timeout=TIMEOUT_S) == 0


def test_json_logs_name_each_request(start_cli_server: Callable[..., ServerProc]) -> None:
    """UNCLIP_LOG_FORMAT=json: every line the server writes is one JSON object; a request's
    access line carries its x-request-id, method, path and status; what no request logs
    has request_id null."""
    server = start_cli_server(env={"UNCLIP_LOG_FORMAT": "json"})
    wait_ready(server, TIMEOUT_S)
    r = httpx.post(server.url("/v1/images/generations"), json={"prompt": "x", "n": 0},
                   headers={"x-request-id": "req-logged-1"}, timeout=TIMEOUT_S)
    assert r.status_code == 400
    assert server.stop(timeout=TIMEOUT_S) == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message", "request_id"} <= set(line) for line in lines), lines
    access = [(line["logger"], line["method"], line["path"], line["status"]) for line in lines
              if line["request_id"] == "req-logged-1"]
    assert access == [("uvicorn.access", "POST", "/v1/images/generations", 400)]
    ready = next(line for line in lines if line["message"].startswith("ready: model"))
    assert (ready["level"], ready["logger"], ready["request_id"]) == ("INFO", "server.runtime", None)


# ---- Settings.from_cli in process -------------------------------------------------------

@pytest.fixture
def no_unclip_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No UNCLIP_* variable from the calling environment."""
    for name in [k for k in os.environ if k.startswith("UNCLIP_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_from_cli_parses_flags(no_unclip_env: pytest.MonkeyPatch) -> None:
    settings = Settings.from_cli(["--max-batch", "3", "--warmup", "false", "--model-dir", "m"])
    assert (settings.max_batch, settings.warmup, settings.model_dir) == (3, False, Path("m"))
    assert settings.port == Settings().port == 8000


def test_from_cli_variable_then_flag(no_unclip_env: pytest.MonkeyPatch) -> None:
    no_unclip_env.setenv("UNCLIP_MAX_BATCH", "5")
    assert Settings.from_cli([]).max_batch == 5
    assert Settings.from_cli(["--max-batch", "3"]).max_batch == 3


def test_settings_in_code_ignore_sys_argv(no_unclip_env: pytest.MonkeyPatch) -> None:
    no_unclip_env.setattr(sys, "argv", ["server", "--max-batch", "3", "--no-such-flag"])
    assert Settings().max_batch == 8
    assert Settings(max_batch=2).max_batch == 2


def test_from_cli_bad_value_exits_2(no_unclip_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    no_unclip_env.setenv("UNCLIP_QUEUE_SIZE", "many")
    with pytest.raises(SystemExit) as exc:
        Settings.from_cli([])
    assert exc.value.code == 2
    assert "--queue-size / UNCLIP_QUEUE_SIZE" in capsys.readouterr().err


# ---- tools.convert and tools.train ------------------------------------------------------

TOOLS: list[tuple[Callable[[Sequence[str]], int], list[str]]] = [
    (convert.main, []), (convert.main, ["karlo"]), (convert.main, ["random"]),
    (train.main, []), (train.main, ["status"]),
]
TOOL_IDS = ["convert", "convert-karlo", "convert-random", "train", "train-status"]


def exit_code(main: Callable[[Sequence[str]], int], argv: list[str]) -> int:
    """The status a tool's argparse exits with on argv (fails if it does not exit)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


@pytest.mark.parametrize("main, command", TOOLS, ids=TOOL_IDS)
def test_tool_help_exits_0(main: Callable[[Sequence[str]], int], command: list[str],
                           capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(main, [*command, "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m tools.")


@pytest.mark.parametrize("main, command", TOOLS, ids=TOOL_IDS)
def test_tool_unknown_flag_exits_2(main: Callable[[Sequence[str]], int], command: list[str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(main, [*command, "--no-such-flag"]) == 2
    assert "error" in capsys.readouterr().err
