"""Part `data`: REFER -> MindRecord conversion and the input pipelines, on a synthetic referring set.

Uses only the data modules' public entry points (generate_synthetic, build, create_dataset), so that it
keeps measuring the same thing while their insides change.
"""
import json
import multiprocessing
import os
import queue as queue_module
import shutil
import tempfile
import time

import numpy as np

from .machine import peak_rss_mb, resident_mb
from .measure import log, summarise_times, timing_record

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DATA_CONFIG = os.path.join(ROOT, "tiny_config.yaml")  # the pipelines do not depend on the model's size
SPLITS = ("train", "val")
PIPELINE_IMAGE_SIZE = 480
WARMUP_BATCHES = 2
WORKER_COUNTS = (1, 2)
DONE_MARK = "benchmark_synthetic.json"


# ----------------------------------------------------------------------------------------------
# The synthetic set and its conversion
# ----------------------------------------------------------------------------------------------

def synthetic_set(data_dir, num_images, image_size):
    """Folder of the synthetic set for these settings under data_dir, generated unless already complete.

    Returns (folder, seconds spent generating: 0.0 when reused). A set is complete once its mark file
    (written last) names the same settings."""
    from src.data.synthetic import generate_synthetic
    settings = {"num_images": num_images, "image_size": image_size, "seed": 0, "texture": True}
    root = os.path.join(data_dir, f"synthetic_{num_images}_{image_size}")
    mark = os.path.join(root, DONE_MARK)
    if os.path.isfile(mark):
        with open(mark, "r", encoding="utf-8") as handle:
            if json.load(handle) == settings:
                log(f"data: reusing the synthetic set in {root}")
                return root, 0.0
    shutil.rmtree(root, ignore_errors=True)
    log(f"data: generating {num_images} synthetic images of {image_size} in {root}")
    start = time.perf_counter()
    generate_synthetic(root, num_images=num_images, seed=0, image_size=image_size, texture=True, workers=2)
    seconds = time.perf_counter() - start
    with open(mark, "w", encoding="utf-8") as handle:
        json.dump(settings, handle)
    return root, seconds


def conversion_argv(root, mindrecord_dir):
    return ["--refer_data_root", root, "--image_root", os.path.join(root, "images"),
            "--vocab_file", os.path.join(root, "vocab.txt"), "--mindrecord_dir", mindrecord_dir,
            "--splits", ",".join(SPLITS)]


def conversion_job(argv, queue):
    """In a fresh process: build() and what it cost; puts a dict (or {"error": ...}) on the queue."""
    import resource
    try:
        from model_utils.config import get_config
        from src.data.build_mindrecord import build
        config = get_config(argv, DATA_CONFIG)
        rss_before = resident_mb()
        # importing MindSpore already ran a helper process; only a larger child of build() shows here
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        stats = build(config)
        wall = time.perf_counter() - start
        children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        queue.put({"wall_s": wall, "rss_before_build_mb": rss_before, "peak_rss_mb": peak_rss_mb(),
                   "children_peak_rss_mb": children_kib / 1024.0 if children_kib > children_before else None,
                   "splits": {split: {"images": sorted(int(i) for i in item.images),
                                      "sentences": int(item.sentences)} for split, item in stats.items()}})
    except Exception as err:  # reported by the parent as the part's error
        queue.put({"error": f"{type(err).__name__}: {err}"})


def convert(root, mindrecord_dir):
    """Runs the converter in its own process (so its peak RSS is its own); returns the job's dict."""
    shutil.rmtree(mindrecord_dir, ignore_errors=True)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=conversion_job, args=(conversion_argv(root, mindrecord_dir), queue))
    log(f"data: converting {', '.join(SPLITS)} to {mindrecord_dir}")
    process.start()
    result = None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except queue_module.Empty:
            if not process.is_alive() and queue.empty():
                raise RuntimeError(f"conversion process exited with code {process.exitcode}") from None
    process.join()
    if "error" in result:
        raise RuntimeError(f"conversion failed: {result['error']}")
    return result


def image_files(root, image_ids):
    """Paths of the images with these ids, as instances.json (COCO format) names them."""
    with open(os.path.join(root, "refcoco", "instances.json"), "r", encoding="utf-8") as handle:
        names = {image["id"]: image["file_name"] for image in json.load(handle)["images"]}
    return [os.path.join(root, "images", names[image_id]) for image_id in sorted(image_ids)]


def folder_bytes(folder):
    """(apparent size, disk use) of every file under folder, in bytes."""
    apparent = disk = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            info = os.stat(os.path.join(parent, name))
            apparent += info.st_size
            disk += info.st_blocks * 512
    return apparent, disk


def conversion_record(root, mindrecord_dir):
    """Conversion wall time, images/s, sentences/s, peak RSS, and the converted size against the JPEGs."""
    job = convert(root, mindrecord_dir)
    image_ids = set().union(*(set(split["images"]) for split in job["splits"].values()))
    sentences = sum(split["sentences"] for split in job["splits"].values())
    jpeg_bytes = sum(os.path.getsize(path) for path in image_files(root, image_ids))
    apparent, disk = folder_bytes(mindrecord_dir)
    return {"splits": list(job["splits"]), "images": len(image_ids), "sentences": sentences,
            "wall_s": job["wall_s"], "images_per_s": len(image_ids) / job["wall_s"],
            "sentences_per_s": sentences / job["wall_s"], "peak_rss_mb": job["peak_rss_mb"],
            "rss_before_build_mb": job["rss_before_build_mb"], "children_peak_rss_mb": job["children_peak_rss_mb"],
            "jpeg_bytes": jpeg_bytes, "mindrecord_bytes": apparent, "mindrecord_disk_bytes": disk,
            "size_ratio": apparent / jpeg_bytes, "disk_ratio": disk / jpeg_bytes,
            "train_images": job["splits"]["train"]["images"]}


