"""Check converted file sets in full: every file's sha256 against the set's manifest, then every stored image
and mask decoded, naming the row (image_id, its ref_ids and sent_ids) of anything bad.

python -m src.data.verify --mindrecord_dir M [--dataset refcoco] [--split_by unc] [--splits val,train]

Without --dataset / --split_by / --splits every set with a manifest in M is checked. Exit status 0 when every
set is intact, 1 otherwise (one `error:` line per problem). Train, eval and predict check only the sizes and
counts at start (dataset.load_split_table); this reads everything (docs/data_preparation.md has the time).
"""
import argparse
import glob
import os
import sys
import tempfile
import time

import mindspore.dataset as ds
from tqdm import tqdm

from model_utils.config import ConfigError, get_config
from src.data.dataset import (INDEX_SUFFIX, MANIFEST_SUFFIX, DecodeError, LayoutError, decode_image, decode_mask,
                              first_mindrecord_file, index_path, load_split_table, manifest_path, manifest_problems,
                              mindrecord_name, mindrecord_path, read_manifest, reconvert_hint, ref_mask_bytes)

MAX_LISTED = 20  # problems listed per set; the rest are counted
ROW_COLUMNS = ["image_id", "height", "width", "image", "masks", "mask_ends", "ref_ids"]


class NativeStderr:
    """Runs a call with file descriptor 2 sent to a temporary file and returns what native code wrote there.

    libjpeg (inside OpenCV) decodes much damage into a damaged picture and only prints 'Corrupt JPEG data:
    ...' on the process's stderr; that text is the one sign of it, so it is caught here."""

    def __init__(self):
        self.sink = tempfile.TemporaryFile()
        self.saved = os.dup(2)

    def call(self, function, *args):
        """(function(*args), the text it wrote to fd 2)."""
        sys.stderr.flush()
        os.dup2(self.sink.fileno(), 2)
        try:
            result = function(*args)
        finally:
            os.dup2(self.saved, 2)
        return result, self._take()

    def _take(self):
        fd = self.sink.fileno()
        length = os.lseek(fd, 0, os.SEEK_CUR)
        if not length:
            return ""
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, length).decode("utf-8", "replace")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        return text.strip()

    def close(self):
        os.close(self.saved)
        self.sink.close()


def decode_image_strictly(image_bytes, height, width, native):
    """decode_image, raising DecodeError also when libjpeg warns (damaged data) or the size is not the row's."""
    image, warnings = native.call(decode_image, image_bytes)
    if warnings:
        raise DecodeError(f"the image is damaged: the decoder says '{' / '.join(warnings.splitlines())}'")
    if image.shape[:2] != (height, width):
        raise DecodeError(f"the image is {image.shape[1]}x{image.shape[0]}, the row says {width}x{height}")


def name_row(table, row, slot=None):
    """'image_id I (ref_id R: sent_id S, ...; ...)' of an image row, or of one of its refs."""
    entries = table.ref_entries(row)
    refs = entries if slot is None else [entries[slot]]
    samples = "; ".join(f"ref_id {int(table.ref_ids[ref])}: sent_id "
                        + ", ".join(str(int(table.sent_ids[sent])) for sent in table.sent_entries(ref))
                        for ref in refs)
    return f"{table.describe(row)} ({samples})"


def mask_problems(table, row, record):
    entries = table.ref_entries(row)
    stored_refs = record["ref_ids"].tolist()
    if stored_refs != table.ref_ids[entries.start:entries.stop].tolist():
        return [f"{name_row(table, row)}: the row holds ref_ids {stored_refs}, its index lists others"]
    if len(record["mask_ends"]) != len(entries):
        return [f"{name_row(table, row)}: the row holds {len(record['mask_ends'])} masks for {len(entries)} refs"]
    problems = []
    for slot in range(len(entries)):
        try:
            decode_mask(ref_mask_bytes(record["masks"], record["mask_ends"], slot), record["height"], record["width"])
        except DecodeError as err:
            problems.append(f"{name_row(table, row, slot)}: {err}")
    return problems


def record_problems(table, row, record, native):
    """Problems of one stored row (the row's number in the file set is `row`)."""
    if int(record["image_id"]) != int(table.image_ids[row]):
        return [f"row {row} holds image_id {int(record['image_id'])}, its index says {table.describe(row)}"]
    problems = []
    try:
        decode_image_strictly(record["image"], int(record["height"]), int(record["width"]), native)
    except DecodeError as err:
        problems.append(f"{name_row(table, row)}: {err}")
    return problems + mask_problems(table, row, record)


def row_problems(first_file, table, label):
    """Reads every row of the set in stored order and decodes its image and masks."""
    data = ds.MindDataset(first_file, columns_list=ROW_COLUMNS, shuffle=False)
    native = NativeStderr()
    problems, rows = [], 0
    try:
        records = data.create_dict_iterator(output_numpy=True, num_epochs=1)
        for row, record in enumerate(tqdm(records, total=len(table.image_ids), desc=label, unit="image",
                                          disable=None, leave=False)):
            problems += record_problems(table, row, record, native)
            rows += 1
    except RuntimeError as err:
        problems.append(f"reading the rows failed after {rows}: {str(err).splitlines()[0]}")
    finally:
        native.close()
    if rows != len(table.image_ids) and not problems:
        problems.append(f"{rows} rows read, the index lists {len(table.image_ids)}")
    return problems


