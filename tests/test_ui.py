"""The Prefect UI as an operator sees it, in a real headless Chromium (Debian's, via Playwright).

A real ``prefect server start`` serves the API and the UI; an acquisition runs against it
from the command line; the browser opens the run's summary artifact and checks that the
spectrum picture and the position's map are really displayed (decoded, non-zero size),
not just linked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import REQUIRE_SERVICES
from prefect_server import ROOT, prefect_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.flow


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        message = "chromium is not installed (scripts/services.sh install installs it)"
        if REQUIRE_SERVICES:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


def _images(browser, url: str, shot: Path) -> tuple[list[dict], str]:  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.goto(url, wait_until="networkidle", timeout=60_000)
        page.wait_for_selector("img", timeout=30_000)
        page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=30_000)
        images = page.eval_on_selector_all(
            "img",
            "els => els.map(e => ({alt: e.alt, width: e.naturalWidth, src: e.src.slice(0, 30)}))",
        )
        text = page.inner_text("body")
        page.screenshot(path=str(shot), full_page=True)
        return images, text
    finally:
        page.close()


def test_acquisition_summary_shows_the_spectrum_picture(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with prefect_server(tmp_path / "prefect-home") as env:
        done = subprocess.run(
            [
                sys.executable, "-m", "flows", "acquire",
                "--network", "simulated", "--storage", "local", "--database", "sqlite",
                "--data-dir", str(tmp_path / "data"), "--duration-s", "1", "--json",
                "--modulation", "rrc-bpsk", "--locate",
            ],
            env={**env, "PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]},
            cwd=ROOT, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        api = env["PREFECT_API_URL"]
        ui = api.removesuffix("/api")
        pages = {}
        for key in ("acquisition-summary", "locate-summary"):
            found = httpx.post(
                f"{api}/artifacts/filter",
                json={"artifacts": {"key": {"any_": [key]}}},
                timeout=10,
            ).json()
            assert len(found) == 1, (key, found)
            pages[key] = _images(
                browser, f"{ui}/artifacts/artifact/{found[0]['id']}", tmp_path / f"{key}.png"
            )
    images, text = pages["acquisition-summary"]
    spectra = [i for i in images if i["alt"] == "spectra"]
    assert spectra, images
    assert spectra[0]["width"] >= 600  # decoded by the browser, not a broken link
    assert "7/7 receivers ok" in text
    images, text = pages["locate-summary"]
    maps = [i for i in images if i["alt"] == "map"]
    assert maps and maps[0]["width"] >= 600, images
    assert "7 receivers" in text and "truth" in text
