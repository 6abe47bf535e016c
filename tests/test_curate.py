"""The curation stages on the golden fixture's micro model: the paper's prompt and Continue rule, every
stage's file, resuming after an interruption in each stage, review edits, shards, the export loading
through the stage-2 config, and one-line errors for bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.curate_helpers import kill_after_rows, one_per_key, rows
from minigpt4.testing.golden import draw_scene, write_config
from minigpt4 import curate, inference
from minigpt4.curate import __main__ as cli
from minigpt4.curate import describe
from minigpt4.conversation.conversation import load_image
from minigpt4.curate.fixers import Fixer, RulesFixer

ROOT = Path(__file__).resolve().parents[1]
CONTINUE_BELOW = 12
CURATE_YAML = f"""curate:
  seed: 3
  describe:
    batch_size: 3
    max_new_tokens: 16
    continue_max_tokens: {CONTINUE_BELOW}
  filter:
    min_length: 40
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("curate")
    images = d / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(7):
        draw_scene(i).save(images / ("sub" if i % 3 == 0 else ".") / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    (images / "broken.jpg").write_text("not a picture")
    write_config(d)
    (d / "curate.yaml").write_text(CURATE_YAML)
    return d


def cli_argv(setup, work, *extra):
    return ["--config", str(setup / "curate.yaml"), "--cfg-path", str(setup / "fixture_eval.yaml"),
            "--images", str(setup / "images"), "--work-dir", str(work), *extra]


@pytest.fixture(scope="module")
def full(setup):
    work = setup / "full"
    assert cli.main(cli_argv(setup, work)) == 0
    return work


@pytest.fixture(scope="module")
def model(setup):
    args = SimpleNamespace(cfg_path=str(setup / "fixture_eval.yaml"), options=[], device="cpu", low_resource=False,
                           load_in_4bit=False, device_map=None)
    _, m, vis, _ = inference.load_model(args)
    return m, vis


def test_every_stage_writes_its_file_and_the_counts_add_up(full):
    for name in ["described.jsonl", "fixed.jsonl", "filtered.jsonl", "review.html", "summary.json",
                 "cc_sbu_align/filter_cap.json", "cc_sbu_align/source_keys.json"]:
        assert (full / name).is_file(), name
    assert not (full / "reviewed.jsonl").exists()  # no edits given
    s = json.loads((full / "summary.json").read_text())
    described = one_per_key(full / "described.jsonl")
    assert s["images"] == len(described) == 8 and s["describe_errors"] == 1 and s["described"] == 7
    assert "not a readable image" in described["broken.jpg"]["error"]
    assert s["fixed"] + s["fix_failures"] == s["described"] and s["fix_failures"] == 0
    assert s["kept"] + s["rejected"] == s["images"] and sum(s["rejected_by_reason"].values()) == s["rejected"]
    assert s["rejected_by_reason"]["describe_failed"] == 1
    assert s["continued"] == sum(bool(r.get("continued")) for r in described.values())
    anns = json.loads((full / "cc_sbu_align" / "filter_cap.json").read_text())["annotations"]
    assert len(anns) == s["kept"] > 0
    assert sorted(p.stem for p in (full / "cc_sbu_align" / "image").iterdir()) == sorted(a["image_id"] for a in anns)
    kept = {k: v for k, v in one_per_key(full / "filtered.jsonl").items() if v["verdict"] == "keep"}
    keys = json.loads((full / "cc_sbu_align" / "source_keys.json").read_text())
    assert {keys[a["image_id"]]: a["caption"] for a in anns} == {k: v["text"] for k, v in kept.items()}


def test_paper_prompt_and_continue_rule(full, model):
    m, vis = model
    cfg = curate.load_config(None)
    assert describe.first_prompt(cfg.describe) == (
        "###Human: <Img><ImageHere></Img>Describe this image in detail. Give as many details as possible. "
        "Say everything you see. ###Assistant: ")
    assert describe.continue_prompt(cfg.describe, "A cat.") == (describe.first_prompt(cfg.describe)
                                                                + "A cat. ###Human: Continue ###Assistant: ")
    described = [r for r in rows(full / "described.jsonl") if "text" in r]
    assert 0 < sum(r["continued"] for r in described) < len(described)  # both sides of the rule are exercised
    gen = dict(max_new_tokens=16, num_beams=1, do_sample=False, repetition_penalty=1.0, stop_strings=["###"])
    for row in described:
        tokens = len(m.llama_tokenizer(row["first"], add_special_tokens=False).input_ids)
        assert row["first_tokens"] == tokens and row["continued"] == (tokens <= CONTINUE_BELOW)
        pixels = vis(load_image(row["image"]))
        first = m.generate(pixels[None], [describe.first_prompt(cfg.describe)], **gen)[0]
        assert first == row["first"]  # batched == one at a time
        if row["continued"]:
            second = m.generate(pixels[None], [describe.continue_prompt(cfg.describe, first)], **gen)[0]
            assert row["continuation"] == second and row["text"] == f"{first} {second}".strip()
        else:
            assert "continuation" not in row and row["text"] == first


class _Interrupting:
    """A stage-1 model that stops the run (as Ctrl-C or a kill would) at its n-th generate call."""

    def __init__(self, model, n):
        self.model, self.n, self.calls = model, n, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.model.generate(*args, **kwargs)


class _StopAfter(Fixer):
    name = "rules"

    def __init__(self, n):
        self.inner, self.n = RulesFixer(curate.load_config(None).filter.failure_strings), n

    def fix(self, items):
        for i, result in enumerate(self.inner.fix(items)):
            if i == self.n:
                raise KeyboardInterrupt
            yield result


def test_interrupted_stages_resume_with_nothing_lost_or_duplicated(setup, full, model):
    m, vis = model
    work = setup / "resumed"
    cfg = curate.load_config(setup / "curate.yaml", images=setup / "images", work_dir=work)
    with pytest.raises(KeyboardInterrupt):  # describe stops in its third generate call (second batch)
        curate.run(cfg, stages="describe", model=_Interrupting(m, 3), vis_processor=vis)
    partial = rows(work / "described.jsonl")
    assert 0 < len(partial) < 8
    with open(work / "described.jsonl", "a") as f:
        f.write('{"key": "img0')  # and a line cut in the middle by a kill
    curate.run(cfg, stages="describe", model=m, vis_processor=vis)
    assert one_per_key(work / "described.jsonl") == one_per_key(full / "described.jsonl")
    assert rows(work / "described.jsonl")[: len(partial)] == partial  # earlier rows stay first and unchanged

    with pytest.raises(KeyboardInterrupt):
        curate.run(cfg, stages="fix", fixer=_StopAfter(3))
    assert len(rows(work / "fixed.jsonl")) == 3
    curate.run(cfg, stages="fix")
    assert one_per_key(work / "fixed.jsonl") == one_per_key(full / "fixed.jsonl")

    lines = (full / "filtered.jsonl").read_text().splitlines(keepends=True)
    (work / "filtered.jsonl").write_text("".join(lines[:2]) + lines[2][:15])
    curate.run(cfg, stages="filter")
    assert one_per_key(work / "filtered.jsonl") == one_per_key(full / "filtered.jsonl")

    curate.run(cfg, stages="export")
    export = work / "cc_sbu_align"
    images = sorted(p.name for p in (export / "image").iterdir())
    (export / "filter_cap.json").unlink()  # killed before the annotation file was written
    (export / "image" / images[0]).unlink()
    (export / "image" / ".x.jpg.tmp").write_bytes(b"half")
    (export / "image" / "stale.jpg").write_bytes(b"old")
    result = curate.run(cfg, stages="all")
    assert result["stages"]["describe"]["already_done"] == 8 and result["stages"]["fix"]["already_done"] == 7
    assert result["stages"]["export"]["images_written"] == 1
    assert sorted(p.name for p in (export / "image").iterdir()) == images
    assert (export / "filter_cap.json").read_text() == (full / "cc_sbu_align" / "filter_cap.json").read_text()
    summary = json.loads((work / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k != "export"} == \
        {k: v for k, v in json.loads((full / "summary.json").read_text()).items() if k != "export"}


def test_export_loads_through_the_stage2_config(full):
    from minigpt4.common.config import Config
    from minigpt4.common.registry import registry

    storage = full / "cc_sbu_align"
    cfg = Config.load(ROOT / "train_configs" / "minigpt4_stage2_finetune.yaml",
                      [f"datasets.cc_sbu_align.build_info.storage={storage}"]).config
    ds = registry.get_builder_class("cc_sbu_align")(cfg.datasets.cc_sbu_align).build_datasets()["train"]
    anns = json.loads((storage / "filter_cap.json").read_text())["annotations"]
    assert len(ds) == len(anns) and ds.build_skips == {}
    sample = ds[0]
    assert sample["answer"] == anns[0]["caption"] and sample["image"].shape == (3, 224, 224)
    assert torch.isfinite(sample["image"]).all()


def test_review_page_and_edits(setup, full, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(full, work)
    page = (work / "review.html").read_text()
    verdicts = one_per_key(work / "filtered.jsonl")
    assert page.count('class="row"') == 8 and page.count("data:image/jpeg;base64,") == 7
    assert "Download edits" in page and "<script" in page and "src=\"http" not in page  # self-contained
    kept = [k for k, v in verdicts.items() if v["verdict"] == "keep"]
    restorable = [k for k, v in verdicts.items() if v["verdict"] == "reject" and v["reason"] != "describe_failed"]
    assert len(kept) >= 2 and restorable  # min_length 40 rejects some of the micro model's texts
    edits = [{"key": kept[0], "text": "A hand-written description of the first picture, checked by a person."},
             {"key": kept[1], "reject": True, "reason": "describes another picture"},
             {"key": restorable[0], "reject": False}]
    edit_file = tmp_path / "review_edits.jsonl"
    edit_file.write_text("".join(json.dumps(e) + "\n" for e in edits))
    cfg = curate.load_config(setup / "curate.yaml", images=setup / "images", work_dir=work)
    result = curate.run(cfg, stages="all", review_edits=edit_file)
    assert result["stages"]["apply-review"]["edited"] == 1
    reviewed = one_per_key(work / "reviewed.jsonl")
    assert reviewed[kept[1]]["verdict"] == "reject" and reviewed[kept[1]]["reason"] == "review"
    anns = {json.loads((work / "cc_sbu_align" / "source_keys.json").read_text())[a["image_id"]]: a["caption"]
            for a in json.loads((work / "cc_sbu_align" / "filter_cap.json").read_text())["annotations"]}
    assert anns[kept[0]] == edits[0]["text"] and kept[1] not in anns
    assert anns[restorable[0]] == verdicts[restorable[0]]["text"]  # a person kept what the filter rejected
    s = result["summary"]
    assert s["reviewed"] and s["rejected_by_reason"]["review"] == 1 and s["kept"] + s["rejected"] == s["images"]
    assert s["kept"] == len(anns)

    edit_file.write_text(json.dumps({"key": "broken.jpg", "reject": False}) + "\n")
    with pytest.raises(curate.CurateError, match="no description to keep"):
        curate.run(cfg, stages="apply-review", review_edits=edit_file)
    edit_file.write_text(json.dumps({"key": kept[0], "txt": "typo"}) + "\n")
    with pytest.raises(curate.CurateError, match="unknown field 'txt'"):
        curate.run(cfg, stages="apply-review", review_edits=edit_file)


def test_webdataset_shards_and_random_choice(setup, full, model, tmp_path):
    import webdataset as wds

    m, vis = model
    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"part-{shard}.tar")) as sink:
            for i in range(shard * 3, shard * 3 + 3):
                name = f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
                path = setup / "images" / ("sub" if i % 3 == 0 else ".") / name
                sink.write({"__key__": f"s{i:03d}", name.rsplit(".", 1)[1]: path.read_bytes()})
    pattern = str(tmp_path / "part-{0..1}.tar")
    picked = {}
    for seed in (0, 0, 5):
        work = tmp_path / f"w{seed}"
        cfg = curate.load_config(setup / "curate.yaml", images=pattern, work_dir=work, num_images=4, seed=seed)
        result = curate.run(cfg, model=m, vis_processor=vis, force=True)
        picked.setdefault(seed, []).append(sorted(r["key"] for r in rows(work / "described.jsonl")))
        assert result["summary"]["images"] == 4
    assert picked[0][0] == picked[0][1] and picked[0][0] != picked[5][0]
    by_key = one_per_key(tmp_path / "w0" / "described.jsonl")
    full_rows = {Path(r["image"]).name: r for r in rows(full / "described.jsonl") if "text" in r}
    for key, row in by_key.items():
        assert Path(row["image"]).parent == tmp_path / "w0" / "images" and row["shard"].endswith(".tar")
        i = int(key[1:])
        assert row["text"] == full_rows[f"img{i:02d}.{'png' if i % 2 else 'jpg'}"]["text"]


@pytest.mark.parametrize("case", ["typo", "type", "top_level", "not_a_mapping", "no_images", "no_model", "stage",
                                  "order"])
def test_bad_input_is_a_one_line_error(setup, tmp_path, capsys, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    yaml = tmp_path / "c.yaml"
    yaml.write_text({"typo": "curate:\n  fix:\n    fixxer: rules\n",
                     "type": "curate:\n  num_images: ten\n",
                     "top_level": "curate: {}\nmodel: {}\n",
                     "not_a_mapping": "curate: [1, 2]\n"}.get(case, "curate: {}\n"))
    argv = ["--config", str(yaml), "--work-dir", str(tmp_path / "w"), "--images",
            str(empty if case == "no_images" else setup / "images")]
    argv += {"no_model": [], "stage": ["--stages", "describe,polish"], "order": ["--stages", "filter"]}.get(
        case, ["--cfg-path", str(setup / "fixture_eval.yaml")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("minigpt4.curate: error: ")
    expected = {"typo": "unknown key curate.fix.fixxer (did you mean 'fix.fixer'?)",
                "type": "curate.num_images must be an integer, got 'ten'",
                "top_level": "unknown top-level key 'model'",
                "not_a_mapping": "curate must be a mapping of keys, got [1, 2]",
                "no_images": "curate.images (--images): " + str(empty) + " holds no image files",
                "no_model": "--cfg-path (the stage-1 model config) is needed by the describe stage",
                "stage": "--stages: unknown stage 'polish'",
                "order": "run the describe stage before filter"}[case]
    assert expected in err


@pytest.mark.parametrize("case", ["work_dir", "under_file", "export_out", "edits_binary", "edits_folder",
                                  "hf_unset", "hf_file"])
def test_unusable_paths_are_one_line_before_any_work(setup, tmp_path, capsys, case):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    (tmp_path / "edits").mkdir()
    (tmp_path / "edits.jpg").write_bytes(b"\xff\xd8\xff\xe0 a JPEG")
    work = {"work_dir": notes, "under_file": notes / "work"}.get(case, tmp_path / "w")
    argv = ["--config", str(setup / "curate.yaml"), "--cfg-path", str(setup / "fixture_eval.yaml"),
            "--images", str(setup / "images"), "--work-dir", str(work)]
    argv += {"export_out": ["--export-out", str(notes)], "edits_binary": ["--review-edits", str(tmp_path / "edits.jpg")],
             "edits_folder": ["--review-edits", str(tmp_path / "edits")], "hf_unset": ["--fixer", "hf"],
             "hf_file": ["--fixer", "hf", "--options", f"curate.fix.hf.model={notes}"]}.get(case, [])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    expected = {"work_dir": f"curate.work_dir (--work-dir) {notes}: is a file, not a folder",
                "under_file": f"curate.work_dir (--work-dir) {notes / 'work'}: cannot be created, {notes} is a file",
                "export_out": f"curate.export.out (--export-out) {notes}: is a file, not a folder",
                "edits_binary": f"--review-edits / curate.review.edits {tmp_path / 'edits.jpg'}: not a UTF-8 text file",
                "edits_folder": f"--review-edits / curate.review.edits {tmp_path / 'edits'}: is a folder, not a file",
                "hf_unset": "curate.fix.hf.model is not set; it must point at a local Hugging Face causal-LM folder",
                "hf_file": f"curate.fix.hf.model {notes}: is a file; it must point at a local Hugging Face "
                           "causal-LM folder"}[case]
    assert err.startswith(f"minigpt4.curate: error: {expected}"), err
    assert notes.read_text() == "mine" and not (tmp_path / "w" / "described.jsonl").exists()


def test_an_export_with_no_pair_warns_that_stage2_refuses_it(tmp_path, caplog):
    from tests.curate_helpers import PARAGRAPH, config, described_workdir

    work = described_workdir(tmp_path, {"a": PARAGRAPH.format("red"), "b": PARAGRAPH.format("blue")})
    with caplog.at_level("WARNING", logger="minigpt4.curate"):
        result = curate.run(config(work, "filter.min_length=10000"), stages="fix,filter,export")
    assert result["stages"]["export"]["exported"] == 0
    assert json.loads((work / "cc_sbu_align" / "filter_cap.json").read_text()) == {"annotations": []}
    assert any("holds 0 pairs" in r.message and "stage-2 training refuses an empty cc_sbu_align" in r.message
               for r in caplog.records if r.levelname == "WARNING"), caplog.text


@pytest.mark.slow  # two processes loading the library and the model: about a minute on 2 busy cores
def test_torchrun_splits_describe_over_two_ranks(setup, full, tmp_path):
    import subprocess
    import sys

    from tests.train_helpers import free_port, subprocess_env

    work = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "minigpt4.curate", *cli_argv(setup, work, "--device", "cpu")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "described.jsonl").read_text() == (full / "described.jsonl").read_text()  # merged in input order
    assert not list(work.glob("described.jsonl.part-*"))
    assert "describe: 4 images here" in proc.stderr and "describe: 4 images here" in proc.stderr.split(
        "describe: 4 images here", 1)[1]  # each rank described its half
    for name in ["fixed.jsonl", "filtered.jsonl", "cc_sbu_align/filter_cap.json"]:
        assert (work / name).read_text() == (full / name).read_text(), name


@pytest.mark.slow  # a subprocess loading the library and the model: about 30 s on 2 busy cores
def test_killed_describe_run_resumes(setup, full, tmp_path):
    import subprocess
    import sys

    from tests.train_helpers import subprocess_env

    work = tmp_path / "killed"
    argv = cli_argv(setup, work, "--options", "curate.describe.batch_size=1")
    proc = subprocess.Popen([sys.executable, "-m", "minigpt4.curate", *argv], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = work / "described.jsonl"
    kill_after_rows(proc, out, 3, timeout=300)
    before = rows(out)
    assert 3 <= len(before) < 8 and not (work / "fixed.jsonl").exists()
    result = curate.run(curate.load_config(setup / "curate.yaml", images=setup / "images", work_dir=work),
                        model_args={"cfg_path": str(setup / "fixture_eval.yaml"), "device": "cpu"})
    assert result["stages"]["describe"]["already_done"] == len(before)
    assert one_per_key(out) == one_per_key(full / "described.jsonl")
    assert (work / "cc_sbu_align" / "filter_cap.json").read_text() == \
        (full / "cc_sbu_align" / "filter_cap.json").read_text()
