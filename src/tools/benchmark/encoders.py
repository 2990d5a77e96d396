"""Parts `encoders` and `stages`: our Swin and BERT against transformers' with the same weights."""
import numpy as np

import mindspore as ms

from ..hf_bridge import hf_bert_from_ours, hf_bert_words, hf_swin_from_ours, hf_swin_stage_maps
from .machine import peak_rss_mb, setup_torch, torch_skip_reason
from .measure import Timer, log, run_mindspore
from .models import StageBlocks, build_our_encoders, make_inputs, mindspore_inputs, part_result
from .report import plural, torch_name

PARITY_TOLERANCE = 1e-3


def torch_call(torch, threads, function):
    """`function` run under torch.inference_mode with `threads` intra-op threads."""
    def call():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return function()
    return call


def max_abs_diff(ours, theirs):
    return max(float(np.abs(mine.asnumpy() - ref.numpy()).max()) for mine, ref in zip(ours, theirs))


def parity_record(our_maps, their_maps, our_words, their_words):
    swin_diff = max_abs_diff(our_maps, their_maps)
    bert_diff = max_abs_diff([our_words], [their_words])
    ok = swin_diff < PARITY_TOLERANCE and bert_diff < PARITY_TOLERANCE
    log(f"encoders: parity with transformers (same weights): Swin max |diff| {swin_diff:.2e}, "
        f"BERT {bert_diff:.2e} -> {'OK' if ok else 'MISMATCH'} (tolerance {PARITY_TOLERANCE:g})")
    return {"swin_max_abs_diff": swin_diff, "bert_max_abs_diff": bert_diff, "tolerance": PARITY_TOLERANCE,
            "ok": ok}


def ratios(ours, theirs, keys=("swin", "bert", "total")):
    """MindSpore median / PyTorch median per key."""
    return {key: ours[key]["median_ms"] / theirs[key]["median_ms"] for key in keys}


def encoder_records(timer, framework):
    """Swin, BERT and their sum for one framework key ("ms" or a thread count)."""
    return {"swin": timer.record(("swin", framework)), "bert": timer.record(("bert", framework)),
            "total": timer.record(("swin", framework), ("bert", framework))}


def part_encoders(config, args):
    """Swin and BERT, MindSpore against PyTorch transformers with the same weights, batch 1."""
    result = part_result(args)
    inputs = make_inputs(config, batch=1)
    image, ids, mask = mindspore_inputs(inputs, ("image", "input_ids", "attention_mask"))
    log("encoders: building our Swin and BERT")
    swin, bert = build_our_encoders(config)
    timer = Timer(args, "encoders")
    ours = timer.first_calls({("swin", "ms"): lambda: run_mindspore(swin, image),
                              ("bert", "ms"): lambda: run_mindspore(bert, ids, mask)},
                             {("swin", "ms"): "encoders: MindSpore Swin", ("bert", "ms"): "encoders: MindSpore BERT"})
    result["mindspore_peak_rss_mb"] = peak_rss_mb()

    reason = torch_skip_reason(args)
    if reason is None:
        import torch
        result["threads"]["torch"] = setup_torch(args.torch_threads[0])
        log("encoders: building transformers SwinModel and BertModel with our weights")
        torch_swin, torch_bert = hf_swin_from_ours(config, swin), hf_bert_from_ours(config, bert)
        result["torch_attn_implementation"] = {"swin": torch_swin.config._attn_implementation,
                                               "bert": torch_bert.config._attn_implementation}
        t_image = torch.from_numpy(inputs["image"])
        t_ids = torch.from_numpy(inputs["input_ids"].astype(np.int64))
        t_mask = torch.from_numpy(inputs["attention_mask"].astype(np.int64))
        for threads in args.torch_threads:
            name = plural(threads, "thread")
            theirs = timer.first_calls(
                {("swin", threads): torch_call(torch, threads, lambda: hf_swin_stage_maps(torch_swin, t_image)),
                 ("bert", threads): torch_call(torch, threads, lambda: hf_bert_words(torch_bert, t_ids, t_mask))},
                {("swin", threads): f"encoders: PyTorch Swin ({name})",
                 ("bert", threads): f"encoders: PyTorch BERT ({name})"})
            if "parity" not in result:
                result["parity"] = parity_record(ours[("swin", "ms")], theirs[("swin", threads)],
                                                 ours[("bert", "ms")], theirs[("bert", threads)])
    del ours
    # One round: Swin in MindSpore, then in PyTorch (each thread count), then BERT likewise.
    frameworks = ["ms"] + (args.torch_threads if reason is None else [])
    timer.run([(encoder, framework) for encoder in ("swin", "bert") for framework in frameworks])
    result["mindspore"] = dict(encoder_records(timer, "ms"), threads=args.ms_threads)
    result["torch"] = None
    if reason is None:
        result["torch"] = []
        for threads in args.torch_threads:
            record = encoder_records(timer, threads)
            result["torch"].append(dict(record, threads=threads,
                                        ratio_mindspore_over_torch=ratios(result["mindspore"], record)))
    else:
        result["torch_skipped_reason"] = reason
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def part_stages(config, args):
    """Swin stage by stage (blocks only, batch 1), MindSpore against PyTorch."""
    result = part_result(args)
    swin, _ = build_our_encoders(config)
    reason = torch_skip_reason(args)
    if reason is None:
        import torch
        result["threads"]["torch"] = setup_torch(args.torch_threads[0])
        torch_swin = hf_swin_from_ours(config, swin)
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(swin.resolutions):
        tokens = rng.standard_normal((1, height * width, swin.dims[index]), dtype=np.float32)
        cell = StageBlocks(swin.layers[index])
        cell.set_train(False)
        x = ms.Tensor(tokens)
        label = (f"stages: Swin stage {index + 1} ({len(swin.layers[index].blocks)} blocks, {height}x{width}, "
                 f"C={swin.dims[index]})")
        calls = {"ms": lambda cell=cell, x=x: run_mindspore(cell, x)}
        labels = {"ms": f"{label} MindSpore"}
        if reason is None:
            blocks = torch_swin.encoder.layers[index].blocks
            t_tokens = torch.from_numpy(tokens)

            def torch_blocks(blocks=blocks, hidden=t_tokens, size=(height, width)):
                for block in blocks:
                    hidden = block(hidden, size)[0]
                return hidden

            for threads in args.torch_threads:
                calls[threads] = torch_call(torch, threads, torch_blocks)
                labels[threads] = f"{label} {torch_name(threads)}"
        timer = Timer(args, label)
        timer.first_calls(calls, labels)
        timer.run()
        record = {"mindspore": timer.record("ms"), "torch": None}
        if reason is None:
            record["torch"] = []
            for threads in args.torch_threads:
                entry = dict(timer.record(threads), threads=threads)
                entry["ratio_mindspore_over_torch"] = record["mindspore"]["median_ms"] / entry["median_ms"]
                record["torch"].append(entry)
        result[f"swin_stage{index + 1}"] = record
    result["peak_rss_mb"] = peak_rss_mb()
    return result
