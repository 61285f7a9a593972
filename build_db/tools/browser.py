"""A headless Chromium for the explorer's tests, screenshots and benchmark: Debian's `chromium` (installed by
the Makefile) driven by Playwright from PyPI, whose own browser download our machines cannot reach."""

from __future__ import annotations

import contextlib
import os
import shutil

CHROMIUM = os.environ.get("HMBA_CHROMIUM", "/usr/bin/chromium")
# No GPU, no sandbox (root in CI), and none of Chromium's own network traffic (updates, sync, field trials),
# which a closed network refuses many times a second. Playwright gives each launch a fresh profile folder
# (--user-data-dir) and removes it afterwards.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def launch():
    """A Playwright Browser on Debian's Chromium, closed afterwards."""
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if executable is None:
        raise SystemExit(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
