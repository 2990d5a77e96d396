"""Writing files atomically: nothing half-written ever appears under the final name."""
import contextlib
import os


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yields a temporary path next to `path`; renames it over `path` when the block succeeds, removes it
    when the block fails.

    The temporary name ends in `suffix`: writers that append their own extension to names without it
    (ms.save_checkpoint adds ".ckpt", ms.export adds ".mindir" / ".air" / ".onnx") must get a name that
    already ends in it, or the file they write is not the one renamed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, f".{os.path.basename(path)}.partial{suffix}")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
