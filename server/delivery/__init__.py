"""How a run reaches its client: progress and partial images, following a job into its
record, the images response of a result."""
