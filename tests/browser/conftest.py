"""A real headless Chromium driven by selenium, for tests of what a person sees.

The browser and its driver come from the system (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them when it can). Where neither can be found
the tests skip and say so; selenium itself is a test dependency and is never
downloaded a driver for (no Selenium Manager: the driver path is given).
Screenshots go to ``test-artifacts/`` (or ``$SPOTIFY_EVENTS_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from support import ROOT

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver", "chromium-driver")
#: Flags that keep a test browser from reaching the network on its own (updates,
#: sync, QUIC probes) or needing a GPU or a sandbox the container lacks.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def _first_on_path(names: tuple[str, ...], env: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = Path(os.environ.get("SPOTIFY_EVENTS_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium with its own profile directory."""
    binary = _first_on_path(BROWSERS, "SPOTIFY_EVENTS_CHROMIUM")
    driver_path = _first_on_path(DRIVERS, "SPOTIFY_EVENTS_CHROMEDRIVER")
    if binary is None or driver_path is None:
        pytest.skip(
            "no headless browser: need chromium and chromedriver on PATH "
            "(Debian: apt-get install chromium chromium-driver), "
            f"found browser={binary}, driver={driver_path}"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
