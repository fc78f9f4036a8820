"""Request and response models of the API.

Requests are validated with these models whether they arrive as JSON (generations) or as
multipart text fields (numbers as text: pydantic's lax mode parses "2" as 2). Unknown
fields are refused; fields that only other OpenAI image models understand are refused
with their own message (see `UNSUPPORTED`).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from pipelines.operations import DEFAULTS, Mode

MAX_PROMPT = 1000
MAX_N = 10
MAX_FRAMES = 16
MAX_SEED = 2**62

# Fields of OpenAI's image models that this model cannot honour, and what to do instead.
UNSUPPORTED = {
    "style": "DALL-E 3's style has no counterpart here; describe the look in the prompt",
    "input_fidelity": "the kept pixels of an edit are always kept exactly; use 'resample' for a smoother seam",
    "complexity": "there is no planning stage here; use 'quality' or the per-stage step fields",
    "markup": "markup images are not supported; send the area to edit as the mask's transparent pixels",
    "svg": "this model draws raster images only; use output_format png, jpeg, webp or gif",
}
Quality = Literal["low", "medium", "high", "auto", "standard", "hd"]
OutputFormat = Literal["png", "jpeg", "webp", "gif"]


class Params(BaseModel):
    """Base of every request model: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class PriorSampling(Params):
    """Extension fields of the prior stage."""

    prior_steps: Optional[int] = Field(None, ge=1, le=1000, description="prior diffusion steps")
    prior_guidance: Optional[float] = Field(None, ge=0, le=100, description="prior classifier-free guidance scale")
    best_of: Optional[int] = Field(None, ge=1, le=16,
                                   description="prior samples per image; the one closest to the text is kept")


class DecoderSampling(Params):
    """Extension fields of the decoder and upsampler stages."""

    decoder_steps: Optional[int] = Field(None, ge=1, le=1000, description="decoder diffusion (and inversion) steps")
    decoder_guidance: Optional[float] = Field(None, ge=0, le=100, description="decoder classifier-free guidance scale")
    upsampler_steps: Optional[int] = Field(None, ge=1, le=1000, description="steps of every upsampler stage")


class Output(DecoderSampling):
    """Fields about the output shared by every image endpoint."""

    output_format: Optional[OutputFormat] = Field(None, description="png (default), jpeg, webp, or gif (animated "
                                                  "frames: generations, interpolations, text diffs)")
    output_compression: Optional[int] = Field(None, ge=0, le=100, description="jpeg and webp: quality 0-100 "
                                              "(default 100); lower is smaller")
    background: Optional[Literal["transparent", "opaque", "auto"]] = Field(
        None, description="the images are opaque: 'opaque' and 'auto' are accepted, 'transparent' is refused")
    quality: Optional[Quality] = Field(None, description="step preset: low, medium, high; auto = medium; "
                                       "standard = medium, hd = high (deprecated); explicit steps win")
    moderation: Optional[Literal["low", "auto"]] = Field(None, description="with moderation concepts "
                                                         "configured, 'low' raises every threshold (less strict)")

    size: Optional[str] = Field(None, description="'WxH', one the model makes (GET /v1/models lists them, and "
                                "says whether other sizes are allowed); default: the model's ('auto' too)")
    response_format: Optional[Literal["url", "b64_json"]] = Field(None, description="default 'url'")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="image i uses seed + i; default random")
    model: Optional[str] = Field(None, description="this model's name, 'unclip', or an OpenAI image model name")
    user: Optional[str] = Field(None, max_length=256)
    safety_identifier: Optional[str] = Field(None, max_length=256)
    webhook_url: Optional[str] = Field(None, max_length=2048, description="with `Prefer: respond-async`: POSTed "
                                       "a signed event when the job ends (Standard Webhooks; hosts the server "
                                       "allows only)")


class NegativePrompt(Params):
    """Extension field of every endpoint that takes a prompt."""

    negative_prompt: Optional[str] = Field(None, max_length=MAX_PROMPT, description="what not to draw: the "
                                           "unconditional branch of guidance uses its encoding instead of the "
                                           "empty caption's")


class GenerationRequest(Output, PriorSampling, NegativePrompt):
    """POST /v1/images/generations (JSON)."""

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT)
    n: int = Field(1, ge=1, le=MAX_N, description="how many images")
    stream: Optional[bool] = Field(None, description="Server-Sent Events with per-step progress")
    partial_images: Optional[int] = Field(None, ge=0, le=3, description="stream: intermediate images to send")
    frame_count: Optional[int] = Field(None, ge=2, le=MAX_FRAMES, description="gif: frames of a walk through the "
                                       "prompt's image embeddings (default 9)")
    frame_duration_ms: Optional[int] = Field(None, ge=10, le=655_350, description="gif: delay per frame "
                                             "(default 200)")


class EditRequest(Output, PriorSampling, NegativePrompt):
    """POST /v1/images/edits (multipart; files `image`/`image[]` and optional `mask`)."""

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT)
    n: int = Field(1, ge=1, le=MAX_N, description="how many images")
    stream: Optional[bool] = Field(None, description="Server-Sent Events with per-step progress")
    partial_images: Optional[int] = Field(None, ge=0, le=3, description="stream: intermediate images to send")
    resample: Optional[int] = Field(None, ge=1, le=10, description="RePaint-style repeats of every step "
                                    f"(1: none; default {DEFAULTS.resample})")


