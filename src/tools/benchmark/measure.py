"""Timing: the one protocol every part follows (first call, warm-up, interleaved timed runs), and its statistics."""
import sys
import time

import numpy as np


def log(message):
    """Progress line on stderr."""
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summarise_times(seconds):
    """Per-call times in seconds -> median, quartiles, min, max and mean in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "runs": int(ms.size),
        "median_ms": float(np.median(ms)),
        "q1_ms": float(np.percentile(ms, 25)),
        "q3_ms": float(np.percentile(ms, 75)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "times_ms": [round(float(value), 3) for value in ms],
    }


def timing_record(first_call_s, steady_s):
    """Statistics of the steady calls plus the first call and the compile estimate derived from it."""
    record = summarise_times(steady_s)
    record["first_call_s"] = float(first_call_s)
    record["compile_s"] = max(0.0, float(first_call_s) - record["median_ms"] / 1000.0)
    return record


def timed_call(function):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def wait_for(outputs):
    """Returns once `outputs` are computed: reads the last tensor of a (nested) tuple back to the host.

    A GRAPH_MODE call on CPU already returns after the graph ran (checked: a 2048^3 matmul chain returns
    after its compute time, reading back adds 0.1 ms); this keeps the timing honest should the runtime
    launch asynchronously. mindspore.runtime.synchronize() does not support the CPU device in 2.10.
    """
    last = outputs
    while isinstance(last, (tuple, list)):
        last = last[-1]
    last.asnumpy()
    return outputs


def run_mindspore(cell, *inputs):
    return wait_for(cell(*inputs))


class Timer:
    """Functions timed together, by key: `first_calls` times the very first call of each (graph compilation
    included) and warms them up; `run` then times them interleaved; `record` gives the statistics.

    Interleaving rounds (one call of each function in turn, each timed call right after `lead_in` untimed
    calls of the same function) spreads a drift of the machine's load evenly over the functions.
    """

    def __init__(self, args, label):
        self.runs, self.warmup, self.lead_in = args.runs, args.warmup, args.lead_in
        self.label = label
        self.functions, self.first_s, self.times = {}, {}, {}

    def first_calls(self, functions, labels=None):
        """Times the first call of each of {key: function} (logged under labels[key]), then `warmup` rounds
        of untimed calls of them; returns {key: result of the first call}."""
        results = {}
        for key, function in functions.items():
            self.functions[key] = function
            self.first_s[key], results[key] = timed_call(function)
            log(f"{(labels or {}).get(key, self.label)}: first call {self.first_s[key]:.2f} s")
        for _ in range(self.warmup):
            for function in functions.values():
                function()
        return results

    def run(self, order=None):
        """`runs` interleaved rounds over the functions (in `order`, default: as added)."""
        order = list(order or self.functions)
        for key in order:
            self.times[key] = []
        for round_index in range(self.runs):
            for key in order:
                for _ in range(self.lead_in):
                    self.functions[key]()
                self.times[key].append(timed_call(self.functions[key])[0])
            log(f"{self.label}: run {round_index + 1}/{self.runs}: "
                + ", ".join(f"{self.times[key][-1] * 1000:.0f} ms" for key in order))

    def record(self, *keys):
        """timing_record of one function, or of the sum of several (first calls and each round summed)."""
        first = sum(self.first_s[key] for key in keys)
        steady = [sum(values) for values in zip(*(self.times[key] for key in keys))]
        return timing_record(first, steady)
