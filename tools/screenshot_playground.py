"""Screenshots of the playground (GET /) for the README, at desktop (1280 px wide) and
phone (390 px wide) widths, with generated images in the gallery, each taken DURING a
run (a slow generation, cancelled afterwards) so that it shows the progress bar and the
stage being run: docs/playground-desktop.png and docs/playground-phone.png.

    make serve                                            # in another shell
    .venv/bin/python -m tools.screenshot_playground [--url http://127.0.0.1:8000]

Playwright (the dev extra) drives Debian's Chromium, /usr/bin/chromium, as the browser
tests do (tests/browser). A screenshot over MAX_BYTES is stored with a 256-colour palette.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
DOCS = Path(__file__).resolve().parents[1] / "docs"
MAX_BYTES = 200_000  # the screenshots stay well under 300 kB
PROMPTS = ("a small red circle at the top left on a blue background",
           "a large green triangle in the center on a white background",
           "a yellow square at the bottom right on a purple background")
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
# The run shown mid-way: enough decoder steps to be caught at work, a preview on the way.
SLOW = {"decoder_steps": 250, "partial_images": 1}
MID_RUN = 0.3  # the overall fraction the run has passed when the screenshot is taken


def launch_chromium(playwright):
    """Debian's Chromium, headless, with the flags this sandbox-less machine needs."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


def generate(page, prompt: str, timeout_ms: int) -> None:
    """One generation through the form; waits for its image in the gallery."""
    before = page.locator("#gallery > li").count()
    page.fill("#prompt", prompt)
    page.click("#generate")
    page.wait_for_function("n => document.querySelectorAll('#gallery > li').length > n", arg=before,
                           timeout=timeout_ms)


def small_png(data: bytes) -> bytes:
    """The screenshot, as a palette PNG if it is too large as it is."""
    if len(data) <= MAX_BYTES:
        return data
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def set_fields(page, values: dict) -> None:
    """Set form fields (those under Advanced too, left closed) by id."""
    for name, value in values.items():
        page.eval_on_selector(f"#{name}", "(el, v) => { el.value = v; }", str(value))


def mid_run(page, timeout_ms: int) -> bytes:
    """Start a slow generation, take the screenshot once it is MID_RUN through (what the
    window shows: the page scrolls its progress into view), then cancel it."""
    set_fields(page, SLOW)
    page.click("#generate")
    page.wait_for_function("f => Number(document.getElementById('progress').getAttribute('value')) >= f",
                           arg=MID_RUN, timeout=timeout_ms)
    shot = page.screenshot()
    page.click("#cancel")
    page.wait_for_function("() => document.getElementById('run-status').textContent === 'Cancelled.'")
    set_fields(page, dict.fromkeys(SLOW, ""))
    return small_png(shot)


def shoot(url: str, seed: int, timeout_ms: int) -> dict[str, bytes]:
    from playwright.sync_api import sync_playwright

    shots = {}
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport=dict(zip(("width", "height"), WIDTHS["desktop"])))
        page.goto(url)
        page.wait_for_function("() => document.getElementById('model-status').textContent.startsWith('Model:')")
        page.fill("#seed", str(seed))
        for prompt in PROMPTS:
            generate(page, prompt, timeout_ms)
        for name, (width, height) in WIDTHS.items():
            page.set_viewport_size({"width": width, "height": height})
            page.evaluate("window.scrollTo(0, 0)")
            shots[name] = mid_run(page, timeout_ms)
        browser.close()
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/", help="the playground of a running server")
    parser.add_argument("--seed", type=int, default=3, help="seed of the generations")
    parser.add_argument("--timeout-s", type=float, default=120, help="per generation")
    args = parser.parse_args()
    for name, data in shoot(args.url, args.seed, int(args.timeout_s * 1000)).items():
        path = DOCS / f"playground-{name}.png"
        path.write_bytes(data)
        print(f"{path}: {len(data) / 1000:.0f} kB")


if __name__ == "__main__":
    main()
