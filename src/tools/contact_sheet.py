"""Contact sheet of a checkpoint: the first sentence of each of the first N refs of a split in stored order
(not chosen by score; one per ref, so that the tiles show N targets, several of them in the same image), each
tile the image with the predicted mask tinted, the ground truth outlined, the sample's IoU and sentence.

python -m src.tools.contact_sheet --config_path C --ckpt_path K --mindrecord_dir M [--output contact_sheet.png]
    [--num_examples 8] [--eval_split val]    (default split: the first of --eval_splits)
"""
import argparse
import json
import math
import sys

import cv2
import numpy as np
import mindspore.dataset as ds

from model_utils.config import config_or_exit, run_or_exit
from ..checkpoint import load_network_weights
from ..commands.eval import parse_splits
from ..commands.predict import overlay_mask
from ..context import setup_context
from ..data.dataset import check_token_ids, create_dataset, decode_image, raising_decode_errors, split_table
from ..evaluation import intersection_union, sample_ious
from ..files import atomic_path
from ..models.coupalign import CoupAlign

DEFAULT_OUTPUT = "contact_sheet.png"  # not the config's prediction.png, which predict.py writes
GRID_COLUMNS = 4
TILE_GAP = 4  # pixels of background between tiles, so that neighbouring images do not merge
BACKGROUND = (64, 64, 64)
GROUND_TRUTH_COLOUR = (255, 0, 255)  # BGR magenta: unlike overlay_mask's yellow and the synthetic objects' colours
LEGEND = "blue tint, yellow outline: predicted mask   magenta outline: ground truth"


def parse_tool_flags(argv):
    """(--num_examples, --eval_split, the remaining arguments for the config with --output set)."""
    parser = argparse.ArgumentParser(prog="python -m src.tools.contact_sheet", add_help=False)
    parser.add_argument("--num_examples", type=int, default=8)
    parser.add_argument("--eval_split", default="")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    options, rest = parser.parse_known_args(argv)
    return options.num_examples, options.eval_split, rest + ["--output", options.output]


def shown_entries(table, count):
    """Sentence entries shown: the first sentence of each of the first `count` refs in evaluation order."""
    return table.ref_first_sent[:count]


def sample_pictures(config, split, count):
    """{sent_id: (RGB image squashed to image_size, raw sentence)} of the shown samples (shown_entries),
    read from the rows of the MindRecord (the index keeps only tokens)."""
    first_file, table = split_table(config, split)
    entries = shown_entries(table, count)
    rows = table.ref_images[table.sent_refs[entries]]
    unique_rows = sorted(set(rows.tolist()))
    records = ds.MindDataset(first_file, columns_list=["image", "sentences"], sampler=ds.SubsetSampler(unique_rows))
    row_data = dict(zip(unique_rows, records.create_tuple_iterator(output_numpy=True, num_epochs=1)))
    size = int(config.image_size)
    pictures = {}
    for entry, row in zip(entries.tolist(), rows.tolist()):
        image_bytes, sentences_json = row_data[row]
        first_entry_of_row = table.ref_first_sent[np.searchsorted(table.ref_images, row)]
        sentence = json.loads(str(sentences_json))[entry - first_entry_of_row]
        image = cv2.resize(decode_image(image_bytes), (size, size), interpolation=cv2.INTER_LINEAR)
        pictures[int(table.sent_ids[entry])] = (image, sentence)
    return pictures


def predict_samples(net, dataset, wanted_sent_ids):
    """Predicted and ground-truth masks (n, S, S) bool, ref_ids and sent_ids of the samples of an evaluation
    pipeline whose sent_id is wanted, in pipeline order, with the threshold of src.evaluation.predict_counts
    (logit > 0); stops reading once all are found."""
    wanted = set(int(sent_id) for sent_id in wanted_sent_ids)
    preds, targets, ref_ids, sent_ids = [], [], [], []
    with raising_decode_errors():
        for batch in dataset.create_dict_iterator(num_epochs=1):
            batch_sent_ids = batch["sent_id"].asnumpy().reshape(-1)
            keep = np.isin(batch_sent_ids, list(wanted))
            if keep.any():
                logits = net(batch["image"], batch["input_ids"], batch["attention_mask"]).asnumpy()
                preds.append(logits[keep, 0] > 0)
                targets.append(batch["mask"].asnumpy()[keep, 0] > 0.5)
                ref_ids.append(batch["ref_id"].asnumpy().reshape(-1)[keep])
                sent_ids.append(batch_sent_ids[keep])
                wanted -= set(batch_sent_ids[keep].tolist())
            if not wanted:
                break
    if not sent_ids:
        raise ValueError("the split has no samples")
    return [np.concatenate(parts) for parts in (preds, targets, ref_ids, sent_ids)]


