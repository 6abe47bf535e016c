"""The review page in headless Chromium: edit a text, reject a row, keep a rejected one, "Download edits",
and apply the downloaded file back (uses the Chromium fixture of the demo's browser test)."""
from __future__ import annotations

import json
import time

import pytest

from curate_helpers import PARAGRAPH, config, described_workdir, one_per_key
from minigpt4 import curate
from test_demo_browser import CHROMIUM_FLAGS, chromium  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slow


def test_review_page_edits_round_trip(tmp_path, chromium):  # noqa: F811
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    texts = {"a": PARAGRAPH.format("red"), "b": PARAGRAPH.format("blue"), "c": "A tiny dot."}
    work = described_workdir(tmp_path, texts)
    cfg = config(work)
    curate.run(cfg, stages="fix,filter,review")
    assert one_per_key(work / "filtered.jsonl")["c"]["reason"] == "too_short"

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(chromium[1]), options=options)
    try:
        driver.get((work / "review.html").as_uri())
        rows = {r.get_attribute("data-key"): r for r in driver.find_elements(By.CSS_SELECTOR, ".row")}
        assert set(rows) == {"a", "b", "c"}
        assert driver.execute_script("return document.images[0].naturalWidth") > 0  # the inlined image decodes
        area = rows["a"].find_element(By.TAG_NAME, "textarea")
        area.clear()
        area.send_keys("A red square, checked by a person.")
        rows["b"].find_element(By.CSS_SELECTOR, ".rej").click()
        rows["b"].find_element(By.CSS_SELECTOR, ".why").send_keys("wrong colour")
        rows["c"].find_element(By.CSS_SELECTOR, ".rej").click()
        driver.find_element(By.TAG_NAME, "button").click()
        assert driver.find_element(By.ID, "n").text == "3 edit(s) saved"
        saved = downloads / "review_edits.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not saved.exists():
            time.sleep(0.1)
        assert saved.exists()
    finally:
        driver.quit()
    edits = [json.loads(line) for line in saved.read_text().splitlines()]
    assert edits == [{"key": "a", "text": "A red square, checked by a person."},
                     {"key": "b", "reject": True, "reason": "wrong colour"},
                     {"key": "c", "reject": False}]
    result = curate.run(cfg, stages="apply-review,export", review_edits=saved)
    keys = json.loads((work / "cc_sbu_align" / "source_keys.json").read_text())
    anns = {keys[a["image_id"]]: a["caption"]
            for a in json.loads((work / "cc_sbu_align" / "filter_cap.json").read_text())["annotations"]}
    assert anns == {"a": "A red square, checked by a person.", "c": "A tiny dot."}
    assert result["summary"]["rejected_by_reason"] == {"review": 1}
