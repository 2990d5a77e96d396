"""Parts `inference` and `train`: the whole CoupAlign network (MindSpore only)."""
import numpy as np

from .machine import peak_rss_mb, resident_mb
from .measure import Timer, log, run_mindspore, timed_call
from .models import build_coupalign, make_inputs, mindspore_inputs, part_result


def part_inference(config, args):
    """Whole CoupAlign forward pass (mask logits at full resolution), batch 1."""
    result = part_result(args)
    tensors = mindspore_inputs(make_inputs(config, batch=1), ("image", "input_ids", "attention_mask"))
    log("inference: building CoupAlign")
    net = build_coupalign(config)
    net.set_train(False)
    timer = Timer(args, "inference")
    timer.first_calls({"inference": lambda: run_mindspore(net, *tensors)})
    timer.run()
    result["mindspore"] = timer.record("inference")
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def part_train(config, args):
    """One training step: forward, losses, backward, clipping, AdamWeightDecay update."""
    from src.engine.optimizer import build_optimizer
    from src.engine.train_step import TrainStep
    from src.models.losses import CoupAlignWithLoss
    batch = args.train_batch
    result = part_result(args, batch)
    tensors = mindspore_inputs(make_inputs(config, batch=batch), ("image", "input_ids", "attention_mask", "gt_mask"))
    log(f"train: building CoupAlign + losses + AdamWeightDecay, batch {batch}")
    loss_net = CoupAlignWithLoss(build_coupalign(config), config)
    optimizer, schedule = build_optimizer(loss_net, config, steps_per_epoch=1000)
    _, group_rates = schedule.for_step(0)
    step = TrainStep(loss_net, optimizer, config.grad_clip_norm, loss_scale=1.0)
    step.set_train(True)
    result["rss_built_mb"] = resident_mb()
    # Compiled on its own first, so that the memory the compiled graph holds is seen apart from the step's.
    compile_s, _ = timed_call(lambda: step.compile(group_rates, *tensors))
    result["rss_compiled_mb"] = resident_mb()
    log(f"train: graph compiled in {compile_s:.1f} s, resident memory {result['rss_compiled_mb'] or 0:.0f} MB "
        f"(model built: {result['rss_built_mb'] or 0:.0f} MB)")

    def train_step():
        outputs = run_mindspore(step, group_rates, *tensors)
        return float(outputs[0].asnumpy())

    timer = Timer(args, "train")
    loss = timer.first_calls({"train": train_step})["train"]
    timer.first_s["train"] += compile_s  # the first call proper includes the compilation done apart above
    log(f"train: first loss {loss:.4f}")
    timer.run()
    result["mindspore"] = timer.record("train")
    result["parameters"] = int(sum(int(np.prod(p.shape)) for p in loss_net.trainable_params()))
    result["peak_rss_mb"] = peak_rss_mb()
    return result
