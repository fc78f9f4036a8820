"""OpenAI's `usage` from the text encoder's own token counts, and the notice of a truncated
prompt, for any pipeline (`StagedPipeline`: our CLIP, or a snapshot's transformers CLIP).

Input tokens are what the frozen CLIP encodes: each prompt's BPE tokens with its start and
end tokens (at most the text encoder's context), and each input image's patches plus its
class token. Nothing is generated token by token, so `output_tokens` is 0.
"""

from __future__ import annotations

from typing import Optional, Sequence

from pipelines.unclip import StagedPipeline

from .schemas import TokenDetails, Usage


def usage(pipe: StagedPipeline, texts: Sequence[str], images: int) -> Usage:
    """The usage of a request whose CLIP encodes `texts` and `images` input images."""
    text = sum(min(count, pipe.context_length) for count in pipe.count_tokens(texts))
    image = images * pipe.image_tokens
    return Usage(input_tokens=text + image, input_tokens_details=TokenDetails(text_tokens=text, image_tokens=image),
                 output_tokens=0, total_tokens=text + image)


def truncation(pipe: StagedPipeline, texts: Sequence[str]) -> Optional[str]:
    """None, or what was cut: "kept 24 of 31 tokens" for the first prompt too long for the
    text encoder's context (it sees the start of the prompt only)."""
    context = pipe.context_length
    for count in pipe.count_tokens(texts):
        if count > context:
            return f"kept {context} of {count} tokens"
    return None
