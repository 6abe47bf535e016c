"""End to end: demo.py on a loopback port with the fixture micro model, driven by headless Chromium.

Chromium and chromedriver come from Debian (``apt-get install chromium chromium-driver``); when they are
missing and we are root, the session fixture installs them. Nothing is downloaded by Selenium itself.
Set ``MINIGPT4_SCREENSHOT_DIR`` to also keep the screenshots outside the pytest tmp dir.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from minigpt4.testing.golden import model_cfg
from minigpt4.testing.golden import FX, write_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
IMAGES = [FX / "images" / "img0_red_circle_blue_square.png", FX / "images" / "img1_green_triangle_yellow_bar.png"]
NEW_TOKENS, SEED = 24, 0
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900"]


def _find_browser():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).exists()), None)
    return browser, driver


@pytest.fixture(scope="session")
def chromium():
    pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e '.[dev]'")
    browser, driver = _find_browser()
    if not (browser and driver):
        if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
            pytest.skip("Chromium/chromedriver are not installed and cannot be installed here (needs root and "
                        "apt-get): apt-get install chromium chromium-driver")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium",
                                            "chromium-driver"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
            if proc.returncode != 0:
                pytest.skip(f"could not install Chromium ({' '.join(cmd)} failed): {proc.stderr[-500:]}")
        browser, driver = _find_browser()
        if not (browser and driver):
            pytest.skip("apt-get installed chromium but chromium/chromedriver are still not on PATH")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, chromium):
    d = tmp_path_factory.mktemp("demo_server")
    cfg, port, log_path = write_config(d), _free_port(), d / "demo.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "demo.py"), "--cfg-path", str(cfg), "--device", "cpu",
                                 "--port", str(port), "--max-new-tokens", str(NEW_TOKENS), "--seed", str(SEED)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=d)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"demo.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"demo.py did not answer on {url}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def expected():
    """What the model answers, computed here with the demo's settings: (image index, question) -> text."""
    from minigpt4.conversation import Chat, training_conversation
    from minigpt4.models import MiniGPT4
    from minigpt4.processors import Blip2ImageEvalProcessor

    model = MiniGPT4.from_config(model_cfg(FX, prompt_template="###Human: {} ###Assistant: ", end_sym="###"))
    chat = Chat(model, Blip2ImageEvalProcessor(image_size=224), device="cpu")

    def answer(turns):
        conv, images, texts = training_conversation(), [], []
        for image, question in turns:
            if image is not None:
                chat.upload_img(str(IMAGES[image]), conv, images)
            chat.ask(question, conv)
            texts.append(chat.answer(conv, images, do_sample=True, temperature=1.0, top_p=0.9, seed=SEED,
                                     max_new_tokens=NEW_TOKENS)[0])
        return texts

    return answer


