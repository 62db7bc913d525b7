"""``qvimclap serve`` as a person uses it: the real command, Debian's headless Chromium driven by Selenium,
Chromium's fake microphone fed from a WAV. Record through the page's microphone path, search, see the hits,
play one; then upload a file, and a bad one. Skipped, saying why, where Chromium is not installed."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _serve_library import ENCODER

from qvimclap import api

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; "
        ".ci/run installs them)",
        allow_module_level=True,
    )
pytest.importorskip("fastapi", reason='the serve extra is not installed: pip install -e ".[serve]"')
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (it is in .[dev])")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

MIC_HZ = 440.0  # what the fake microphone "hums"


@pytest.fixture(scope="module")
def library(serve_library: tuple[Path, Path]) -> tuple[Path, Path]:
    return serve_library


@pytest.fixture(scope="module")
def server(library: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """The real `qvimclap serve` command on a free loopback port; yields its URL."""
    work = tmp_path_factory.mktemp("work")
    command = [sys.executable, "-m", "qvimclap.cli", "serve", "--index", str(library[1]), "--port", "0"]
    command += ["--work-dir", str(work)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output = []
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            output.append(line)
            if found := re.search(r"open (http://127\.0\.0\.1:\d+)/", line):
                break
        else:
            pytest.fail("qvimclap serve did not start:\n" + "".join(output))
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert list(work.iterdir()) == []  # uploads do not outlive their requests


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("mic")
    t = np.arange(3 * 48000) / 48000
    hum = 0.4 * np.sin(2 * np.pi * MIC_HZ * t) + 0.1 * np.sin(2 * np.pi * 3 * MIC_HZ * t)
    sf.write(folder / "mic.wav", hum.astype(np.float32), 48000, subtype="PCM_16")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,1000",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={folder / 'mic.wav'}",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    # Chromium's profile and sockets go under the test's folder, not /tmp.
    options.add_argument(f"--user-data-dir={folder / 'profile'}")
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER, env={**os.environ, "TMPDIR": str(folder)})
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def _wait(driver, condition, what: str, timeout: float = 30):
    wait = WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(lambda d: condition(d), message=f"waiting for {what}")  # the list is re-drawn


def _hits(driver) -> list[tuple[int, float, str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#hits li")
    return [
        (
            int(row.find_element(By.CLASS_NAME, "rank").text),
            float(row.find_element(By.CLASS_NAME, "score").text),
            row.find_element(By.CLASS_NAME, "name").get_attribute("title"),
        )
        for row in rows
    ]


def _recorded_s(driver) -> float:
    """Seconds recorded so far, from the page's timer ("1.3 / 10 s"; "up to 10 s" before recording)."""
    found = re.match(r"([0-9.]+) /", driver.find_element(By.ID, "timer").text)
    return float(found.group(1)) if found else 0.0


def _recording(driver) -> tuple[np.ndarray, int]:
    """The WAV the page recorded and uploaded, fetched back from its own player."""
    encoded = driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch(document.getElementById("query-audio").src).then((r) => r.arrayBuffer()).then((buffer) => {
          let text = ""; new Uint8Array(buffer).forEach((b) => { text += String.fromCharCode(b); });
          done(btoa(text));
        });"""
    )
    return sf.read(io.BytesIO(base64.b64decode(encoded)), dtype="float32")


def test_hum_search_play_and_upload(server: str, browser, library: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, index_path = library
    browser.set_script_timeout(20)
    browser.get(server + "/")
    _wait(browser, lambda d: "4 sounds" in d.find_element(By.ID, "server-status").text, "the page to load")
    assert "generation off" in browser.find_element(By.ID, "server-status").text
    assert "--audioldm" in browser.find_element(By.ID, "generate-off").text

    # 1. Record through the microphone path (Web Audio -> WAV in the page): the button starts, R stops.
    browser.find_element(By.ID, "record").click()
    _wait(browser, lambda d: _recorded_s(d) >= 1.5, "1.5 s recorded")
    level = browser.find_element(By.ID, "level").value_of_css_property("width")
    browser.find_element(By.TAG_NAME, "body").send_keys("r")
    _wait(browser, lambda d: "nearest sounds" in d.find_element(By.ID, "results-status").text, "the hits")
    assert float(level.removesuffix("px")) > 0  # the level meter moved

    # What the page recorded is the fake microphone's hum, and what it shows is the library's search of it.
    recorded, rate = _recording(browser)
    assert 1.4 <= len(recorded) / rate <= 10.0
    spectrum = np.abs(np.fft.rfft(recorded * np.hanning(len(recorded))))
    assert abs(np.argmax(spectrum) * rate / len(recorded) - MIC_HZ) < 5.0
    sf.write(tmp_path / "recorded.wav", recorded, rate)
    expected = api.search(tmp_path / "recorded.wav", index_path, 5, encoder=ENCODER)
    shown = _hits(browser)
    assert [(rank, path) for rank, _, path in shown] == [(h.rank, h.path) for h in expected]
    np.testing.assert_allclose([s for _, s, _ in shown], [h.score for h in expected], atol=2e-3)

    # 2. Play the first hit in its own player: the server streams its file and playback advances.
    player = browser.find_element(By.CSS_SELECTOR, "#hits li audio")
    browser.execute_script("arguments[0].play();", player)
    _wait(browser, lambda d: d.execute_script("return arguments[0].currentTime;", player) > 0.1, "playback")
    assert browser.execute_script("return arguments[0].error;", player) is None

    # 3. A file chosen in the page: a stored sound finds itself first.
    reference = corpus / "references" / Path(shown[-1][2]).name
    browser.find_element(By.ID, "file").send_keys(str(reference))
    _wait(browser, lambda d: _hits(d) and _hits(d)[0][2] == str(reference), "the uploaded file's hits")
    assert _hits(browser)[0][1] == pytest.approx(1.0, abs=2e-3)
    screenshot = os.environ.get("QVIMCLAP_SERVE_SCREENSHOT")
    if screenshot:
        browser.save_screenshot(screenshot)

    # 4. A file that is not audio: the loader's one-line message, in plain words, on the page.
    junk = tmp_path / "notes.wav"
    junk.write_bytes(b"this is not audio")
    browser.find_element(By.ID, "file").send_keys(str(junk))
    error = _wait(browser, lambda d: d.find_element(By.ID, "error").text, "the error message")
    assert error.startswith("notes.wav: not a readable audio file")
