"""Server settings, read from the environment (prefix `UNCLIP_`, e.g. `UNCLIP_PORT=8080`) and, by
`python -m server` only, from the command line (`--port 8080`; a flag beats its variable).

This module imports no torch (only `torch_device` and `torch_dtype` do, when called), so
that `python -m server --help` and a bad flag answer at once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Sequence

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, CliSettingsSource, SettingsConfigDict

from pipelines.dtypes import DtypeName

from .jobs.webhooks import parse_hosts, secret_key
from .logs import LogFormat
from .state.redis.address import REDIS_SCHEMES, is_sentinel, parse_sentinel_url

if TYPE_CHECKING:
    import torch

PROG = "python -m server"


class Settings(BaseSettings):
    """Every knob of the server. Sizes are bytes, durations seconds."""

    model_config = SettingsConfigDict(env_prefix="UNCLIP_", extra="ignore", protected_namespaces=())

    model_dir: Path = Field(Path("weights/default"), description="model folder: ours (stack.json + safetensors), a "
                            "Karlo snapshot, or Kandinsky 2.2 snapshots as prior/, decoder/ (and decoder-inpaint/), "
                            "as downloaded from the Hub")
    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 to listen on every interface)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    api_keys: str = Field("", description="comma-separated bearer keys; empty: no authentication")
    files_require_key: bool = Field(False, description="with api_keys: image URLs (/v1/files/images/) need a key "
                                    "too; default: their unguessable id is the credential")
    public_url: Optional[str] = Field(None, description="base of image URLs; default: the request's own base URL")
    max_batch: int = Field(8, ge=1, description="most samples in one batched model call")
    batch_profile: Literal["measure", "off"] = Field(
        "measure", description="measure: cap each stage's batch where its samples/s is best (timed while idle "
        "once ready, then cached); off: every stage batches up to max_batch")
    stage_batch: str = Field("", description="per-stage batch caps that win over the measurement, e.g. "
                             "'upsampler.1=1,prior=8'")
    batch_profile_dir: Optional[Path] = Field(Path("~/.cache/unclip"), description="where measured batch "
                                              "profiles are cached (keyed by model, device, dtype, torch); "
                                              "empty: measure at every start")
    queue_size: int = Field(32, ge=1, description="most jobs waiting; beyond it requests get 429")
    default_deadline_s: float = Field(600.0, gt=0, description="a job not finished by then fails with 504")
    max_deadline_s: float = Field(1800.0, gt=0, description="cap of any job's deadline")
    url_ttl_s: float = Field(3600.0, gt=0, description="how long a response_format=url image is served")
    url_store_max_bytes: int = Field(512 * 2**20, ge=1, description="memory bound of the URL image store")
    job_ttl_s: float = Field(3600.0, gt=0, description="how long a finished async job (Prefer: respond-async) "
                             "and its result are kept; then 404")
    max_jobs_kept: int = Field(1000, ge=1, description="most finished async jobs kept (the oldest go first)")
    job_store_max_bytes: int = Field(256 * 2**20, ge=1, description="memory bound of the finished async jobs' "
                                     "results and events (the oldest go first)")
    redis_url: Optional[str] = Field(None, description="Redis shared by every replica (redis://[:password@]host:"
                                     "6379/0, rediss://, unix://, or the master Sentinel names: redis+sentinel://"
                                     "host:26379[,host:26379]/service[/db]): async jobs, their events, url images "
                                     "and cancels; empty: all in this process")
    redis_replicas: int = Field(0, ge=0, description="with Redis: each write counts once this many Redis replicas "
                                "hold it (WAIT, at most 1 s, else 503 store_unavailable), so a failover to one "
                                "of them loses no accepted job; 0: as soon as the master has it")
    lease_s: float = Field(10.0, gt=0, description="with Redis: how long a replica's claim on a job lasts "
                           "unrenewed; a replica gone that long has its jobs run elsewhere")
    webhook_hosts: str = Field("", description="comma-separated hosts that async jobs' webhook_url may name; "
                               "empty: every webhook_url is refused")
    webhook_secret: Optional[str] = Field(None, description="Standard Webhooks signing secret, 'whsec_' + base64 "
                                          "of 24-64 random bytes; needed with webhook_hosts")
    webhook_attempts: int = Field(5, ge=1, le=20, description="tries of one webhook delivery")
    webhook_backoff_s: float = Field(5.0, gt=0, description="wait before a webhook's first retry, doubled for "
                                     "each next one")
    max_upload_bytes: int = Field(4 * 2**20, ge=1, description="per uploaded image (OpenAI: less than 4 MB)")
    max_request_body_bytes: int = Field(20 * 2**20, ge=1, description="whole request body; beyond it 413")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="decoded pixel limit of an upload (uploads are "
                                  "reduced to the model's size once decoded; two decode at a time)")
    max_steps: int = Field(250, ge=1, le=1000, description="most diffusion steps a request may ask of a stage")
    max_best_of: int = Field(8, ge=1, le=16, description="most prior samples per image (best_of) a request may ask")
    admission_check: bool = Field(True, description="refuse at once (400) a request whose estimated run time, "
                                  "from the measured step times, exceeds the deadline")
    device: Literal["auto", "cpu", "cuda"] = Field("auto",
                                                  description="where the model runs; auto: CUDA when available")
    dtype: DtypeName = Field(
        "auto", description="the networks' dtype; auto: float16 on CUDA, on a CPU bfloat16 where it has "
                            "native bf16 (AVX512-BF16 or AMX), else float32")
    warmup: bool = Field(True, description="run one tiny generation before reporting ready")
    channels_last: bool = Field(True, description="run the UNets in channels-last memory format (faster on CPU "
                                "and CUDA)")
    drain_grace_s: float = Field(30.0, ge=0, description="SIGTERM: how long running jobs may finish")
    c2pa_cert: Optional[Path] = Field(None, description="PEM certificate chain (signer first) that signs a C2PA "
                                      "manifest into every image (ES256; docs/trust.md); empty: no manifests")
    c2pa_key: Optional[Path] = Field(None, description="PEM private key of c2pa_cert")
    c2pa_tsa_url: Optional[str] = Field(None, description="RFC 3161 timestamp authority that countersigns the "
                                        "C2PA manifests; empty: none")
    watermark: bool = Field(True, description="add an invisible watermark to every image's pixels, found by "
                            "`python -m tools.watermark` after re-encoding, resizing or cropping (docs/trust.md)")
    watermark_key: str = Field("unclip-server", min_length=1, description="the watermark's key: only it finds the "
                               "mark; the default is public (anyone can check an image), a secret one keeps "
                               "others from removing or forging the mark")
    moderation_concepts: Optional[Path] = Field(None, description="file of blocked concepts, one text per line "
                                                "(optionally a tab and a cosine threshold); requests close to one "
                                                "get 400 moderation_blocked (docs/trust.md); empty: off")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="log level of the server and uvicorn")
    log_format: LogFormat = Field("text", description="text: lines for people; json: one JSON object a line "
                                  "(time, level, logger, message, request_id) for log collectors, uvicorn's "
                                  "access lines too")

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: Optional[str]) -> Optional[str]:
        if value:
            secret_key(value)
        return value or None

    @model_validator(mode="after")
    def _webhooks_signed(self) -> Settings:
        if self.webhook_host_set and not self.webhook_secret:
            raise ValueError("webhook_hosts needs webhook_secret (whsec_...) to sign the webhooks")
        return self

    @property
    def webhook_host_set(self) -> frozenset[str]:
        """The hosts webhooks may go to (empty: none)."""
        return parse_hosts(self.webhook_hosts)

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str) or not value.strip().startswith(REDIS_SCHEMES):
            raise ValueError(f"a Redis URL starts with {' or '.join(REDIS_SCHEMES)}")
        if is_sentinel(value.strip()):
            parse_sentinel_url(value.strip())  # a malformed one is refused at start, saying why
        return value.strip()

    @field_validator("stage_batch")
    @classmethod
    def _stage_batch(cls, value: str) -> str:
        parse_overrides(value)
        return value

    @field_validator("batch_profile_dir", "c2pa_cert", "c2pa_key", "c2pa_tsa_url", "moderation_concepts",
                     mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def stage_caps(self) -> dict[str, int]:
        """The `stage_batch` overrides, by stage."""
        return parse_overrides(self.stage_batch)

    @classmethod
    def from_cli(cls, argv: Optional[Sequence[str]] = None) -> Settings:
        """Settings from command-line flags (default: sys.argv[1:]) over the environment over defaults.

        Like argparse, `--help` prints the help and exits 0; an unknown flag or a bad value (from a
        flag or a variable) prints the usage and an error on stderr and exits 2.
        """
        source = CliSettingsSource(cls, cli_prog_name=PROG, cli_kebab_case=True, cli_show_env_vars=True)
        args = list(sys.argv[1:] if argv is None else argv)
        try:
            return CliApp.run(cls, cli_args=args, cli_settings_source=source)
        except ValidationError as err:
            source.root_parser.error(_describe(err, cls.model_config["env_prefix"]))

    @property
    def keys(self) -> tuple[str, ...]:
        """The configured API keys (empty: authentication off)."""
        return tuple(k.strip() for k in self.api_keys.split(",") if k.strip())

    def torch_device(self) -> str:
        """The device to load the model on ("auto": CUDA when available)."""
        if self.device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def torch_dtype(self) -> Optional[torch.dtype]:
        """The networks' dtype; None lets the loader choose (`default_dtype`)."""
        from pipelines.checkpoints import dtype_named

        return dtype_named(self.dtype)


def parse_overrides(text: str) -> dict[str, int]:
    """`stage_batch`'s format: 'upsampler.1=1, prior=8' -> {'upsampler.1': 1, 'prior': 8};
    ValueError when malformed (server/engine/batch_caps.py checks the stages and caps)."""
    caps: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        stage, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"stage_batch: expected 'stage=N' with N >= 1, got {item!r}")
        caps[stage.strip()] = int(value)
    return caps


def _describe(err: ValidationError, env_prefix: str) -> str:
    """A ValidationError as one line per error, naming the field's flag and variable."""
    lines = []
    for e in err.errors():
        name = str(e["loc"][0]) if e["loc"] else ""
        where = f"--{name.replace('_', '-')} / {env_prefix}{name.upper()}" if name else "settings"
        lines.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)
