"""The HTTP server: FastAPI app, settings, routes, engine and metrics."""
