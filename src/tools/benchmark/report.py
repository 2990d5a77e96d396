"""The report: one Markdown table row per measurement, and notes under the table."""
import os


def table_row(part, framework, record, rss=None):
    rss_text = f"{rss:.0f}" if isinstance(rss, (int, float)) else (rss or "")
    return (f"| {part} | {framework} | {record['median_ms']:.1f} | {record['q1_ms']:.1f}-{record['q3_ms']:.1f} | "
            f"{record['min_ms']:.1f}-{record['max_ms']:.1f} | {record['first_call_s']:.2f} | "
            f"{record['compile_s']:.2f} | {rss_text} |")


def plural(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def torch_name(threads):
    return f"PyTorch ({plural(threads, 'thread')})"


def torch_label(entry):
    return torch_name(entry["threads"])


def encoder_rows(result):
    rows = []
    ms_label = f"MindSpore ({plural(result['mindspore']['threads'], 'thread')})"
    for key, label in (("swin", "Swin encoder"), ("bert", "BERT encoder"), ("total", "Swin + BERT")):
        rss = result.get("mindspore_peak_rss_mb") if key == "total" else None
        rows.append(table_row(label, ms_label, result["mindspore"][key], rss))
        for entry in result.get("torch") or []:
            rss = f"{result['peak_rss_mb']:.0f} (process, both)" if key == "total" else None
            rows.append(table_row(label, torch_label(entry), entry[key], rss))
    return rows


def stage_rows(result):
    rows = []
    for key in sorted(name for name in result if name.startswith("swin_stage")):
        label = f"Swin stage {key[len('swin_stage'):]} blocks"
        rows.append(table_row(label, "MindSpore", result[key]["mindspore"]))
        for entry in result[key].get("torch") or []:
            rows.append(table_row(label, torch_label(entry), entry))
    return rows


def part_rows(part, result):
    if "error" in result:
        error = result["error"].replace("|", "/")
        return [f"| {part} | failed: {error} | | | | | | {result.get('peak_rss_mb', 0):.0f} |"]
    if part == "encoders":
        return encoder_rows(result)
    if part == "inference":
        return [table_row("CoupAlign inference (B=1)", "MindSpore", result["mindspore"], result["peak_rss_mb"])]
    if part == "data":
        return data_rows(result)
    if part == "train":
        return [table_row(f"CoupAlign train step (B={result['batch']})", "MindSpore", result["mindspore"],
                          result["peak_rss_mb"])]
    return stage_rows(result)


def markdown_report(report):
    machine = report["machine"]
    versions = ", ".join(f"{name} {version or 'not installed'}" for name, version in machine["versions"].items())
    lines = [f"## CoupAlign CPU benchmark ({os.path.basename(report['config_path'])}: image {report['image_size']}, "
             f"{report['max_tokens']} tokens)", "",
             f"- Machine: {machine['cpu_model']}, {machine['cpu_count']} cores; load average (1/5/15 min) "
             f"{machine['load_average_at_start']} at start, {report.get('load_average_at_end')} at end",
             f"- Versions: Python {machine['python']}, {versions}",
             f"- Threads: {threads_text(report)}",
             f"- Protocol: median, interquartile range and min-max of {report['runs']} runs after "
             f"{report['warmup']} warm-up calls, each timed call right after {report.get('lead_in', 0)} untimed "
             "call(s) of the same function; "
             "encoders timed interleaved (MindSpore, PyTorch, MindSpore, ...) "
             "with the same weights; first call includes graph compilation; compile = first call - median; "
             "peak RSS = ru_maxrss of the child process that ran the part", "",
             "| part | framework | median ms | IQR ms | min-max ms | first call s | compile s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for part, result in report["parts"].items():
        lines += part_rows(part, result)
    lines.append("")
    lines += encoder_notes(report["parts"].get("encoders"))
    lines += train_notes(report["parts"].get("train"))
    lines += data_notes(report["parts"].get("data"))
    return "\n".join(lines)


def train_notes(result):
    if not result or "error" in result or result.get("rss_compiled_mb") is None:
        return []
    return [f"Train step resident memory: {result['rss_built_mb']:.0f} MB with the model and optimizer built, "
            f"{result['rss_compiled_mb']:.0f} MB after compiling the training graph, {result['peak_rss_mb']:.0f} MB "
            f"at the peak ({result['parameters'] / 1e6:.1f} M parameters: weights, gradients and the two AdamW "
            f"moments take {result['parameters'] * 16 / 2 ** 20:.0f} MB)."]


def threads_text(report):
    text = (f"MindSpore CPU op threads {report['ms_threads']} "
            "(mindspore.device_context.cpu.op_tuning.threads_num)")
    if report["torch_enabled"]:
        text += (f"; PyTorch intra-op threads {', '.join(map(str, report['torch_threads']))} "
                 "(torch.set_num_threads, each timed)")
        for result in report["parts"].values():
            torch_threads = (result.get("threads") or {}).get("torch")
            if torch_threads:
                text += f", inter-op {torch_threads['inter_op_threads']}"
                break
    return text


def encoder_notes(result):
    if not result or "error" in result:
        return []
    if not result.get("torch"):
        return [f"PyTorch not measured: {result.get('torch_skipped_reason')}."]
    lines = []
    for entry in result["torch"]:
        ratio = entry["ratio_mindspore_over_torch"]
        lines.append(f"MindSpore / {torch_label(entry)}, ratio of medians: Swin {ratio['swin']:.2f}, "
                     f"BERT {ratio['bert']:.2f}, Swin + BERT {ratio['total']:.2f}.")
    parity = result["parity"]
    lines.append(f"Parity with the same weights: Swin max |diff| {parity['swin_max_abs_diff']:.2e}, BERT "
                 f"{parity['bert_max_abs_diff']:.2e} ({'OK' if parity['ok'] else 'MISMATCH'}, tolerance "
                 f"{parity['tolerance']:g}). PyTorch attention: {result.get('torch_attn_implementation')}.")
    return lines



def pipeline_label(record):
    return (f"{'train' if record['training'] else 'eval'} pipeline ({record['split']}, B={record['batch_size']}), "
            "ms per batch")


def data_rows(result):
    """Main-table rows of the data part: per-batch times (first call = start-up to the first batch)."""
    rows = [table_row(pipeline_label(record), f"MindSpore dataset ({plural(record['workers'], 'worker')})", record)
            for record in result["train"] + result["eval"]]
    rows.append(table_row("decode limit, ms per image", "cv2 (1 thread)", result["decode_limit"],
                          f"{result['peak_rss_mb']:.0f} (process)"))
    return rows


def megabytes(count):
    return f"{count / 2 ** 20:.1f} MB"


def data_notes(result):
    """The data part's own table: conversion, sizes, throughput and the ratios asked for."""
    if not result or "error" in result:
        return []
    conversion, ratios, decode = result["conversion"], result["ratios"], result["decode_limit"]
    reused = "reused" if result["generate_s"] == 0 else f"generated in {result['generate_s']:.1f} s"
    lines = ["", f"### Data: synthetic set of {result['num_images']} images {result['source_image_size']} "
             f"({reused}), pipelines at image {result['pipeline_image_size']}, batch {result['batch_size']}", "",
             "| data | throughput | ratio | peak RSS MB |", "|---|---|---|---|",
             f"| conversion of {', '.join(conversion['splits'])}: {conversion['images']} images, "
             f"{conversion['sentences']} sentences, {conversion['wall_s']:.1f} s | "
             f"{conversion['images_per_s']:.1f} images/s, {conversion['sentences_per_s']:.1f} sentences/s | | "
             f"{conversion['peak_rss_mb']:.0f} |",
             f"| decode limit: cv2 decode + resize + normalise, 1 thread | {decode['samples_per_s']:.1f} images/s "
             "| | |"]
    for key in ("train", "eval"):
        for record in result[key]:
            if record["workers"] == 1:
                ratio = (f"{ratios['train_1_worker_over_decode_limit']:.2f} of the decode limit"
                         if key == "train" else "")
            else:
                ratio = f"{ratios[f'{key}_2_over_1_workers']:.2f}x 1 worker"
            lines.append(f"| {key} pipeline, {plural(record['workers'], 'worker')} | "
                         f"{record['samples_per_s']:.1f} samples/s | {ratio} | |")
    lines += ["", f"Converted size: JPEGs {megabytes(conversion['jpeg_bytes'])} -> MindRecord "
              f"{megabytes(conversion['mindrecord_bytes'])} apparent ({conversion['size_ratio']:.2f}x), "
              f"{megabytes(conversion['mindrecord_disk_bytes'])} on disk ({conversion['disk_ratio']:.2f}x). "
              "Conversion peak RSS is that of its own process (MindSpore imported). Pipelines: batches timed "
              "after 2 warm-up batches (fewer when a split is short), first call = start-up to the first batch; "
              "decode limit: the train images read into memory, timed after one untimed image."]
    return lines
