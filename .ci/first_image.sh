#!/usr/bin/env bash
# The README's first minutes on a fresh clone, as a newcomer lives them: `make serve` (it
# installs the runtime dependencies only, no extra), /ready, then the README's first curl
# (taken from README.md itself, so the two cannot drift), and the PNG it writes must be a
# real image with its generation parameters. The server starts with no cached batch
# profile, as on a fresh machine; the script prints how long it took to be ready.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
url=http://127.0.0.1:8000
work=$(mktemp -d)
if curl -s -o /dev/null "$url/health"; then
  echo "first-image: something already answers on $url; stop it first" >&2
  exit 1
fi

# The README's first curl: its first line, and the lines it continues onto with a trailing '\'.
first_curl=$(awk '/^ *curl -s http:\/\/127\.0\.0\.1:8000\/v1\/images\/generations/ {on=1}
                  on {print; if ($0 !~ /\\$/) exit}' README.md)
[ -n "$first_curl" ] || { echo "first-image: no curl to /v1/images/generations in README.md" >&2; exit 1; }

UNCLIP_BATCH_PROFILE_DIR="$work/profiles" setsid make serve >"$work/serve.log" 2>&1 &
serve=$!
stop() { kill -TERM -- "-$serve" 2>/dev/null || true; wait "$serve" 2>/dev/null || true; }
trap 'stop; echo "--- make serve log (last 40 lines)"; tail -40 "$work/serve.log"' EXIT

wait_for() {  # wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds, or fail
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$((limit * 2))"); do
    "$@" && return 0
    kill -0 "$serve" 2>/dev/null || { echo "first-image: make serve exited before $what" >&2; exit 1; }
    sleep 0.5
  done
  echo "first-image: no $what after $limit s" >&2
  exit 1
}
wait_for 1200 "server start (installing)" grep -q -- "-m server" "$work/serve.log"
started=$(date +%s.%N)
wait_for 300 "200 from /ready" curl -sf -o /dev/null "$url/ready"
echo "first-image: ready $(python3 -c "print(round($(date +%s.%N) - $started, 1))") s after python -m server began (no cached batch profile)"

(cd "$work" && bash -euo pipefail -c "$first_curl")
"$repo/.venv/bin/python" - "$work/out.png" <<'PY'
import json, sys
from PIL import Image
image = Image.open(sys.argv[1])
image.load()
params = json.loads(image.info["unclip"])
assert image.format == "PNG" and min(image.size) >= 32, (image.format, image.size)
print(f"first-image: out.png is a {image.size[0]}x{image.size[1]} PNG of {params['prompt']!r}, seed {params['seed']}")
PY
trap - EXIT
stop
echo "first-image: passed"
