"""The scheduling policy: which tracks go into the next batched model call.

Every unfinished track of every running job is an `Entry`. Entries are compatible when
they share a *group*: the same stage and the same latent and conditioning shapes (so their
tensors concatenate into one batch). A generation's decoder track, a variation's inversion
track, an inpainting track and an interpolation frame are all decoder-stage tracks of the
same shape, so they share batches; the stage itself handles each row's sampler, timestep,
guidance and eta.

Policy: least recently served first. Each entry carries the engine tick (model-call count)
at which it last ran or, for a new one, joined. The next batch is the group of the entry
that has waited longest (ties: the older job, then the track's position in its request),
filled with that group's entries in the same order, up to `max_batch`.

Why: every waiting track is stepped within a bounded number of calls (once every group
ahead of it has run once, at most ceil(waiting / max_batch) calls per group), so a long job
is never starved by a stream of new ones and a new job is never stuck behind a long one;
and each call takes *every* compatible waiting track, so batches are as full as the mix of
stages allows. Within a job whose request has more tracks than `max_batch`, the tracks
take turns and stay within one step of each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pipelines.sampling import Track


@dataclass(eq=False)
class Entry:
    """One unfinished track of a running job in the stage `stage`."""

    job: Any  # the owning server.jobs.Job (has .seq)
    track: Track
    stage: str
    key: tuple  # group_key(stage, track)
    tick: int  # engine tick of the last call that ran this track (or when it joined)
    pos: int  # index of the track in its stage request


def waited(entry: Entry) -> tuple[int, int, int]:
    """Sort key: longest waiting first, then the older job, then request order."""
    return entry.tick, entry.job.seq, entry.pos


def pick(entries: Sequence[Entry], max_batch: int) -> list[Entry]:
    """The next batch: up to max_batch entries of the group of the longest-waiting entry."""
    if not entries:
        return []
    key = min(entries, key=waited).key
    return sorted((e for e in entries if e.key == key), key=waited)[:max_batch]
