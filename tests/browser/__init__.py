"""Browser tests of the playground (GET /): Playwright driving Debian's Chromium."""
