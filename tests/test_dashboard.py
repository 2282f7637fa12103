"""optuna-dashboard serves the study: a real headless Chromium (Debian's) opens it."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as seen
from selenium.webdriver.support.ui import WebDriverWait

from abliterate.objectives.sweep.serve import free_port

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def study_url(tmp_path, tiny):
    model, tokenizer = tiny("qwen3")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "abliterate", "search", "--model", str(tmp_path / "model"), "--storage", url, "--study", "browse",
         "--harmful", "demo-harmful", "--harmless", "demo-harmless", "--split", "4,6,6", "--trials", "2",
         "--max-new-tokens", "8", "--device", "cpu", "--seed", "0"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return url


@pytest.fixture
def browser():
    assert CHROMIUM and CHROMEDRIVER, "install Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_dashboard_shows_study_trials_and_note(study_url, browser, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "abliterate", "dashboard", "--storage", study_url, "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        while True:  # until it serves, or dies
            try:
                urllib.request.urlopen(f"{base}/api/studies")
                break
            except OSError:
                assert server.poll() is None, "dashboard did not start"
                time.sleep(0.5)
        wait = WebDriverWait(browser, 600)  # only a safety net: it returns as soon as the text is there
        browser.get(f"{base}/dashboard")
        wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "body"), "browse"))
        browser.get(f"{base}/dashboard/studies/1/trials")
        wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "body"), "Trial 1"))
        wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "body"), "feasible"))
        browser.save_screenshot(str(tmp_path / "trials.png"))
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "KL" in body and "refusal" in body  # the trial note and the objective names
    finally:
        server.terminate()
        server.wait()
