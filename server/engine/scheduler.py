"""The scheduling policy: which tracks go into the next batched model call, and which
queued job starts next.

Every unfinished track of every running job is an `Entry`. Entries are compatible when
they share a *group*: the same stage and the same latent and conditioning shapes (so their
tensors concatenate into one batch). A generation's decoder track, a variation's inversion
track, an inpainting track and an interpolation frame are all decoder-stage tracks of the
same shape, so they share batches; the stage itself handles each row's sampler, timestep,
guidance and eta.

Policy: earliest virtual finish first. A job's virtual finish is

    arrival + remaining / AGING

where `remaining` is its estimated run time alone (measured seconds per track-step of each
stage times its track-steps, see `Engine.estimate`) less its share of the model calls it
was in, and `arrival` its submission time (seconds). The next batch is the group of the
entry whose job finishes first virtually (ties: the older job, then the track that ran
least recently, then request order), filled with that group's entries in the same order,
up to the stage's batch cap (`caps`, measured per stage: server/engine/batch_caps.py). The next
job to start is the queued one that finishes first virtually.

Why:
- Shortest remaining work first is what minimises mean latency: a 32 px generation sent
  behind a ten-image 256 px one runs at once instead of sharing turns with it, and
  among equal jobs the one that has started stays ahead (its remaining work shrinks as
  it runs), so a burst completes one job after another instead of all at the end.
- Aging bounds the wait. A job's virtual finish never grows (its remaining work only
  shrinks), and a job that arrives after J's virtual finish V_J <= a_J + C_J / AGING
  (C_J: J's estimated cost) has a virtual finish after V_J. So J is only ever overtaken
  by jobs that arrived less than C_J / AGING seconds after it: with AGING = 1, a job
  of C seconds waits at most for the work that arrived within C seconds of it (and for
  what was already there), however long a stream of small jobs behind it.
- Batches stay full: a call takes every compatible entry up to the cap, whoever's it is,
  so tracks of other jobs ride along with the first job's. Rows are computed
  independently, so which tracks share a call never changes a result (batch invariance).
- Jobs without an estimate (`cost_s` None: before the stages were measured) count as
  having no work left: among themselves, first come first served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Protocol, Sequence

from pipelines.sampling import Track

AGING = 1.0  # seconds of waiting worth one second of remaining work


class Scheduled(Protocol):
    """What the policy reads of a job (server.jobs.Job)."""

    seq: int  # submission order
    submitted: float  # arrival, monotonic seconds

    def remaining_s(self) -> Optional[float]:
        """Estimated seconds of work left (None: no estimate)."""


@dataclass(eq=False)
class Entry:
    """One unfinished track of a running job in the stage `stage`."""

    job: Any  # the owning server.jobs.Job (a `Scheduled`)
    track: Track
    stage: str
    key: tuple  # group_key(stage, track)
    tick: int  # engine tick of the last call that ran this track (or when it joined)
    pos: int  # index of the track in its stage request


def virtual_finish(job: Scheduled) -> float:
    """arrival + remaining / AGING, in the engine's monotonic seconds."""
    return job.submitted + (job.remaining_s() or 0.0) / AGING


def order(entry: Entry) -> tuple[float, int, int, int]:
    """Sort key: the job's virtual finish, the older job, the least recently run track,
    request order."""
    return virtual_finish(entry.job), entry.job.seq, entry.tick, entry.pos


def pick(entries: Sequence[Entry], caps: Mapping[str, int]) -> list[Entry]:
    """The next batch: up to caps[stage] entries of the first entry's group, in order."""
    if not entries:
        return []
    ranked = sorted(entries, key=order)
    key = ranked[0].key
    return [e for e in ranked if e.key == key][:caps[key[0]]]


def start_key(job: Scheduled) -> tuple[float, int]:
    """Sort key of queued jobs: the first to finish virtually, then the older."""
    return virtual_finish(job), job.seq


def next_job(queued: Sequence[Scheduled]) -> Optional[Scheduled]:
    """The queued job to start next (None if none waits)."""
    return min(queued, key=start_key, default=None)
