"""HTTP routes, one module per endpoint family, plus what they share: `serve` (sync, SSE,
async, the global queue), `bodies` and `multipart` (JSON and form bodies), `running` (engine
jobs), `stream` (SSE), `background` (async jobs: started with `Prefer: respond-async`,
followed in the background; their endpoints are `jobs` and `job_events`), `auth`, `errors`
(the HTTP error handlers)."""
