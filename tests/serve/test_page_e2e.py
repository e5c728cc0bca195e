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


def _browser(pw):
    return pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


NO_OVERLAP = """() => [...document.querySelectorAll('#gallery .meta')].every(meta => {
    const r = [...meta.children].map(c => c.getBoundingClientRect());
    return r.every((a, i) => r.every((b, j) => i === j || a.right <= b.left + 0.5 || b.right <= a.left + 0.5
                                     || a.bottom <= b.top + 0.5 || b.bottom <= a.top + 0.5));
})"""
NOT_CUT = """() => [...document.querySelectorAll('#gallery .text, #gallery .label')].every(
    e => e.scrollHeight <= e.clientHeight + 1 && e.scrollWidth <= e.clientWidth + 1)"""


def test_upload_shows_prediction_and_neighbour_gallery(served, query_png, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    client, predictor = served
    expected = client.post_file(query_png).json()
    image = tmp_path / "fashion-mnist-test-0.png"
    image.write_bytes(query_png)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            console_errors = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(client.base + "/")
            sync_api.expect(page.locator("#model-info")).to_contain_text("tiny-fmnist")
            sync_api.expect(page.locator("#about")).to_contain_text("retrieving similar image-text pairs")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#gallery .neighbor", timeout=30_000)
            sync_api.expect(page.locator("#prediction")).to_have_text(expected["prediction"])
            tiles = page.locator("#gallery .neighbor")
            assert tiles.count() == 12 < predictor.k  # the most decisive first
            # the page leads with what decided, and names what answered
            sync_api.expect(page.locator("#explanation")).to_have_text(expected["explanation"])
            sync_api.expect(page.locator("#served-by")).to_contain_text(expected["method_label"])
            assert page.locator("#evidence tr").count() == 1 + len(expected["evidence"])
            sync_api.expect(page.locator("#neighbours-title")).to_contain_text("share of the vote")
            page.wait_for_function(
                "[...document.querySelectorAll('#gallery .neighbor img')].every(i => i.complete && i.naturalWidth > 0)",
                timeout=30_000)
            weights = [float(t.split()[-1]) for t in page.locator("#gallery .weight").all_inner_texts()]
            assert weights == sorted(weights, reverse=True) and weights[0] > 0
            assert weights[0] == pytest.approx(expected["neighbors"][0]["vote_weight"], abs=1e-3)
            ranks = page.locator("#gallery .rank").all_inner_texts()
            assert ranks[0] == f"rank {expected['neighbors'][0]['rank']}"
            agreeing = sum(n["label"] == expected["prediction"] for n in expected["neighbors"][:12])
            assert page.locator("#gallery .neighbor.agrees").count() == agreeing > 0
            assert page.locator("#gallery .agree-badge").count() == agreeing
            assert page.evaluate(NO_OVERLAP), "the weight, rank and similarity run together"
            assert page.evaluate(NOT_CUT), "a caption or label is cut"
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
            page.click("#show-all")
            sync_api.expect(tiles).to_have_count(predictor.k)
            assert page.locator("#gallery .bar > div").count() >= predictor.k
            page.wait_for_function(
                "[...document.querySelectorAll('#gallery .neighbor img')].every(i => i.complete && i.naturalWidth > 0)",
                timeout=30_000)
            assert page.evaluate(NO_OVERLAP) and page.evaluate(NOT_CUT)
            page.screenshot(path=str(ARTIFACTS / "serve-page-all.png"), full_page=True)
            assert not console_errors, console_errors
        finally:
            browser.close()
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 10_000


def test_samples_are_test_images_that_give_the_evaluated_prediction(served, tiny_run):
    """Each sample is a test image at full resolution with its true class; clicking it gives
    exactly the prediction (and calibrated probability) the run evaluated, in predictions.npz."""
    import json

    import numpy as np

    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    client, predictor = served
    models = client.get("/models").json()["models"]
    assert {"experiment": "tiny-fmnist", "method": "mam", "label": predictor.method_label} in models
    listed = client.get("/samples").json()["samples"]
    folder = tiny_run / "tiny-fmnist"
    names = json.loads((folder / "serving.json").read_text())["class_names"]
    with np.load(folder / "predictions.npz") as f:
        logits, labels = f["logits_mam"], f["labels"]
    z = logits / predictor.temperature
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    with sync_api.sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(client.base + "/")
            samples = page.locator("#samples .sample")
            samples.first.wait_for(timeout=30_000)
            assert samples.count() == len(listed) >= 5
            page.wait_for_function(
                "[...document.querySelectorAll('#samples img')].every(i => i.complete && i.naturalWidth > 0)")
            # full resolution: Fashion-MNIST's own 28 x 28, not a 96 px thumbnail
            assert page.evaluate("document.querySelector('#samples img').naturalWidth") == 28
            for i in range(3):
                row = listed[i]["row"]
                assert samples.nth(i).get_attribute("data-label") == names[labels[row]] == listed[i]["label"]
                samples.nth(i).click()
                expected = names[int(probs[row].argmax())]
                sync_api.expect(page.locator("#prediction")).to_have_text(expected)
                sync_api.expect(page.locator("#top5 li").first).to_contain_text(f"{100 * probs[row].max():.1f}%")
                sync_api.expect(page.locator("#sample-check")).to_contain_text(", as here.")
            options = page.locator("#model option").all_inner_texts()
            assert options == [f"{m['experiment']} / {m['label']}" for m in models]
            other = next(m for m in models if m["method"] != "mam")
            page.select_option("#model", label=f"{other['experiment']} / {other['label']}")
            sync_api.expect(page.locator("#model-info")).to_contain_text(f"/ {other['label']}")
            page.wait_for_function("document.querySelector('#timings').textContent.length > 0")
            page.screenshot(path=str(ARTIFACTS / "serve-page-samples.png"), full_page=True)
        finally:
            browser.close()


def test_add_an_entry_see_it_retrieved_and_delete_it(tiny_run, tmp_path, query_png):
    """Where edits are allowed: add an image with a label from the page, see it come back as a
    neighbour of the same image, delete it from its tile."""
    import shutil

    from serve_helpers import start_server

    import ravis
    from ravis.serve import create_app

    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    token = "page-test-token-0123456789abcdef"
    server, thread, base = start_server(create_app(ravis.load(run), edit_token=token))
    image = tmp_path / "my-shirt.png"
    image.write_bytes(query_png)
    try:
        with sync_api.sync_playwright() as pw:
            browser = _browser(pw)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(base + "/")
                sync_api.expect(page.locator("#edit-section")).to_be_visible()
                page.set_input_files("#file", str(image))
                page.wait_for_selector("#gallery .neighbor", timeout=30_000)
                page.set_input_files("#edit-file", str(image))
                page.fill("#edit-label", "my own class")
                page.fill("#edit-caption", "a shirt I photographed")
                page.fill("#edit-token", token)
                page.click("#edit-form button[type=submit]")
                sync_api.expect(page.locator("#edit-status")).to_contain_text("added edit/")
                added = page.locator("#gallery .neighbor").first
                sync_api.expect(added).to_contain_text("a shirt I photographed")
                sync_api.expect(added.locator(".sim")).to_have_text("similarity 1.00")
                page.screenshot(path=str(ARTIFACTS / "serve-page-edited.png"), full_page=True)
                added.locator("button.delete").click()
                sync_api.expect(page.locator("#edit-status")).to_contain_text("deleted edit/")
                sync_api.expect(page.locator("#gallery")).not_to_contain_text("a shirt I photographed")
                page.fill("#edit-token", "wrong-token")
                page.set_input_files("#edit-file", str(image))
                page.click("#edit-form button[type=submit]")
                sync_api.expect(page.locator("#edit-status")).to_contain_text("wrong_token")
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
