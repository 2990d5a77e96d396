"""Files: written atomically (nothing half-written ever appears under the final name), output paths checked
before long work, checksums."""
import contextlib
import hashlib
import json
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


def write_json_atomic(path, data, indent=2):
    """`data` as JSON at `path`, written atomically (see atomic_path)."""
    with atomic_path(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=indent)


def _nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _check_writable_folder(folder, flag, path):
    if not os.path.isdir(folder):
        raise ValueError(f"--{flag} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--{flag} {path}: cannot write in {folder} (permission denied)")


def check_output_file(path, flag):
    """Before long work: ValueError naming --flag and the path if a file cannot be written there (an existing
    folder, a parent that is a file, a folder without write permission)."""
    if os.path.isdir(path):
        raise ValueError(f"--{flag} {path} is a folder; give a file name")
    _check_writable_folder(_nearest_existing(os.path.dirname(os.path.abspath(path))), flag, path)


def check_output_folder(path, flag):
    """Before long work: ValueError naming --flag and the path if it cannot be a folder to write in."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--{flag} {path} is a file, not a folder")
    _check_writable_folder(_nearest_existing(path), flag, path)


def file_sha256(path, block_bytes=4 * 1024 * 1024):
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_bytes), b""):
            digest.update(block)
    return digest.hexdigest()