class VariationRequest(Output):
    """POST /v1/images/variations (multipart; file `image`)."""

    n: int = Field(1, ge=1, le=MAX_N, description="how many images")
    eta: Optional[float] = Field(None, ge=0, le=1, description="DDIM eta: 0 reconstructs the image, larger varies more "
                                 f"(default {DEFAULTS.eta})")


class InterpolationRequest(Output, PriorSampling, NegativePrompt):
    """POST /v1/images/interpolations (multipart): files `image[]` x2, or `prompt[]` x2."""

    prompt: Optional[list[str]] = Field(None, description="two prompts (form fields `prompt[]` or `prompt`, twice)")
    frames: Optional[int] = Field(None, ge=2, le=MAX_FRAMES,
                                  description=f"evenly spaced thetas from 0 to 1 (default {DEFAULTS.frames})")
    thetas: Optional[list[float]] = Field(None, min_length=1, max_length=MAX_FRAMES,
                                          description="explicit thetas in [0, 1]")
    mode: Optional[Mode] = Field(None, description=f"x_T slerped between the inputs or fixed (default {DEFAULTS.mode})")
    frame_duration_ms: Optional[int] = Field(None, ge=10, le=655_350, description="gif: delay per frame (default 200)")


class TextDiffRequest(Output, NegativePrompt):
    """POST /v1/images/text-diffs (multipart; file `image`)."""

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT, description="the target description")
    source_prompt: str = Field("", max_length=MAX_PROMPT, description="a description of the current image")
    frames: Optional[int] = Field(None, ge=1, le=MAX_FRAMES, description=f"default {DEFAULTS.frames}")
    max_theta: Optional[float] = Field(None, ge=0, le=1,
                                       description=f"the last frame's theta (default {DEFAULTS.max_theta})")
    frame_duration_ms: Optional[int] = Field(None, ge=10, le=655_350, description="gif: delay per frame (default 200)")


class ImageData(BaseModel):
    """One image of a response: a URL or base64 PNG (and theta for interpolations, text diffs)."""

    url: Optional[str] = None
    b64_json: Optional[str] = None
    revised_prompt: Optional[str] = None
    theta: Optional[float] = None


class TokenDetails(BaseModel):
    text_tokens: int = 0
    image_tokens: int = 0


class Usage(BaseModel):
    """OpenAI's usage: input tokens are CLIP's (the prompt's BPE tokens with start and end,
    an input image's patches plus its class token); no tokens are generated."""

    input_tokens: int
    input_tokens_details: TokenDetails
    output_tokens: int = 0
    total_tokens: int


class ImagesResponse(BaseModel):
    """The response of every image endpoint (OpenAI's fields)."""

    created: int
    data: list[ImageData]
    size: Optional[str] = None
    quality: Optional[Literal["low", "medium", "high"]] = None
    output_format: Optional[OutputFormat] = None
    background: Optional[Literal["opaque"]] = None
    usage: Optional[Usage] = None


class ModelWorld(BaseModel):
    """What the model draws (extension; from its directory's world.json, server/world.py)."""

    name: str = Field(description="the world its training data came from, e.g. 'shapes'")
    description: str = Field(description="what it draws, for people")
    examples: list[str] = Field(description="prompts it knows")


class ModelCard(BaseModel):
    """An entry of GET /v1/models (every field after `owned_by` is an extension)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "unclip-server"
    family: Optional[str] = Field(None, description="the layout served: unclip, karlo-snapshot, kandinsky-2.2")
    sizes: list[str] = Field(default_factory=list, description="the sizes offered, the default among them")
    default_size: Optional[str] = Field(None, description="the size of a request that names none")
    size_rule: Optional[str] = Field(None, description="which sizes the model makes, in words (some models "
                                     "make any WxH on a grid, not only those listed)")
    stages: dict[str, list[str]] = Field(default_factory=dict, description="the stages a generation at each "
                                         "listed size runs, in order")
    suggested_size: Optional[str] = Field(None, description="the smallest size with the model's full detail")
    world: Optional[ModelWorld] = None


class ModelCaption(BaseModel):
    """GET /v1/models/{id}/random-caption (extension): a random caption of the model's world."""

    object: Literal["model.caption"] = "model.caption"
    caption: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """Every error: OpenAI's shape."""

    error: ErrorDetail


class ImageJob(BaseModel):
    """An async job (`Prefer: respond-async`); times are unix seconds."""

    id: str
    object: Literal["image.job"] = "image.job"
    operation: Literal["generation", "edit", "variation", "interpolation", "text_diff"]
    status: Literal["queued", "in_progress", "completed", "failed", "cancelled", "expired"]
    progress: float = Field(..., ge=0, le=1)
    queue_position: Optional[int] = Field(None, description="while queued: jobs ahead of it (0: next to start)")
    created_at: int
    started_at: Optional[int] = None
    completed_at: Optional[int] = None
    expires_at: Optional[int] = Field(None, description="once finished: when the job and its result are gone")
    result: Optional[ImagesResponse] = Field(None, description="completed: the synchronous call's response")
    error: Optional[ErrorDetail] = Field(None, description="failed or expired: what went wrong")
    replica: Optional[str] = Field(None, description="with several replicas: the one that ran it")


class ImageJobList(BaseModel):
    """GET /v1/images/jobs: newest first."""

    object: Literal["list"] = "list"
    data: list[ImageJob]
    first_id: Optional[str] = None
    last_id: Optional[str] = None
    has_more: bool


class ImageJobDeleted(BaseModel):
    """DELETE /v1/images/jobs/{id}."""

    id: str
    object: Literal["image.job.deleted"] = "image.job.deleted"
    deleted: bool = True
