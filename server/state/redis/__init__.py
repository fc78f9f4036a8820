"""The shared state in Redis: the link (connection, health, pub/sub), the job store, the
URL store, the cancels and the global queue."""
