"""The web UI in a real browser: headless Chromium (Debian's) opens /ui on the running Serve app, goes to a model,
submits the prediction form, checks the answer against the endpoint's, and sees the monitoring plots."""

from __future__ import annotations

import json
import os
import shutil
import time

import httpx
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from tests.conftest import API_KEY as KEY
from tests.conftest import OTHER_API_KEY as NEW_KEY

pytestmark = [pytest.mark.ray, pytest.mark.serve]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
INSTANCE = {"red": 0.81, "green": 0.3, "blue": 0.2, "weight_g": 190.0, "diameter_mm": 76.0, "smoothness": 0.82}


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[dev]'")
    if not CHROMIUM or not DRIVER:
        pytest.skip("no browser: install Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver); .ci/run does")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()  # stops chromedriver and the browser it started


@pytest.fixture(scope="module")
def monitored_fruit(serve_url, trained_models):
    """A few fruit predictions with outcomes through the endpoints, and a monitoring report of them."""
    storage, _ = trained_models
    answers = [httpx.post(f"{serve_url}/v1/models/fruit_classifier:predict", json={"instances": [INSTANCE] * 3},
                          timeout=30) for _ in range(4)]
    assert all(a.status_code == 200 for a in answers)
    outcomes = [{"request_id": a.headers["x-request-id"], "index": i, "outcome": "apple"} for a in answers
                for i in range(3)]
    assert httpx.post(f"{serve_url}/v1/models/fruit_classifier/outcomes", json={"outcomes": outcomes},
                      timeout=30).status_code == 200
    time.sleep(1.5)  # the prediction log is written about once a second
    result = CliRunner().invoke(app, ["--storage", storage.root_uri, "monitor", "fruit_classifier", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _wait(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def test_a_model_page_gives_a_prediction_from_the_chosen_version_and_shows_monitoring(
        browser, serve_url, monitored_fruit, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"{serve_url}/ui")
    link = _wait(browser, lambda d: d.find_element(By.LINK_TEXT, "fruit_classifier"))
    overview = browser.find_element(By.ID, "main").text
    assert "Feature groups" in overview and "fruit" in overview and "fruit_classification" in overview
    link.click()
    _wait(browser, lambda d: d.find_element(By.ID, "predict-form"))
    assert browser.find_element(By.ID, "model-name").text == "fruit_classifier"
    for name, value in INSTANCE.items():
        field = browser.find_element(By.ID, f"input-{name}")
        field.clear()
        field.send_keys(str(value))
    browser.find_element(By.ID, "predict-button").click()
    result = _wait(browser, lambda d: d.find_element(By.ID, "prediction-result").get_attribute("data-status")
                   and d.find_element(By.ID, "prediction-result"))
    assert result.get_attribute("data-status") == "200", result.text
    shown = json.loads(result.text)
    version = int(browser.find_element(By.ID, "version").get_attribute("value"))
    direct = httpx.post(f"{serve_url}/v1/models/fruit_classifier/versions/{version}:predict",
                        json={"instances": [INSTANCE]}, timeout=30).json()
    assert shown["version"] == version and shown["predictions"] == direct["predictions"]

    plots = browser.find_elements(By.CSS_SELECTOR, "#monitoring-plots img")
    assert len(plots) == len(monitored_fruit["plots"]) >= 2
    _wait(browser, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", p)
                                 for p in plots))
    folder = os.environ.get("UI_SCREENSHOT_DIR") or str(tmp_path)
    assert browser.save_screenshot(os.path.join(folder, "ui.png"))


def test_an_unknown_model_page_says_so(browser, serve_url):
    from selenium.webdriver.common.by import By

    browser.get(f"{serve_url}/ui#/models/no_such_model")
    error = _wait(browser, lambda d: d.find_element(By.ID, "error"))
    assert "no model named 'no_such_model'" in error.text


def test_the_ui_documents_and_files_refuse_what_is_not_theirs(serve_url):
    bad = httpx.get(f"{serve_url}/ui/api/models/Bad.Name", timeout=30)
    assert bad.status_code == 404 and "model name 'Bad.Name' must be lower case" in bad.text
    missing = httpx.get(f"{serve_url}/ui/files/models/fruit_classifier/1/model.skops", timeout=30)
    assert missing.status_code == 404 and "has no plot 'model.skops'" in missing.text


def test_a_ui_that_needs_a_key_asks_for_it_once_and_then_shows_everything(browser, guarded):
    """On an app with API keys the page asks for a key, refuses a wrong one, and with the right one shows the
    overview, a model page and its plots (images, which a browser fetches with the cookie, not a header)."""
    from selenium.webdriver.common.by import By

    browser.get(f"{guarded['urls'][0]}/ui")
    field = _wait(browser, lambda d: d.find_element(By.ID, "api-key"))
    assert "needs an API key" in browser.find_element(By.ID, "login-status").text
    field.send_keys(NEW_KEY)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    _wait(browser, lambda d: "not valid" in d.find_element(By.ID, "login-status").text)
    field.clear()
    field.send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    _wait(browser, lambda d: d.find_element(By.LINK_TEXT, "fruit_classifier")).click()
    _wait(browser, lambda d: d.find_element(By.ID, "predict-form"))
    plots = browser.find_elements(By.CSS_SELECTOR, "img")
    assert plots
    _wait(browser, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", p)
                                 for p in plots))
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script on the page reads the key
