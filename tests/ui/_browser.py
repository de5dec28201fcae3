"""Browser helpers for the UI tests: launch arguments (ENV.md §7) and a page that records requests and console."""

from __future__ import annotations

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL = ("http://127.0.0.1", "http://localhost", "ws://127.0.0.1", "ws://localhost", "data:", "blob:")


class Recorder:
    """Every request URL and console message of a page."""

    def __init__(self, page):
        self.requests: list[str] = []
        self.console: list[tuple[str, str]] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", lambda m: self.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: self.console.append(("error", str(e))))
        page.on("requestfailed", lambda r: self.console.append(("error", f"request failed: {r.url}")))

    @property
    def external(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(LOCAL)]

    @property
    def errors(self) -> list[str]:
        return [text for kind, text in self.console if kind == "error"]


def new_page(browser, height: int = 1000):
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)  # a loaded 2-core machine can take seconds per round trip
    context = browser.new_context(viewport={"width": 1440, "height": height})
    page = context.new_page()
    page.set_default_timeout(30_000)
    return page, Recorder(page)


def launched_chromium(chromium: str, hint: str = "apt-get install -y chromium (never `playwright install`)"):
    """Yield headless Debian Chromium (Playwright) with LAUNCH_ARGS; skips when Playwright or `chromium` is
    missing. For module- or session-scoped fixtures: ``yield from launched_chromium(CHROMIUM)``."""
    import os

    import pytest

    pytest.importorskip("playwright")
    if not os.path.exists(chromium):
        pytest.skip(f"{chromium} is missing: {hint}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()
