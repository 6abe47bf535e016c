"""Data preparation scripts in dataset/: BLIP caption list conversion and shard validation."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest

from tests.shard_utils import truncate_inside_member, write_align, write_shards

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dataset"))
import caption_lists  # noqa: E402
import validate_shards  # noqa: E402


@pytest.mark.parametrize("chunk_size", [1, 3, 17, 1 << 20])
def test_json_array_is_read_incrementally(chunk_size):
    items = [{"url": f"http://x/{i}.jpg", "caption": "quote \" tab\t newline\n é ] , [" * (i % 3 + 1)}
             for i in range(50)] + [2.5, -1e-5, 123456, None, True, "s", [1, [2]], {}]
    for indent in (None, 2):
        text = json.dumps(items, indent=indent, ensure_ascii=indent is None)
        assert list(caption_lists.iter_json_array(io.StringIO(text), chunk_size=chunk_size)) == items
    with pytest.raises(ValueError):
        list(caption_lists.iter_json_array(io.StringIO('{"not": "a list"}'), chunk_size=chunk_size))
    with pytest.raises(ValueError):
        list(caption_lists.iter_json_array(io.StringIO('[{"url": 1}, '), chunk_size=chunk_size))


def test_convert_writes_the_table_img2dataset_reads(tmp_path, capsys):
    records = [{"url": "http://a/1.jpg", "caption": "a dog\ton a\nsofa"},
               {"url": "http://a/2.jpg", "caption": 'the "best" cat'},
               {"url": "http://a/3.jpg", "caption": ["first of a list", "second"]},
               {"url": "", "caption": "no url"},
               {"url": "http://a/5.jpg", "caption": "   "},
               {"caption": "no url key"}]
    src = tmp_path / "ccs_synthetic_filtered_large.json"
    src.write_text(json.dumps(records))
    assert caption_lists.main("ccs_synthetic_filtered_large.json", "cc_sbu_dataset", ["--input", str(src)]) == 0
    out = capsys.readouterr().out
    assert "wrote 3 rows" in out and "2 without url, 1 without caption" in out
    assert "--output_format webdataset" in out and "--image_size 224" in out and "cc_sbu_dataset" in out
    with open(tmp_path / "ccs_synthetic_filtered_large.tsv", newline="", encoding="utf-8") as f:
        table = list(csv.reader(f, delimiter="\t"))
    assert table == [["url", "caption"], ["http://a/1.jpg", "a dog on a sofa"],
                     ["http://a/2.jpg", 'the "best" cat'], ["http://a/3.jpg", "first of a list"]]


def test_convert_without_input_prints_the_download_command(tmp_path, capsys):
    rc = caption_lists.main("laion_synthetic_filtered_large.json", "laion_dataset",
                            ["--input", str(tmp_path / "laion_synthetic_filtered_large.json")])
    assert rc == 2
    assert ("wget https://storage.googleapis.com/sfr-vision-language-research/BLIP/datasets/"
            "laion_synthetic_filtered_large.json") in capsys.readouterr().err


def test_convert_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "x.json"
    src.write_text(json.dumps([{"url": f"http://a/{i}", "caption": f"c {i}"} for i in range(5)]))
    caption_lists.convert(src, tmp_path / "x.parquet", "parquet")
    table = pq.read_table(tmp_path / "x.parquet").to_pydict()
    assert table["url"] == [f"http://a/{i}" for i in range(5)] and table["caption"][4] == "c 4"


def test_validate_shards_reports_exact_counts(tmp_path, capsys):
    write_shards(tmp_path, 3, 20, bad_images={(0, 1), (1, 5)}, no_caption={(1, 2)}, no_image={(0, 3)})
    truncate_inside_member(tmp_path / "00002.tar", 30)  # inside sample 10's .jpg
    report = tmp_path / "report.json"
    assert validate_shards.main([str(tmp_path), "--json", str(report), "--workers", "2"]) == 0
    summary = json.loads(report.read_text())
    assert summary["shards"] == 3 and summary["samples"] == 50 and summary["good"] == 46
    assert summary["skipped"] == {"bad_image": 2, "missing_caption": 1, "missing_image": 1, "truncated_shard": 1}
    assert summary["image_sizes"] == {"64x64": 46}
    assert summary["caption_words"]["min"] == 5
    assert {s["shard"].rsplit("/", 1)[1] for s in summary["shards_with_problems"]} == {
        "00000.tar", "00001.tar", "00002.tar"}
    assert "truncated_shard=1" in capsys.readouterr().out
    assert validate_shards.main([str(tmp_path / "{00000..00002}.tar"), "--strict"]) == 1
    assert validate_shards.main([str(tmp_path / "nothing*.tar")]) == 2


def test_validate_align_folder(tmp_path, capsys):
    write_align(tmp_path, 9, missing={2}, broken={5})
    assert validate_shards.main([str(tmp_path), "--json", "-"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["samples"], summary["good"]) == (9, 7)
    assert summary["skipped"] == {"bad_image": 1, "missing_image": 1}
