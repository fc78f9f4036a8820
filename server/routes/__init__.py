"""HTTP routes, one module per endpoint family, plus what they share: `common` (parse,
target, serve), `bodies` (JSON and multipart bodies), `running` (engine jobs), `stream` (SSE)."""
