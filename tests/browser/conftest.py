"""Fixtures of the browser tests: the real servers (tests/conftest.py's `launch_server`
with the tiny model) and Debian's Chromium (/usr/bin/chromium, launched
as tools/screenshot_playground.py does) driven by Playwright's sync API. Playwright
cannot download browsers here, so a missing Chromium (or a missing `playwright`
package) fails the tests with how to install it; they are never skipped.

`open_page(server, width)` opens the playground in a fresh browser context and collects
the page's console errors and uncaught exceptions; at the end of the test they must be
none, except the network errors Chromium logs for the statuses a test announced with
`tab.expect_status(400)` (a 400 or 401 answer is a console error in Chromium's eyes)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import pytest

from tests.server.conftest import KEY, ServerProc
from tools.screenshot_playground import CHROMIUM, launch_chromium

INSTALL = "install it with `apt-get install -y chromium` (as root; `make test` does this)"
STATUS_LOG = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")
# Records every value the progress bar takes and every status line (the page itself has no
# test hooks).
RECORD_PROGRESS = """
window.__progress = [];
window.__statuses = [];
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("progress");
  const status = document.getElementById("run-status");
  new MutationObserver(() => window.__progress.push(bar.getAttribute("value")))
    .observe(bar, { attributes: true, attributeFilter: ["value"] });
  new MutationObserver(() => window.__statuses.push(status.textContent))
    .observe(status, { childList: true, characterData: true, subtree: true });
});
"""


@dataclass
class Tab:
    """One playground page and what its console said."""

    page: "Page"  # noqa: F821 - playwright's, imported lazily
    server: ServerProc
    problems: list[str] = field(default_factory=list)
    allowed: set[int] = field(default_factory=set)

    def expect_status(self, *statuses: int) -> None:
        """Chromium logs a console error for each of these answers; they are expected."""
        self.allowed.update(statuses)

    def unexpected(self) -> list[str]:
        def allowed(text: str) -> bool:
            match = STATUS_LOG.search(text)
            return match is not None and int(match[1]) in self.allowed
        return [p for p in self.problems if not allowed(p)]


def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        pytest.fail("the `playwright` package is missing: `make setup-dev` installs the dev extra", pytrace=False)
    return start()


@pytest.fixture(scope="session")
def browser() -> Iterator["Browser"]:  # noqa: F821
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: {INSTALL}", pytrace=False)
    with sync_playwright() as p:
        chromium = launch_chromium(p)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def playground(world_server: ServerProc) -> ServerProc:
    """The server the pages talk to: tiny model (32 and 64 px) that says it draws the shapes
    world (32 px suggested), no API keys."""
    return world_server


@pytest.fixture(scope="session")
def keyed_server(launch_server: Callable[..., ServerProc]) -> ServerProc:
    """The tiny model as it is (nothing said of what it draws), with an API key."""
    return launch_server(env={"UNCLIP_API_KEYS": KEY})


@pytest.fixture
def open_page(browser) -> Iterator[Callable[..., Tab]]:
    """open(server, width=1280, height=900, routes=None) -> Tab, the playground loaded (model
    card read, or the key asked for). `routes`: {URL glob: handler(route)}, Playwright routes
    set before the page loads (to change what the server answers, or see what is sent)."""
    tabs, contexts = [], []

    def open_tab(server: ServerProc, width: int = 1280, height: int = 900,
                 routes: Optional[dict[str, Callable[["Route"], None]]] = None) -> Tab:  # noqa: F821
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True,
                                      permissions=["clipboard-read", "clipboard-write"])
        context.add_init_script(RECORD_PROGRESS)
        for url, handler in (routes or {}).items():
            context.route(url, handler)
        contexts.append(context)
        tab = Tab(context.new_page(), server)
        tab.page.on("console", lambda m: m.type == "error" and tab.problems.append(m.text))
        tab.page.on("pageerror", lambda e: tab.problems.append(f"uncaught: {e}"))
        tab.page.goto(server.base_url + "/")
        tab.page.wait_for_function("() => /Model:|API key needed/.test(document.getElementById('model-status')"
                                   ".textContent)")
        tabs.append(tab)
        return tab

    yield open_tab
    for context in contexts:
        context.close()
    problems = [p for tab in tabs for p in tab.unexpected()]
    assert not problems, f"console errors: {problems}"

