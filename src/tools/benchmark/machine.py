"""The machine (CPU, versions, load, memory) and the thread set-up of MindSpore and PyTorch."""
import importlib.util
import os
import platform
import resource
from importlib import metadata

PACKAGES = ("mindspore", "torch", "transformers", "numpy")


def peak_rss_mb():
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def resident_mb():
    """Current resident set size of this process (VmRSS), or None where /proc is missing."""
    try:
        with open("/proc/self/status", "r", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def cpu_model():
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def load_average():
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def machine_info():
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: package_version(name) for name in PACKAGES},
    }
    info["load_average_at_start"] = load_average()
    return info


def torch_unavailable_reason():
    """None when torch and transformers import; else why the PyTorch side is left out."""
    for name in ("torch", "transformers"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed"
    return None


def torch_skip_reason(args):
    """Why this run leaves the PyTorch side out, or None."""
    return "--no_torch given" if args.no_torch else torch_unavailable_reason()


def setup_mindspore(threads):
    """GRAPH_MODE on CPU with `threads` kernel threads; returns the settings used."""
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(1)
    settings = {"mode": "GRAPH_MODE", "device": "CPU"}
    try:
        ms.device_context.cpu.op_tuning.threads_num(threads)
        settings["op_threads_num"] = threads
        settings["op_threads_api"] = "mindspore.device_context.cpu.op_tuning.threads_num"
    except (AttributeError, RuntimeError) as err:
        settings["op_threads_num"] = None
        settings["op_threads_error"] = str(err)
    try:
        settings["runtime_num_threads"] = ms.get_context("runtime_num_threads")
    except (ValueError, KeyError):
        pass
    return settings


def setup_torch(threads):
    """torch with `threads` intra-op threads; returns the settings used."""
    import torch
    torch.set_num_threads(threads)
    return {"intra_op_threads": torch.get_num_threads(), "inter_op_threads": torch.get_num_interop_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available())}
