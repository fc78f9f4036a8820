"""HTTP routes, one module per endpoint family, plus shared helpers (jobs, forms, stream)."""
