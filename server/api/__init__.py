"""HTTP routes, one module per endpoint family, plus what they share: `common` (parse,
target, serve), `bodies` and `multipart` (JSON and form bodies), `admission` (what a request
may cost), `running` (engine jobs), `stream` (SSE), `background` (async jobs: started
with `Prefer: respond-async`, followed in the background; their endpoints are `jobs`)."""