# ----------------------------------------------------------------------------------------------
# Throughput: the pipelines and the single-core decode limit
# ----------------------------------------------------------------------------------------------

def pipeline_config(mindrecord_dir, workers, batch_size):
    from model_utils.config import get_config
    return get_config([], DATA_CONFIG, overrides={
        "mindrecord_dir": mindrecord_dir, "image_size": PIPELINE_IMAGE_SIZE, "num_parallel_workers": workers,
        "batch_size": batch_size, "eval_batch_size": batch_size})


def throughput(first_s, steady_s, samples):
    """timing_record per batch (or image) plus samples/s over the steady part."""
    record = timing_record(first_s, steady_s)
    record["samples"] = int(samples)
    record["samples_per_s"] = samples / sum(steady_s)
    return record


def pipeline_throughput(mindrecord_dir, split, training, workers, batch_size, batches):
    """samples/s of create_dataset(...) over `batches` batches after WARMUP_BATCHES (fewer when the split
    is short: at least one batch is timed); first_call_s is the pipeline's start-up to its first batch."""
    from src.data.dataset import create_dataset
    config = pipeline_config(mindrecord_dir, workers, batch_size)
    start = time.perf_counter()
    iterator = create_dataset(config, split, training=training).create_tuple_iterator(output_numpy=True,
                                                                                      num_epochs=1)
    times, sizes = [], []
    for columns in iterator:
        now = time.perf_counter()
        times.append(now - start)
        sizes.append(int(columns[0].shape[0]))
        start = now
        if len(times) == WARMUP_BATCHES + batches:
            break
    iterator.stop()
    if not times:
        raise RuntimeError(f"split '{split}' gave no batch of {batch_size}")
    warmup = min(WARMUP_BATCHES, len(times) - 1)
    record = throughput(times[0], times[warmup:] if warmup else times, sum(sizes[warmup:]))
    record.update({"split": split, "training": training, "workers": workers, "batch_size": batch_size,
                   "warmup_batches": warmup})
    return record


def decode_limit(paths, count):
    """images/s of a plain one-thread loop of the pipeline's own per-image work: preprocess_image on the
    encoded bytes (cv2.imdecode, bilinear resize to 480x480, float32 ImageNet normalisation into CHW), over
    `count` images cycling over the files (at most `count` of them are read into memory first, so the
    process's peak RSS does not grow with the set)."""
    import cv2
    from src.data.dataset import preprocess_image
    blobs = [np.fromfile(path, np.uint8).tobytes() for path in paths[:max(1, count)]]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        start = time.perf_counter()
        preprocess_image(blobs[0], PIPELINE_IMAGE_SIZE)
        first = time.perf_counter() - start
        times = []
        for index in range(count):
            start = time.perf_counter()
            preprocess_image(blobs[index % len(blobs)], PIPELINE_IMAGE_SIZE)
            times.append(time.perf_counter() - start)
    finally:
        cv2.setNumThreads(threads)
    record = throughput(first, times, count)
    record.update({"files": len(blobs), "threads": 1})
    return record


def pipeline_records(mindrecord_dir, args):
    """Train and eval pipelines at each worker count: {"train": [...], "eval": [...]}."""
    records = {"train": [], "eval": []}
    for key, split, training in (("train", "train", True), ("eval", "val", False)):
        for workers in WORKER_COUNTS:
            record = pipeline_throughput(mindrecord_dir, split, training, workers, args.data_batch_size,
                                         args.data_batches)
            log(f"data: {key} pipeline, {workers} worker(s): {record['samples_per_s']:.1f} samples/s")
            records[key].append(record)
    return records


def part_data(config, args):
    """Conversion cost and size, pipeline throughput (train, eval; 1 and 2 workers), decode limit."""
    del config  # the data settings come from DATA_CONFIG
    with tempfile.TemporaryDirectory(prefix="bench_data_") as scratch:
        data_dir = os.path.abspath(args.data_dir) if args.data_dir else scratch
        root, generate_s = synthetic_set(data_dir, args.data_images, args.data_image_size)
        mindrecord_dir = os.path.join(root, "mindrecord")
        conversion = conversion_record(root, mindrecord_dir)
        log(f"data: converted {conversion['images']} images in {conversion['wall_s']:.1f} s")
        pipelines = pipeline_records(mindrecord_dir, args)
        timed = pipelines["train"][0]["samples"]
        decode = decode_limit(image_files(root, conversion.pop("train_images")), timed)
        log(f"data: decode limit {decode['samples_per_s']:.1f} images/s")
    train = {record["workers"]: record["samples_per_s"] for record in pipelines["train"]}
    evaluation = {record["workers"]: record["samples_per_s"] for record in pipelines["eval"]}
    return {"config_path": DATA_CONFIG, "data_dir": args.data_dir or None, "num_images": args.data_images,
            "source_image_size": args.data_image_size, "pipeline_image_size": PIPELINE_IMAGE_SIZE,
            "batch_size": args.data_batch_size, "generate_s": generate_s, "conversion": conversion,
            "train": pipelines["train"], "eval": pipelines["eval"], "decode_limit": decode,
            "ratios": {"train_1_worker_over_decode_limit": train[1] / decode["samples_per_s"],
                       "train_2_over_1_workers": train[2] / train[1],
                       "eval_2_over_1_workers": evaluation[2] / evaluation[1]},
            "peak_rss_mb": peak_rss_mb()}