def make_tile(image, pred, target, iou, sentence):
    """overlay_mask's picture of the prediction with the ground truth outlined and 'IoU x.xx  sentence' below."""
    tile = overlay_mask(image, pred, f"IoU {iou:.2f}  {sentence}")
    scale = tile.shape[1] // target.shape[1]
    enlarged = cv2.resize(target.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(enlarged, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(tile, contours, -1, GROUND_TRUTH_COLOUR, max(1, round(min(enlarged.shape) / 200)))
    return tile


def legend_strip(width, image_size):
    """A line under the grid saying what the colours are and at which resolution the IoUs are counted."""
    text = f"{LEGEND}   IoU at the {image_size}x{image_size} network input"
    (_, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    strip = np.empty((text_h + baseline + 2 * TILE_GAP, width, 3), np.uint8)
    strip[:] = BACKGROUND
    cv2.putText(strip, text, (TILE_GAP + 2, text_h + TILE_GAP), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                cv2.LINE_AA)
    return strip


def grid(tiles, columns=GRID_COLUMNS):
    """Tiles (all the same size) in rows of `columns`, TILE_GAP apart, on BACKGROUND."""
    height, width = tiles[0].shape[:2]
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    sheet = np.empty((rows * (height + TILE_GAP) + TILE_GAP, columns * (width + TILE_GAP) + TILE_GAP, 3), np.uint8)
    sheet[:] = BACKGROUND
    for index, tile in enumerate(tiles):
        top = TILE_GAP + (index // columns) * (height + TILE_GAP)
        left = TILE_GAP + (index % columns) * (width + TILE_GAP)
        sheet[top:top + height, left:left + width] = tile
    return sheet


def write_png(path, picture):
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:
        raise ValueError("could not encode the contact sheet as PNG")
    with atomic_path(path) as temp:
        encoded.tofile(temp)


def write_contact_sheet(config, split="", count=8):
    """Writes the sheet of the first `count` samples of `split` to config.output; returns {split, sent_ids,
    ref_ids, ious, mean_iou, output} of the samples shown, in the order shown."""
    if count < 1:
        raise ValueError(f"--num_examples must be at least 1, got {count}")
    split = split or parse_splits(config)[0]
    setup_context(config)
    check_token_ids(config, split)
    net = CoupAlign.from_config(config)
    load_network_weights(net, config.ckpt_path)
    net.set_train(False)
    pictures = sample_pictures(config, split, count)
    dataset = create_dataset(config, split, training=False, with_ids=True)
    preds, targets, ref_ids, sent_ids = predict_samples(net, dataset, list(pictures))
    ious = sample_ious(*intersection_union(preds, targets))
    tiles = [make_tile(pictures[sent_id][0], pred, target, iou, pictures[sent_id][1])
             for pred, target, iou, sent_id in zip(preds, targets, ious, sent_ids.tolist())]
    sheet = grid(tiles)
    write_png(config.output, np.concatenate((sheet, legend_strip(sheet.shape[1], config.image_size)), axis=0))
    mean_iou = float(ious.mean())
    print(f"contact sheet of the first {len(tiles)} {split} refs (their first sentence) written to {config.output}; "
          f"mean IoU {mean_iou:.4f}")
    return {"split": split, "sent_ids": sent_ids.tolist(), "ref_ids": ref_ids.tolist(),
            "ious": [float(iou) for iou in ious], "mean_iou": mean_iou, "output": config.output}


def main(argv=None):
    count, split, config_argv = parse_tool_flags(sys.argv[1:] if argv is None else argv)
    config = config_or_exit(config_argv)
    return run_or_exit(lambda checked: write_contact_sheet(checked, split, count), config)


if __name__ == "__main__":
    main()
