"""Server settings, read from the environment (prefix `UNCLIP_`, e.g. `UNCLIP_PORT=8080`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the server. Sizes are bytes, durations seconds."""

    model_config = SettingsConfigDict(env_prefix="UNCLIP_", extra="ignore", protected_namespaces=())

    model_dir: Path = Field(Path("weights/default"), description="model directory (stack.json + safetensors)")
    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 to listen on every interface)")
    port: int = Field(8000, ge=0, le=65535)
    api_keys: str = Field("", description="comma-separated bearer keys; empty: no authentication")
    public_url: Optional[str] = Field(None, description="base of image URLs; default: the request's own base URL")
    max_batch: int = Field(8, ge=1, description="most samples in one batched model call")
    queue_size: int = Field(32, ge=1, description="most jobs waiting; beyond it requests get 429")
    default_deadline_s: float = Field(600.0, gt=0, description="a job not finished by then fails with 504")
    max_deadline_s: float = Field(1800.0, gt=0)
    url_ttl_s: float = Field(3600.0, gt=0, description="how long a response_format=url image is served")
    url_store_max_bytes: int = Field(512 * 2**20, ge=1, description="memory bound of the URL image store")
    max_upload_bytes: int = Field(4 * 2**20, ge=1, description="per uploaded image (OpenAI: less than 4 MB)")
    max_request_body_bytes: int = Field(20 * 2**20, ge=1, description="whole request body; beyond it 413")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="decoded pixel limit of an upload")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    warmup: bool = Field(True, description="run one tiny generation before reporting ready")
    drain_grace_s: float = Field(30.0, ge=0, description="SIGTERM: how long running jobs may finish")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @property
    def keys(self) -> tuple[str, ...]:
        """The configured API keys (empty: authentication off)."""
        return tuple(k.strip() for k in self.api_keys.split(",") if k.strip())

    def torch_device(self) -> str:
        """The device to load the model on ("auto": CUDA when available)."""
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def torch_dtype(self) -> Optional[torch.dtype]:
        """The weights' dtype; None lets the loader choose (fp16 on CUDA, fp32 on CPU)."""
        return None if self.dtype == "auto" else getattr(torch, self.dtype)
