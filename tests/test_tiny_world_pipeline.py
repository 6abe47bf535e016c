"""The whole tiny world, shrunken (``--preset test``): data, backbones, stage 1 through train.py under
torchrun with two processes, the curation loop (the stage-1 model describes the stage-2 images through
minigpt4.curate), stage 2 on the ground truth and on the curated set side by side, evaluation. Looser
floors than the full run, but trained models must still separate from the control (the projection at
initialisation)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_shrunken_tiny_world_end_to_end(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "minigpt4.tiny_world", "--out", str(tmp_path), "--preset", "test"],
                   check=True, cwd=REPO, env=env)
    report = json.loads((tmp_path / "report.json").read_text())
    for name in ("control", "stage1", "stage2", "stage2_curated"):
        for key in ("attribute_accuracy", "malformed_rate", "description_accuracy"):
            assert 0.0 <= report[name][key] <= 1.0
    assert report["seconds"] > 0 and report["cpu_seconds"] > 0
    control, stage1, stage2 = report["control"], report["stage1"], report["stage2"]
    # stage 1 makes the frozen LM name what is in the image; the projection at initialisation does not
    assert stage1["attribute_accuracy"] >= control["attribute_accuracy"] + 0.1
    assert stage1["caption_per_attribute"]["colour"] >= control["caption_per_attribute"]["colour"] + 0.3
    # stage 2 makes answers under the conversation template state the image's attributes
    for key, margin in (("colour", 0.2), ("count", 0.3)):
        assert stage2["description_per_attribute"][key] >= control["description_per_attribute"][key] + margin
    assert stage2["malformed_rate"] <= 0.2
    # the curation: every described image is kept or rejected for a reason, the kept ones were exported and
    # trained on, and the curated model answers in the world's language
    cur = report["curation"]
    assert cur["described"] == cur["images"] > 0 and cur["kept"] + cur["rejected"] == cur["described"]
    assert sum(cur["rejected_by_reason"].values()) == cur["rejected"] and cur["continued"] > 0
    exported = json.loads((tmp_path / "curate" / "cc_sbu_align" / "filter_cap.json").read_text())["annotations"]
    assert len(exported) == cur["kept"]
    assert report["stage2_curated"]["malformed_rate"] <= 0.2
    assert Path(report["checkpoints"]["stage2_curated"]).exists()
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 10 and page.count("data:image/png;base64,") == 3  # curves
    assert Path(report["checkpoints"]["stage2"]).exists()