class Page:
    def __init__(self, chromium, url, profile: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = chromium[0]
        for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(chromium[1]), options=options)
        self.driver.get(url)
        self.wait_for(lambda: self.find("#image input[type=file]") and self.find("#user textarea"), "the page")

    def find(self, css):
        from selenium.webdriver.common.by import By

        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else None

    def texts(self, role: str) -> list[str]:
        from selenium.webdriver.common.by import By

        return [e.get_attribute("innerText").strip()
                for e in self.driver.find_elements(By.CSS_SELECTOR, f"#chatbot [data-testid={role}]")]

    def wait_for(self, condition, what: str, timeout: float = 90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                result = condition()
            except Exception:  # noqa: BLE001 - the DOM changes under us while Gradio re-renders
                result = None
            if result:
                return result
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; page says:\n"
                             f"{self.find('body').get_attribute('innerText')[-2000:]}")

    def choose_file(self, path: Path):
        """Hand ``path`` to the image box's file input, finding it afresh if Gradio re-rendered it meanwhile."""
        def send():
            self.find("#image input[type=file]").send_keys(str(path))
            return True

        self.wait_for(send, f"the image box to take {path.name}", timeout=30)

    def click(self, css: str):
        def press():  # a stale element raises before the click happens, so trying again clicks once
            self.find(css).click()
            return True

        self.wait_for(press, f"{css} to take a click", timeout=30)

    def upload(self, path: Path, count: int):
        self.choose_file(path)
        self.wait_for(lambda: self.find("#image img"), "the image preview")
        self.click("#upload")
        self.wait_for(lambda: f"[image {count} uploaded]" in self.texts("user"), "the upload to register")
        self.wait_for(lambda: self.find("#user textarea").is_enabled(), "the User box to be enabled")

    def ask(self, question: str):
        def send():  # a stale element raises before any key is typed, so trying again types it once
            self.find("#user textarea").send_keys(question + "\n")
            return True

        self.wait_for(send, "the User box to take the question", timeout=30)

    def wait_answer(self, number: int, expected: str) -> str:
        self.wait_for(lambda: len(self.texts("bot")) >= number
                      and _norm(self.texts("bot")[number - 1]) == _norm(expected), f"answer {number}: {expected!r}")
        return self.texts("bot")[number - 1]

    def screenshot(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        keep = os.environ.get("MINIGPT4_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)

    def close(self):
        self.driver.quit()


def _norm(text: str) -> str:
    """Compare what the page shows with the model's text, ignoring markdown rendering and spacing."""
    return re.sub(r"[^0-9A-Za-z]+", "", text)


@pytest.fixture()
def pages(chromium, server, tmp_path):
    opened = []

    def open_page():
        opened.append(Page(chromium, server[0], tmp_path / f"profile{len(opened)}"))
        return opened[-1]

    yield open_page
    for page in opened:
        page.close()


def test_upload_ask_and_read_the_streamed_answer(pages, expected, tmp_path):
    page = pages()
    assert not page.find("#user textarea").is_enabled()  # disabled until an image is uploaded
    not_an_image = tmp_path / "holiday.png"
    not_an_image.write_text("these are words, not pixels")
    page.choose_file(not_an_image)
    time.sleep(1)
    page.click("#upload")
    page.wait_for(lambda: "not an image I can read" in page.find("body").get_attribute("innerText"),
                  "the warning about a non-image file")
    assert not page.find("#user textarea").is_enabled() and page.texts("user") == []
    page.upload(IMAGES[0], 1)
    page.ask("   ")  # only spaces
    page.wait_for(lambda: "Input should not be empty!" in page.find("body").get_attribute("innerText"),
                  "the warning about an empty message")
    page.ask("What is in this picture?")
    want = expected([(0, "What is in this picture?")])[0]
    assert want and page.wait_answer(1, want)
    page.screenshot(tmp_path / "demo_chat.png")
    assert (tmp_path / "demo_chat.png").stat().st_size > 10_000


def test_two_sessions_at_once_keep_separate_conversations(pages, expected, tmp_path):
    a, b = pages(), pages()
    a.upload(IMAGES[0], 1)
    b.upload(IMAGES[1], 1)
    a.ask("Question from A?")
    b.ask("Question from B?")  # queued behind A's generation
    want_a = expected([(0, "Question from A?"), (None, "And a second one from A?")])
    want_b = expected([(1, "Question from B?")])
    assert want_a[0] != want_b[0]
    a.wait_answer(1, want_a[0])
    b.wait_answer(1, want_b[0])
    a.ask("And a second one from A?")
    a.wait_answer(2, want_a[1])
    assert a.texts("user") == ["[image 1 uploaded]", "Question from A?", "And a second one from A?"]
    assert b.texts("user") == ["[image 1 uploaded]", "Question from B?"] and len(b.texts("bot")) == 1
    a.screenshot(tmp_path / "demo_session_a.png")
    b.screenshot(tmp_path / "demo_session_b.png")


def _body(page) -> str:
    return page.find("body").get_attribute("innerText")


def _notice(page, phrase: str, what: str):
    """Wait for a notice containing ``phrase``, then dismiss every notice so the next one is seen afresh."""
    from selenium.webdriver.common.by import By

    page.wait_for(lambda: phrase in _body(page), what)
    for button in page.driver.find_elements(By.CSS_SELECTOR, ".toast-close"):
        try:
            button.click()
        except Exception:  # noqa: BLE001 - a toast may close on its own meanwhile
            pass
    page.wait_for(lambda: phrase not in _body(page), "the notice to go away", timeout=30)


def test_restart_mid_answer_then_bad_uploads_get_a_notice(pages, expected, tmp_path):
    page = pages()
    page.upload(IMAGES[0], 1)
    page.ask("What is in this picture?")
    page.click("#restart")  # while the answer streams
    page.wait_for(lambda: page.texts("user") == [] and not page.find("#user textarea").is_enabled(), "the restart")
    time.sleep(2)  # what is left of the old stream must not bring the old conversation back
    assert page.texts("user") == [] and page.texts("bot") == []

    not_an_image = tmp_path / "holiday.png"
    not_an_image.write_text("these are words, not pixels")
    page.choose_file(not_an_image)
    time.sleep(1)
    page.click("#upload")
    _notice(page, "This file is not an image I can read", "the notice about holiday.png after Restart")
    assert page.texts("user") == [] and not page.find("#user textarea").is_enabled()

    page.click("#restart")
    notes = tmp_path / "notes.txt"  # refused by the browser itself (the image box accepts image/* only)
    notes.write_text("a text file")
    page.choose_file(notes)
    _notice(page, "Invalid file type: notes.txt", "the browser's notice about notes.txt")
    page.click("#upload")
    _notice(page, "Please choose an image first", "the notice that no image was chosen")
    assert page.texts("user") == [] and not page.find("#user textarea").is_enabled()

    page.upload(IMAGES[1], 1)  # a fresh conversation about the other image
    page.ask("Question from B?")
    page.wait_answer(1, expected([(1, "Question from B?")])[0])
    assert page.texts("user") == ["[image 1 uploaded]", "Question from B?"]
    page.screenshot(tmp_path / "demo_after_restart.png")


def test_the_server_log_has_no_traceback(server):
    log = server[1].read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
