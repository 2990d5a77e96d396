"""Synthetic referring-segmentation data in the exact REFER layout (the built-in quick-start data).

python -m src.data.synthetic --out DIR [--images N] [--seed S] [--image_size PX]

DIR/refcoco/instances.json, DIR/refcoco/refs(unc).p, DIR/images/COCO_train2014_<id>.jpg and
DIR/vocab.txt. Each image holds 2-4 coloured shapes; refs are made only for objects that share
their shape with another object of the image, and every sentence names the target uniquely by
colour and/or position, so the union of same-shape objects is a weak baseline.
"""
import argparse
import json
import os
import pickle

import cv2
import numpy as np
from pycocotools import mask as mask_utils

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 45, 45), "green": (45, 170, 70), "blue": (50, 90, 225), "yellow": (235, 205, 45)}
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDS = ("the", "on", "at", "left", "right", "top", "bottom", "leftmost", "rightmost") + tuple(COLOURS) + SHAPES + (
    ".", ",")
SPLIT_SHARES = (("train", 0.7), ("val", 0.1), ("testA", 0.1), ("testB", 0.1))
MARGIN = 0.1  # position words need the target this far (share of the image) beyond the others


def image_file_name(image_id):
    return f"COCO_train2014_{image_id:012d}.jpg"


def shape_polygon(shape, cx, cy, radius):
    """Flat COCO polygon [x1, y1, x2, y2, ...] of a shape centred on (cx, cy)."""
    if shape == "circle":
        angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
    elif shape == "square":
        half = radius * 0.85
        points = np.array([[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half],
                           [cx - half, cy + half]])
    else:
        angles = np.array([-90.0, 30.0, 150.0]) * np.pi / 180
        points = np.stack([cx + radius * np.cos(angles), cy + radius * 1.1 * np.sin(angles) + radius * 0.1], 1)
    return [round(float(value), 2) for value in points.reshape(-1)]


def place_objects(rng, count, size):
    """(cx, cy, radius) for count non-overlapping objects, or None when they do not fit."""
    placed = []
    for _ in range(count):
        for _attempt in range(100):
            radius = rng.uniform(0.13, 0.2) * size
            cx, cy = rng.uniform(radius + 1, size - radius - 1, 2)
            if all(np.hypot(cx - x, cy - y) > radius + r + 2 for x, y, r in placed):
                placed.append((cx, cy, radius))
                break
        else:
            return None
    return placed


def choose_attributes(rng, count):
    """Shapes and colours: the first two objects share a shape, half the time also a colour."""
    shapes = [SHAPES[rng.integers(len(SHAPES))]] * 2
    shapes += [SHAPES[rng.integers(len(SHAPES))] for _ in range(count - 2)]
    names = list(COLOURS)
    colours = [names[rng.integers(len(names))]]
    colours.append(colours[0] if rng.random() < 0.5 else names[rng.integers(len(names))])
    colours += [names[rng.integers(len(names))] for _ in range(count - 2)]
    return shapes, colours


def _extreme(target, others, axis, sign, size):
    """True when target lies beyond every other object along axis by the margin."""
    if not others:
        return False
    gap = min(sign * (target[axis] - other[axis]) for other in others)
    return gap > MARGIN * size


def describe(target, objects, size):
    """Sentences that single out target among objects of its shape ([] when none does)."""
    shape, colour = target["shape"], target["colour"]
    others = [obj for obj in objects if obj is not target and obj["shape"] == shape]
    if not others:
        return []
    same_colour = [obj for obj in others if obj["colour"] == colour]
    sides = {"left": ("cx", -1), "right": ("cx", 1), "top": ("cy", -1), "bottom": ("cy", 1)}
    sentences = []
    if not same_colour:
        sentences += [f"the {colour} {shape}", f"{colour} {shape}"]
    for side, (axis, sign) in sides.items():
        if _extreme(target, others, axis, sign, size):
            if side in ("left", "right"):
                sentences += [f"the {side} {shape}", f"{shape} on the {side}", f"the {side}most {shape}"]
            else:
                sentences += [f"the {shape} at the {side}", f"{side} {shape}"]
        if same_colour and _extreme(target, same_colour, axis, sign, size):
            if side in ("left", "right"):
                sentences += [f"{side} {colour} {shape}", f"the {colour} {shape} on the {side}"]
            else:
                sentences += [f"the {colour} {shape} at the {side}", f"{side} {colour} {shape}"]
    return sentences


def style(rng, sentence):
    """Vary case and punctuation to exercise tokenisation."""
    if " on the " in sentence and rng.random() < 0.2:
        sentence = sentence.replace(" on the ", ", on the ", 1)
    if rng.random() < 0.25:
        sentence += "."
    if rng.random() < 0.2:
        sentence = sentence[0].upper() + sentence[1:]
    return sentence


def make_image(rng, size):
    """Objects (dicts with shape, colour, cx, cy, polygon) of one image that yields at least one ref."""
    while True:
        count = int(rng.integers(2, 5))
        placed = place_objects(rng, count, size)
        if placed is None:
            continue
        shapes, colours = choose_attributes(rng, count)
        objects = [{"shape": shape, "colour": colour, "cx": cx, "cy": cy,
                    "polygon": shape_polygon(shape, cx, cy, radius)}
                   for shape, colour, (cx, cy, radius) in zip(shapes, colours, placed)]
        for obj in objects:
            obj["sentences"] = describe(obj, objects, size)
        if any(obj["sentences"] for obj in objects):
            return objects


