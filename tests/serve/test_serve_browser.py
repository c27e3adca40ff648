"""The page of `dream serve` in a real headless browser (Debian's chromium driven by playwright): type a prompt,
generate, watch the stages' progress, see the image and its settings, regenerate it."""

import shutil

import pytest
from helpers.serve_helpers import png_info, running_server, shapes_models

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium on this machine (Debian: apt-get install chromium)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
requests = pytest.importorskip("requests")

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"]


@pytest.fixture(scope="module")
def page():
    with running_server(shapes_models()) as (url, srv), playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            tab = browser.new_page()
            tab.goto(url + "/")
            yield tab, url, srv
        finally:
            browser.close()


def test_generate_watch_progress_see_settings_and_regenerate(page):
    tab, url, srv = page
    tab.wait_for_selector("#model option[value=shapes]", state="attached")
    # the server's defaults (`--steps 2,2 --prior-steps 2` over the model's guidance 5,1)
    assert tab.input_value("#steps") == "2,2" and tab.input_value("#guidance") == "5,1" and tab.input_value("#prior-steps") == "2"
    tab.fill("#prompt", "a small green triangle at the top on a white background")
    tab.fill("#seed", "42")
    tab.fill("#steps", "10,10")  # long enough to be watched, short enough for a test
    tab.click("#generate")
    # the progress of each stage while it runs, with a preview of the image being drawn
    tab.wait_for_selector('.stage[data-stage="unet 1"]', timeout=60_000)
    tab.wait_for_selector("#preview[src^='data:image/png']", state="attached", timeout=60_000)
    card = tab.wait_for_selector("#gallery .card", timeout=60_000)
    assert tab.text_content("#status") == "1 image(s)"
    assert tab.text_content("#gallery .card .prompt") == "a small green triangle at the top on a white background"
    assert tab.text_content("#gallery .card dd.seed") == "42" and tab.text_content("#gallery .card dd.steps") == "10,10"
    first_id = card.get_attribute("data-id")
    image = tab.wait_for_selector("#gallery .card img")
    assert tab.evaluate("(img) => img.complete && img.naturalWidth", image) == 64  # the picture itself loaded
    first = requests.get(url + image.get_attribute("src"), timeout=10).content

    tab.fill("#seed", "-1")  # Regenerate takes the card's own settings, not the form's
    tab.click(f'#gallery .card[data-id="{first_id}"] .regenerate')
    tab.wait_for_function("document.querySelectorAll('#gallery .card').length === 2", timeout=60_000)
    newest = tab.query_selector("#gallery .card")
    assert newest.get_attribute("data-id") != first_id and tab.text_content("#gallery .card dd.seed") == "42"
    again = requests.get(url + newest.query_selector("img").get_attribute("src"), timeout=10).content
    assert png_info(again)[1] == png_info(first)[1]  # the same prompt, seed and settings: the same pixels

    tab.click(f'#gallery .card[data-id="{first_id}"] .vary')
    tab.wait_for_function("document.querySelectorAll('#gallery .card').length === 3", timeout=60_000)
    assert tab.text_content("#gallery .card dd.kind") == "variations"
    assert not tab.is_visible("#error")


def test_bad_input_is_shown_in_one_line(page):
    tab, _, _ = page
    tab.fill("#prompt", "a red circle")
    tab.fill("#steps", "2,2,2")
    tab.click("#generate")
    tab.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert tab.text_content("#error").startswith("steps: 3 values for 2 decoder stage(s)")
