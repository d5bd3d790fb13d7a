"""`launch.sh tensorboard` serves a run's TensorBoard events on 127.0.0.1, and the page, rendered by
headless Chromium (Debian `chromium` + `chromium-driver`, installed by `make test`), shows the run's
`reward/mean` chart with its logged values.

The events come from the project's Tracker, as a run writes them. The tag and the values are
not in the served HTML: they only appear once TensorBoard's JavaScript has fetched the run's data
and drawn the card, which is what the test waits for.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import psutil
import pytest

from orchestrator.tracking import Tracker
from tests.conftest import ROOT

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,900"]
REWARDS = [0.125, 0.375, 0.8125]


@pytest.fixture
def served_run(tmp_path):
    """A run's TensorBoard events (3 steps of reward/mean and kl) served by `launch.sh tensorboard`."""
    out = tmp_path / "run"
    with Tracker(str(out), {}, "page-test", wandb=False, tensorboard=True) as tracker:
        for step, reward in enumerate(REWARDS, start=1):
            tracker.log(step, {"reward/mean": reward, "kl": 0.01 * step})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = subprocess.Popen([str(ROOT / "launch.sh"), "tensorboard", str(out), "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # up, and done reading the event file
            assert server.poll() is None, server.stdout.read()
            try:
                tags = json.load(urllib.request.urlopen(f"{url}/data/plugin/scalars/tags", timeout=5))
                if any("reward/mean" in run_tags for run_tags in tags.values()):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "TensorBoard did not serve the run's scalars within 90 s"
            time.sleep(0.5)
        yield url, port
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser():
    """Headless Chromium through chromedriver, with a fresh profile."""
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), (
        "chromium / chromium-driver missing: `make chromium` (part of `make test`) installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="tether-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_tensorboard_page_shows_reward_chart(served_run, browser):
    """The Time Series page draws a `reward/mean` card whose data table holds the last logged
    value at the last step; TensorBoard listens on 127.0.0.1 only."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, port = served_run
    assert {c.laddr.ip for c in psutil.net_connections(kind="tcp")
            if c.status == "LISTEN" and c.laddr.port == port} == {"127.0.0.1"}
    assert "reward/mean" not in urllib.request.urlopen(url, timeout=10).read().decode()

    # tagFilter keeps the card in view: TensorBoard only draws cards that are on screen
    browser.get(f"{url}/?tagFilter=reward/mean#timeseries")
    wait = WebDriverWait(browser, 60, poll_frequency=0.5)
    card = wait.until(lambda d: next((c for c in d.find_elements(By.CSS_SELECTOR, "scalar-card")
                                      if c.find_elements(By.CSS_SELECTOR, '.tag[title="reward/mean"]')), None))
    last = f"{REWARDS[-1]:.4g}"
    wait.until(lambda d: last in card.text)
    text = card.text
    assert "Value" in text and "Step" in text, text
    assert str(len(REWARDS)) in text.split(), text
    assert card.find_elements(By.CSS_SELECTOR, "canvas, svg path"), "no chart drawn"
    titles = {e.get_attribute("title") for e in browser.find_elements(By.CSS_SELECTOR, "scalar-card .tag")}
    assert titles == {"reward/mean"}, titles
