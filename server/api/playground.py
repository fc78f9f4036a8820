"""GET /: the web playground, a static page (server/playground/) that uses the public API
only. `/` serves index.html; its scripts and styles are under `/playground/<name>`. Open
without an API key (the page asks for one when the API answers 401) and kept out of the
OpenAPI schema. Every file is sent with `Cache-Control: no-cache`: the browser may keep it,
but revalidates it (ETag) before each use, so a new server version is never shown stale."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ..errors import APIError

ROOT = Path(__file__).resolve().parent.parent / "playground"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
# The only files served: what the folder holds of the known types (no path is ever joined).
ASSETS = {p.name: TYPES[p.suffix] for p in ROOT.iterdir() if p.suffix in TYPES}

router = APIRouter()


def send(name: str) -> FileResponse:
    """One playground file with its content type; 404 for any other name."""
    if name not in ASSETS:
        raise APIError(404, f"No playground file '{name}'.", code="not_found")
    return FileResponse(ROOT / name, media_type=ASSETS[name], headers=HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> FileResponse:
    return send("index.html")


@router.api_route("/playground/{name}", methods=["GET", "HEAD"])
async def asset(name: str) -> FileResponse:
    return send(name)
