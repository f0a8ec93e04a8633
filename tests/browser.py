"""A real browser for page tests: Debian's chromium driven by its chromedriver (selenium), headless."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from werkzeug.serving import make_server

CHROMIUM = os.environ.get("NXP2_CDS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("NXP2_CDS_CHROMEDRIVER", "/usr/bin/chromedriver")
REQUIRE_ENV = "NXP2_CDS_REQUIRE_BROWSER"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def browser_or_skip() -> None:
    """Skip (or, when CI requires the browser, fail) when chromium or chromedriver is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).exists() or shutil.which(p))]
    if missing:
        message = f"browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} missing)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    """The app on a real HTTP server on a free loopback port, for the duration of the block."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


@contextmanager
def chromium(width: int = 1200, height: int = 2000) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
