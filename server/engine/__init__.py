"""The engine: one thread that runs every job's model calls in step batches (core), the
scheduling policy, the job, its statistics and the per-stage batch caps."""
