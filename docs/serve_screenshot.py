"""Drive ``qvimclap serve`` in headless Chromium as a person would, and keep a screenshot of the page.

Starts the real command on 127.0.0.1 (a free port), feeds Chromium's fake microphone from ``--mic`` (a WAV),
records ``--seconds``, waits for the hits, plays the first one, and with generation on, generates from the
recording; prints what the page shows and saves ``--out``. Needs Debian's chromium and chromium-driver.

    .venv/bin/python docs/serve_screenshot.py --index demo/indexes/references.faiss --model demo/model \\
        --mic demo/corpus/imitations/some_imitation.wav --out docs/serve.png
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True, action="append", help="Repeat for several.")
    parser.add_argument("--model")
    parser.add_argument("--audioldm")
    parser.add_argument("--mic", type=Path, required=True, help="WAV the fake microphone plays.")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    parser.add_argument("--width", type=int, default=1100)
    args = parser.parse_args()

    import tempfile

    # Chromium's fake microphone reads 16-bit PCM WAV only: convert whatever --mic is.
    import soundfile as sf
    from selenium import webdriver

    from qvimclap.audio import load_audio

    mic = Path(tempfile.mkdtemp(prefix="serve-mic-")) / "mic.wav"
    sf.write(mic, load_audio(args.mic, 48000), 48000, subtype="PCM_16")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    command = [sys.executable, "-m", "qvimclap.cli", "serve", "--port", "0"]
    command += [part for index in args.index for part in ("--index", index)]
    command += (["--model", args.model] if args.model else []) + (
        ["--audioldm", args.audioldm] if args.audioldm else []
    )
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        f"--window-size={args.width},900", "--hide-scrollbars",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}",
        "--autoplay-policy=no-user-gesture-required",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = None
    try:
        url = None
        for line in server.stdout:  # type: ignore[union-attr]
            print("server:", line.rstrip())
            if found := re.search(r"open (http://127\.0\.0\.1:\d+)/", line):
                url = found.group(1)
                break
        if url is None:
            sys.exit("qvimclap serve did not start")
        options.add_argument(f"--user-data-dir={mic.parent / 'profile'}")
        service = webdriver.ChromeService(
            executable_path=shutil.which("chromedriver"), env={**os.environ, "TMPDIR": str(mic.parent)}
        )
        driver = webdriver.Chrome(options=options, service=service)
        wait = WebDriverWait(driver, 120)
        driver.get(url + "/")
        wait.until(lambda d: "sounds" in d.find_element(By.ID, "server-status").text)
        k = driver.find_element(By.ID, "k")
        k.clear()
        k.send_keys(str(args.k))
        driver.find_element(By.ID, "record").click()
        time.sleep(args.seconds)
        driver.find_element(By.ID, "record").click()
        wait.until(
            lambda d: (
                "nearest" in d.find_element(By.ID, "results-status").text
                or d.find_element(By.ID, "error").text
            )
        )
        print(
            "status:",
            driver.find_element(By.ID, "results-status").text,
            driver.find_element(By.ID, "error").text,
        )
        for row in driver.find_elements(By.CSS_SELECTOR, "#hits li"):
            print("hit:", " | ".join(row.text.split("\n")))
        player = driver.find_element(By.CSS_SELECTOR, "#hits li audio")
        driver.execute_script("arguments[0].play();", player)
        wait.until(lambda d: d.execute_script("return arguments[0].currentTime;", player) > 0.3)
        print(
            "played the first hit for", driver.execute_script("return arguments[0].currentTime;", player), "s"
        )
        if driver.find_element(By.ID, "generate-form").is_displayed():
            for field, value in (("gen-duration", "2"), ("gen-steps", "10")):
                box = driver.find_element(By.ID, field)
                box.clear()
                box.send_keys(value)
            driver.find_element(By.ID, "generate-button").click()
            wait.until(
                lambda d: (
                    d.find_element(By.ID, "gen-result").is_displayed() or d.find_element(By.ID, "error").text
                )
            )
            print(
                "generation:",
                driver.find_element(By.ID, "gen-status").text,
                driver.find_element(By.ID, "error").text,
            )
        height = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.set_window_size(args.width, height + 160)  # + the window frame of new headless
        driver.execute_script("window.scrollTo(0, 0);")
        time.sleep(0.5)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        print("saved", args.out)
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(mic.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
