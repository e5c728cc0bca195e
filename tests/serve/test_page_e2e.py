"""The web page in headless Chromium: upload a real image, see the prediction and the gallery.

Needs Debian's ``chromium`` (scripts/setup.sh --test installs it) and the Python
``playwright`` package; the browser is the system one, never a downloaded build. The
screenshot is saved as a test artefact in test-artifacts/serve-page.png.
"""

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian chromium is not installed (scripts/setup.sh --test installs it)")


def test_upload_shows_prediction_and_neighbour_gallery(served, query_png, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    client, predictor = served
    expected = client.post_file(query_png).json()
    image = tmp_path / "fashion-mnist-test-0.png"
    image.write_bytes(query_png)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            console_errors = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(client.base + "/")
            sync_api.expect(page.locator("#model-info")).to_contain_text("tiny-fmnist")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#gallery .neighbor", timeout=30_000)
            sync_api.expect(page.locator("#prediction")).to_have_text(expected["prediction"])
            tiles = page.locator("#gallery .neighbor")
            assert tiles.count() == predictor.k >= 10
            # every thumbnail loaded (a broken image has naturalWidth 0), with a weight beside it
            page.wait_for_function(
                "[...document.querySelectorAll('#gallery .neighbor img')].every(i => i.complete && i.naturalWidth > 0)",
                timeout=30_000)
            assert page.locator("#gallery .neighbor img").count() == predictor.k
            weights = [float(t.split()[1]) for t in page.locator("#gallery .weight").all_inner_texts()]
            assert weights == sorted(weights, reverse=True) and weights[0] > 0
            assert weights[0] == pytest.approx(expected["neighbors"][0]["weight"], abs=1e-3)
            ranks = page.locator("#gallery .rank").all_inner_texts()
            assert ranks[0] == f"rank {expected['neighbors'][0]['rank']}"
            assert page.locator("#gallery .bar > div").count() >= 10
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
            assert not console_errors, console_errors
        finally:
            browser.close()
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 10_000