def render(rng, objects, size):
    """RGB uint8 image: noisy dark background, each object filled through its annotation mask."""
    image = rng.normal(60, 8, (size, size, 3))
    for obj in objects:
        region = obj["mask"] > 0
        colour = np.array(COLOURS[obj["colour"]], np.float64)
        image[region] = colour + rng.normal(0, 10, (int(region.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def polygon_mask(polygon, size):
    rles = mask_utils.frPyObjects([polygon], size, size)
    return mask_utils.decode(rles).sum(axis=2) > 0


def assign_splits(rng, num_images):
    order = rng.permutation(num_images)
    splits = [""] * num_images
    start = 0
    for index, (split, share) in enumerate(SPLIT_SHARES):
        stop = num_images if index == len(SPLIT_SHARES) - 1 else start + int(round(share * num_images))
        for position in order[start:stop]:
            splits[position] = split
        start = stop
    return splits


def write_vocab(path):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(SPECIAL_TOKENS + WORDS) + "\n")


def _sentence_record(raw, sent_id):
    tokens = [word for word in raw.lower().replace(",", " ").replace(".", " ").split()]
    return {"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": " ".join(tokens)}


def generate_synthetic(out_dir, num_images=300, seed=0, image_size=64):
    """Write the synthetic set under out_dir; returns counts {images, annotations, refs, sentences}."""
    if num_images < len(SPLIT_SHARES):
        raise ValueError(f"need at least {len(SPLIT_SHARES)} images (one per split), got {num_images}")
    rng = np.random.default_rng(seed)
    data_dir = os.path.join(out_dir, "refcoco")
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)
    splits = assign_splits(rng, num_images)
    images, annotations, refs = [], [], []
    sent_id = 0
    for index in range(num_images):
        image_id = index + 1
        objects = make_image(rng, image_size)
        for number, obj in enumerate(objects):
            obj["mask"] = polygon_mask(obj["polygon"], image_size)
            obj["ann_id"] = image_id * 10 + number
        rgb = render(rng, objects, image_size)
        cv2.imwrite(os.path.join(image_dir, image_file_name(image_id)), rgb[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": image_id, "file_name": image_file_name(image_id),
                       "height": image_size, "width": image_size})
        for obj in objects:
            rle = mask_utils.encode(np.asfortranarray(obj["mask"].astype(np.uint8)))
            annotations.append({
                "id": obj["ann_id"], "image_id": image_id, "category_id": SHAPES.index(obj["shape"]) + 1,
                "segmentation": [obj["polygon"]], "area": float(mask_utils.area(rle)),
                "bbox": [round(float(value), 2) for value in mask_utils.toBbox(rle)], "iscrowd": 0,
                "colour": obj["colour"]})
            if not obj["sentences"]:
                continue
            count = min(int(rng.integers(1, 4)), len(obj["sentences"]))
            chosen = rng.choice(len(obj["sentences"]), size=count, replace=False)
            sentences = []
            for choice in sorted(chosen):
                sentences.append(_sentence_record(style(rng, obj["sentences"][choice]), sent_id))
                sent_id += 1
            refs.append({
                "ref_id": len(refs), "ann_id": obj["ann_id"], "image_id": image_id, "split": splits[index],
                "category_id": SHAPES.index(obj["shape"]) + 1,
                "sent_ids": [sentence["sent_id"] for sentence in sentences], "sentences": sentences,
                "file_name": f"COCO_train2014_{image_id:012d}_{obj['ann_id']}.jpg"})
    categories = [{"id": number + 1, "name": shape, "supercategory": "shape"} for number, shape in enumerate(SHAPES)]
    with open(os.path.join(data_dir, "instances.json"), "w", encoding="utf-8") as handle:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, handle)
    with open(os.path.join(data_dir, "refs(unc).p"), "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    write_vocab(os.path.join(out_dir, "vocab.txt"))
    return {"images": len(images), "annotations": len(annotations), "refs": len(refs), "sentences": sent_id}


def first_example(out_dir, split):
    """(image path, raw sentence) of the lowest ref_id of `split` in a synthetic set written to out_dir."""
    from .refer import Refer
    refer = Refer(out_dir, "refcoco", "unc", os.path.join(out_dir, "images"))
    refs = refer.refs_of_split(split)
    if not refs:
        raise SystemExit(f"error: no refs in split '{split}' of {out_dir}")
    return refer.image_path(refs[0]["image_id"]), refs[0]["sentences"][0]["raw"]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a synthetic referring dataset in the REFER layout.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--images", type=int, default=300, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--print_example", metavar="SPLIT", default="",
                        help="do not write anything; print '<image path> <sentence>' of the first ref of SPLIT "
                             "of an existing set in --out")
    args = parser.parse_args(argv)
    if args.print_example:
        image_path, sentence = first_example(args.out, args.print_example)
        print(f"{image_path} {sentence}")
        return 0
    counts = generate_synthetic(args.out, args.images, args.seed, args.image_size)
    print(f"synthetic set in {args.out}: {counts['images']} images, {counts['annotations']} objects, "
          f"{counts['refs']} refs, {counts['sentences']} sentences")
    print(f"convert: python -m src.data.build_mindrecord --refer_data_root {args.out} "
          f"--image_root {os.path.join(args.out, 'images')} --vocab_file {os.path.join(args.out, 'vocab.txt')} "
          "--mindrecord_dir <DIR>")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
