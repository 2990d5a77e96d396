"""Smoke tests of src.tools.benchmark at the tiny config: it runs, and its JSON holds what it promises.

Speed is never asserted (the machine is shared); only that timings are positive and outputs agree.
"""
import json
import os
import subprocess
import sys

import pytest

from src.tools.benchmark import summarise_times, thread_list, timing_record

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tiny_config.yaml")
TIMING_KEYS = ("runs", "median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "mean_ms", "times_ms",
               "first_call_s", "compile_s")


def run_benchmark(tmp_path, *extra, timeout=300):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "src.tools.benchmark", "--config_path", TINY, "--runs", "1", "--warmup", "0",
               "--json", str(out), *extra]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| part | framework | median ms" in result.stdout
    with open(out, "r", encoding="utf-8") as handle:
        return json.load(handle), result


def check_timing(record, runs=1):
    for key in TIMING_KEYS:
        assert key in record, key
    assert record["runs"] == runs and len(record["times_ms"]) == runs
    assert record["median_ms"] > 0 and record["first_call_s"] > 0 and record["compile_s"] >= 0
    assert record["min_ms"] <= record["median_ms"] <= record["max_ms"]


def check_report_header(report):
    for key in ("config_path", "image_size", "max_tokens", "runs", "warmup", "machine", "parts", "ms_threads",
                "torch_threads", "torch_enabled", "load_average_at_end"):
        assert key in report, key
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["cpu_model"]
    assert machine["versions"]["mindspore"] and machine["versions"]["numpy"]
    assert report["image_size"] == 64


def check_encoders_mindspore(encoders):
    assert encoders["mindspore"]["threads"] >= 1
    for key in ("swin", "bert", "total"):
        check_timing(encoders["mindspore"][key])
    assert encoders["mindspore_peak_rss_mb"] > 0 and encoders["peak_rss_mb"] >= encoders["mindspore_peak_rss_mb"]


def test_benchmark_encoders_against_torch(tmp_path):
    pytest.importorskip("torch", reason="the PyTorch side needs torch")
    pytest.importorskip("transformers", reason="the PyTorch side needs transformers")
    report, result = run_benchmark(tmp_path, "--parts", "encoders,stages", "--torch_threads", "1")
    check_report_header(report)
    assert report["torch_enabled"] and report["torch_threads"] == [1]
    encoders = report["parts"]["encoders"]
    check_encoders_mindspore(encoders)
    (torch_entry,) = encoders["torch"]
    assert torch_entry["threads"] == 1
    for key in ("swin", "bert", "total"):
        check_timing(torch_entry[key])
        assert torch_entry["ratio_mindspore_over_torch"][key] > 0
    # Same weights in both frameworks: the outputs agree (this checks the weight mapping, not speed).
    parity = encoders["parity"]
    assert parity["ok"], parity
    assert parity["swin_max_abs_diff"] < 1e-3 and parity["bert_max_abs_diff"] < 1e-3
    assert "PyTorch (1 thread)" in result.stdout and "Parity with the same weights" in result.stdout
    stages = report["parts"]["stages"]
    for index in range(1, 5):
        stage = stages[f"swin_stage{index}"]
        check_timing(stage["mindspore"])
        check_timing(stage["torch"][0])
        assert stage["torch"][0]["threads"] == 1


def test_benchmark_without_torch(tmp_path):
    report, result = run_benchmark(tmp_path, "--no_torch", "--parts", "encoders,inference")
    check_report_header(report)
    assert not report["torch_enabled"] and report["torch_skipped_reason"]
    encoders = report["parts"]["encoders"]
    check_encoders_mindspore(encoders)
    assert encoders["torch"] is None and "parity" not in encoders
    inference = report["parts"]["inference"]
    check_timing(inference["mindspore"])
    assert inference["batch"] == 1 and inference["peak_rss_mb"] > 0
    assert "PyTorch not measured" in result.stdout


def test_benchmark_train_part(tmp_path):
    report, result = run_benchmark(tmp_path, "--no_torch", "--parts", "train", timeout=900)
    train = report["parts"]["train"]
    check_timing(train["mindspore"])
    assert train["batch"] == 2 and train["parameters"] > 0 and train["peak_rss_mb"] > 0
    assert 0 < train["rss_built_mb"] <= train["rss_compiled_mb"] <= train["peak_rss_mb"]
    assert "Train step resident memory" in result.stdout


def test_statistics_and_arguments():
    record = timing_record(2.0, [0.3, 0.1, 0.2, 0.4])
    assert record["median_ms"] == pytest.approx(250.0)
    assert record["min_ms"] == pytest.approx(100.0) and record["max_ms"] == pytest.approx(400.0)
    assert record["compile_s"] == pytest.approx(1.75)
    assert summarise_times([0.005])["q1_ms"] == pytest.approx(5.0)
    assert thread_list("2,1,2") == [2, 1]
    with pytest.raises(Exception):
        thread_list("0")


def test_benchmark_data_part(tmp_path):
    data_dir = tmp_path / "data"
    extra = ("--parts", "data", "--data_dir", str(data_dir), "--data_images", "12", "--data_image_size", "96x64",
             "--data_batches", "2", "--data_batch_size", "2")
    report, result = run_benchmark(tmp_path, *extra)
    data = report["parts"]["data"]
    assert data["num_images"] == 12 and data["pipeline_image_size"] == 480 and data["batch_size"] == 2
    assert data["generate_s"] > 0 and data["peak_rss_mb"] > 0
    conversion = data["conversion"]
    assert conversion["splits"] == ["train", "val"]
    assert 0 < conversion["images"] <= 12 and conversion["sentences"] >= conversion["images"]
    for key in ("wall_s", "images_per_s", "sentences_per_s", "peak_rss_mb", "jpeg_bytes", "mindrecord_bytes",
                "mindrecord_disk_bytes", "size_ratio", "disk_ratio"):
        assert conversion[key] > 0, key
    for key, split in (("train", "train"), ("eval", "val")):
        assert [record["workers"] for record in data[key]] == [1, 2]
        for record in data[key]:
            assert record["split"] == split and record["samples"] > 0 and record["samples_per_s"] > 0
            assert record["median_ms"] > 0 and record["first_call_s"] > 0
    assert data["train"][0]["samples"] == 4  # 2 batches of 2 after the warm-up batches
    assert data["decode_limit"]["samples"] == 4 and data["decode_limit"]["samples_per_s"] > 0
    assert all(value > 0 for value in data["ratios"].values())
    assert "### Data: synthetic set of 12 images 96x64" in result.stdout and "decode limit" in result.stdout
    # A second run reuses the set in --data_dir (and converts it again).
    report, result = run_benchmark(tmp_path, *extra)
    assert report["parts"]["data"]["generate_s"] == 0 and "(reused)" in result.stdout
    assert report["parts"]["data"]["conversion"]["images"] == conversion["images"]