class SetCheck:
    """The outcome of verifying one file set."""

    def __init__(self, name):
        self.name = name
        self.problems = []
        self.counts = None  # (images, refs, sentences) once the rows were read
        self.seconds = 0.0


def verify_set(manifest_file):
    folder = os.path.dirname(manifest_file)
    check = SetCheck(os.path.basename(manifest_file)[:-len(MANIFEST_SUFFIX)])
    started = time.monotonic()
    try:
        manifest = read_manifest(manifest_file, manifest_file, "convert the set again")
        dataset, split_by, split = manifest["dataset"], manifest["split_by"], manifest["split"]
    except LayoutError as err:
        check.problems.append(str(err))
        return check
    except KeyError as err:
        check.problems.append(f"{manifest_file} lacks {err}; convert the set again")
        return check
    check.problems = manifest_problems(manifest, folder, checksums=True)
    if check.problems:
        # MindSpore can crash natively (segfault) on damaged bytes, so a damaged set's rows are not read.
        check.problems.append("rows not read: reading damaged files can crash MindSpore; "
                              + reconvert_hint(dataset, split_by, folder))
        return check
    first_file = first_mindrecord_file(mindrecord_path(folder, dataset, split_by, split))
    try:
        table = load_split_table(first_file, index_path(folder, dataset, split_by, split), manifest_file,
                                 reconvert_hint(dataset, split_by, folder))
    except LayoutError as err:
        check.problems.append(str(err))
        return check
    check.problems = row_problems(first_file, table, check.name)
    check.counts = (len(table.image_ids), len(table.ref_ids), len(table.sent_ids))
    check.seconds = time.monotonic() - started
    return check


def found_sets(mindrecord_dir):
    """(manifest files, index files without a manifest: sets of an older converter) in mindrecord_dir."""
    manifests = sorted(glob.glob(os.path.join(glob.escape(mindrecord_dir), "*" + MANIFEST_SUFFIX)))
    indexes = sorted(glob.glob(os.path.join(glob.escape(mindrecord_dir), "*" + INDEX_SUFFIX)))
    with_manifest = {path[:-len(MANIFEST_SUFFIX)] for path in manifests}
    return manifests, [path for path in indexes if path[:-len(INDEX_SUFFIX)] not in with_manifest]


def requested_splits(config):
    splits = config.splits if isinstance(config.splits, (list, tuple)) else str(config.splits or "").split(",")
    return [str(split).strip() for split in splits if str(split).strip()]


def wanted_manifests(config, dataset, split_by):
    """Manifest paths of the sets the flags name (dataset and split_by default to the config's once any is
    given); None when none is given: every set of mindrecord_dir."""
    splits = requested_splits(config)
    if not (dataset or split_by or splits):
        return None
    dataset, split_by = dataset or config.dataset, split_by or config.split_by
    if splits:
        return [manifest_path(config.mindrecord_dir, dataset, split_by, split) for split in splits]
    prefix = mindrecord_name(dataset, split_by, "")
    return [path for path in found_sets(config.mindrecord_dir)[0] if os.path.basename(path).startswith(prefix)]


def report(check):
    """Prints the set's outcome; True when it is intact."""
    if not check.problems:
        images, refs, sentences = check.counts
        print(f"{check.name}: {images} images, {refs} refs, {sentences} sentences, all intact "
              f"({check.seconds:.1f} s)", flush=True)
        return True
    for problem in check.problems[:MAX_LISTED]:
        print(f"error: {check.name}: {problem}", file=sys.stderr)
    if len(check.problems) > MAX_LISTED:
        print(f"error: {check.name}: ... and {len(check.problems) - MAX_LISTED} more", file=sys.stderr)
    return False


def explicit_flags(argv):
    """--dataset and --split_by as given on the command line (None when not given): they narrow the sets."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--split_by", "--split-by", default=None)
    known, _ = parser.parse_known_args(argv)
    return known.dataset, known.split_by


def verify(config, dataset=None, split_by=None):
    """Verifies the wanted sets, printing one line per set (and per problem); True when all are intact."""
    if not config.mindrecord_dir or not os.path.isdir(config.mindrecord_dir):
        raise ConfigError(f"--mindrecord_dir {config.mindrecord_dir!r} is not a folder")
    started = time.monotonic()
    manifests = wanted_manifests(config, dataset, split_by)
    intact = True
    if manifests is None:
        manifests, older = found_sets(config.mindrecord_dir)
        for index_file in older:
            print(f"error: {index_file}: its set has no manifest: it was written by an older converter (before "
                  "manifests); convert it again", file=sys.stderr)
            intact = False
        if not manifests and not older:
            print(f"error: no converted set (*{MANIFEST_SUFFIX}) in {config.mindrecord_dir}", file=sys.stderr)
            return False
    for manifest_file in manifests:
        if not os.path.isfile(manifest_file):
            print(f"error: {manifest_file} not found (no such set, or one written by an older converter)",
                  file=sys.stderr)
            intact = False
            continue
        intact = report(verify_set(manifest_file)) and intact
    print(f"verified {len(manifests)} set(s) in {time.monotonic() - started:.1f} s: "
          f"{'all intact' if intact else 'damage found'}", flush=True)
    return intact


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = get_config(argv)
        return 0 if verify(config, *explicit_flags(argv)) else 1
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
