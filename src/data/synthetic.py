"""Synthetic referring-segmentation data in the exact REFER layout (the built-in quick-start data).

python -m src.data.synthetic --out DIR [--images N] [--seed S] [--image_size PX|WxH] [--texture] [--workers N]

DIR/refcoco/instances.json, DIR/refcoco/refs(unc).p, DIR/images/COCO_train2014_<id>.jpg and
DIR/vocab.txt. Each image holds 2-4 coloured shapes; refs are made only for objects that share
their shape with another object of the image, and every sentence names the target uniquely by
colour and/or position, so the union of same-shape objects is a weak baseline. --texture fills
background and objects with seeded band-limited noise so that JPEGs weigh about as much as COCO's;
--workers renders and encodes the images in that many processes (the output does not depend on it).
"""
import argparse
import json
import multiprocessing
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
MARGIN = 0.1  # position words need the target this far (share of the image extent on that axis) beyond the others
JPEG_QUALITY = 95
IMAGES_PER_TASK = 8  # images per worker task; a batch of tasks is rendered at a time so memory stays flat


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


MAX_IMAGE_ATTEMPTS = 1000  # layouts tried per image before the size is declared unusable


def parse_image_size(text):
    """(width, height) from a square side '640' or 'WIDTHxHEIGHT' such as '640x480'."""
    parts = str(text).lower().split("x")
    if len(parts) not in (1, 2) or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"image size must be a side such as 640 or WIDTHxHEIGHT such as 640x480, got {text!r}")
    return int(parts[0]), int(parts[-1])


def place_objects(rng, count, width, height):
    """(cx, cy, radius) for count non-overlapping objects, or None when they do not fit."""
    placed = []
    for _ in range(count):
        for _attempt in range(100):
            radius = rng.uniform(0.13, 0.2) * min(width, height)
            # one draw for both coordinates, as the square generator always did (same stream for square sizes)
            cx, cy = rng.uniform(radius + 1, np.array([width, height]) - radius - 1)
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


def _extreme(target, others, axis, sign, extents):
    """True when target lies beyond every other object along axis by the margin of that axis' extent."""
    if not others:
        return False
    gap = min(sign * (target[axis] - other[axis]) for other in others)
    return gap > MARGIN * extents[axis]


def describe(target, objects, extents):
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
        if _extreme(target, others, axis, sign, extents):
            if side in ("left", "right"):
                sentences += [f"the {side} {shape}", f"{shape} on the {side}", f"the {side}most {shape}"]
            else:
                sentences += [f"the {shape} at the {side}", f"{side} {shape}"]
        if same_colour and _extreme(target, same_colour, axis, sign, extents):
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


def make_image(rng, width, height):
    """Objects (dicts with shape, colour, cx, cy, polygon) of one image that yields at least one ref."""
    extents = {"cx": width, "cy": height}
    for _attempt in range(MAX_IMAGE_ATTEMPTS):
        count = int(rng.integers(2, 5))
        placed = place_objects(rng, count, width, height)
        if placed is None:
            continue
        shapes, colours = choose_attributes(rng, count)
        objects = [{"shape": shape, "colour": colour, "cx": cx, "cy": cy,
                    "polygon": shape_polygon(shape, cx, cy, radius)}
                   for shape, colour, (cx, cy, radius) in zip(shapes, colours, placed)]
        for obj in objects:
            obj["sentences"] = describe(obj, objects, extents)
        if any(obj["sentences"] for obj in objects):
            return objects
    raise ValueError(f"cannot place 2-4 separable objects in a {width}x{height} image: use a larger or less "
                     "elongated --image_size")


def render(rng, objects, width, height):
    """RGB uint8 image: noisy dark background, each object filled through its annotation mask."""
    image = rng.normal(60, 8, (height, width, 3))
    for obj in objects:
        region = obj["mask"] > 0
        colour = np.array(COLOURS[obj["colour"]], np.float64)
        image[region] = colour + rng.normal(0, 10, (int(region.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def band_limited_noise(rng, height, width, cell, channels=3):
    """Zero-mean unit-ish noise with features about `cell` pixels wide (low-resolution noise upsampled)."""
    low = rng.standard_normal((max(2, height // cell), max(2, width // cell), channels), dtype=np.float32)
    return cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, channels)


def texture_field(rng, height, width, coarse, medium, grain):
    """Sum of coarse and medium band-limited noise and per-pixel grain, amplitudes in grey levels."""
    field = coarse * band_limited_noise(rng, height, width, 48)
    field += medium * band_limited_noise(rng, height, width, 6)
    field += grain * rng.standard_normal((height, width, 3), dtype=np.float32)
    return field


def bounding_slices(region):
    """(rows, columns) slices of the smallest box holding a non-empty boolean region."""
    rows, columns = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def render_textured(seed, image_id, objects, width, height):
    """RGB uint8 image with textured background and objects, from its own RNG seeded by (seed, image_id)."""
    rng = np.random.default_rng([seed, image_id])
    background = rng.uniform(55, 95) + rng.normal(0, 6, 3).astype(np.float32)  # a dim, nearly grey tone
    image = background + texture_field(rng, height, width, coarse=14, medium=7, grain=9)
    for obj in objects:
        region = polygon_mask(obj["polygon"], width, height)
        box = bounding_slices(region)
        # a per-object shade of the named colour, small enough that the colour name stays right
        colour = np.array(COLOURS[obj["colour"]], np.float32) + rng.normal(0, 10, 3).astype(np.float32)
        box_height, box_width = region[box].shape
        field = texture_field(rng, box_height, box_width, coarse=6, medium=5, grain=6)
        image[box][region[box]] = colour + field[region[box]]
    return np.clip(image, 0, 255).astype(np.uint8)


def polygon_mask(polygon, width, height):
    rles = mask_utils.frPyObjects([polygon], height, width)
    return mask_utils.decode(rles).sum(axis=2) > 0


def write_jpeg(path, rgb):
    cv2.imwrite(path, rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])


def write_image(job):
    """Render (textured) or take the pixels of one image job and write its JPEG."""
    if "pixels" in job:
        rgb = job["pixels"]
    else:
        rgb = render_textured(job["seed"], job["image_id"], job["objects"], job["width"], job["height"])
    write_jpeg(job["path"], rgb)


def _init_worker():
    cv2.setNumThreads(1)  # the pool already keeps every core busy


class ImageWriter:
    """Writes image jobs in this process (workers=1) or in batches across a process pool."""

    def __init__(self, workers):
        self.workers = workers
        self.pending = []
        self.pool = None
        if workers > 1:
            # spawn, not fork: the caller (tests, training tools) may hold threads a fork would copy mid-state;
            # a script calling generate_synthetic(workers > 1) therefore needs the `if __name__ == "__main__"` guard
            self.pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker)

    def add(self, job):
        if self.pool is None:
            write_image(job)
            return
        self.pending.append(job)
        if len(self.pending) >= 4 * self.workers * IMAGES_PER_TASK:
            self.flush()

    def flush(self):
        if self.pending:
            self.pool.map(write_image, self.pending, chunksize=IMAGES_PER_TASK)
            self.pending = []

    def close(self):
        if self.pool is not None:
            try:
                self.flush()
            finally:
                self.pool.close()
                self.pool.join()


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


def image_job(rng, objects, image_id, path, size, seed, texture):
    """What a writer needs for one image; flat images are rendered here, from the shared RNG, as always."""
    width, height = size
    if not texture:
        return {"path": path, "pixels": render(rng, objects, width, height)}
    return {"path": path, "seed": seed, "image_id": image_id, "width": width, "height": height,
            "objects": [{"colour": obj["colour"], "polygon": obj["polygon"]} for obj in objects]}


def generate_synthetic(out_dir, num_images=300, seed=0, image_size=64, texture=False, workers=1):
    """Write the synthetic set under out_dir; returns counts {images, annotations, refs, sentences}.

    image_size is a side, 'WIDTHxHEIGHT' or a (width, height) pair.
    """
    if num_images < len(SPLIT_SHARES):
        raise ValueError(f"need at least {len(SPLIT_SHARES)} images (one per split), got {num_images}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    width, height = image_size if isinstance(image_size, (tuple, list)) else parse_image_size(image_size)
    rng = np.random.default_rng(seed)
    data_dir = os.path.join(out_dir, "refcoco")
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)
    splits = assign_splits(rng, num_images)
    images, annotations, refs = [], [], []
    sent_id = 0
    writer = ImageWriter(workers)
    try:
        for index in range(num_images):
            image_id = index + 1
            objects = make_image(rng, width, height)
            for number, obj in enumerate(objects):
                obj["mask"] = polygon_mask(obj["polygon"], width, height)
                obj["ann_id"] = image_id * 10 + number
            path = os.path.join(image_dir, image_file_name(image_id))
            writer.add(image_job(rng, objects, image_id, path, (width, height), seed, texture))
            images.append({"id": image_id, "file_name": image_file_name(image_id), "height": height, "width": width})
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
    finally:
        writer.close()
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
    parser.add_argument("--image_size", type=parse_image_size, default=(64, 64),
                        help="image side in pixels (64) or WIDTHxHEIGHT (640x480)")
    parser.add_argument("--texture", action="store_true",
                        help="fill background and objects with seeded noisy texture (COCO-sized JPEGs)")
    parser.add_argument("--workers", type=int, default=1, help="processes that render and encode the images")
    parser.add_argument("--print_example", metavar="SPLIT", default="",
                        help="do not write anything; print '<image path> <sentence>' of the first ref of SPLIT "
                             "of an existing set in --out")
    args = parser.parse_args(argv)
    if args.print_example:
        image_path, sentence = first_example(args.out, args.print_example)
        print(f"{image_path} {sentence}")
        return 0
    try:
        counts = generate_synthetic(args.out, args.images, args.seed, args.image_size, args.texture, args.workers)
    except ValueError as err:
        parser.exit(1, f"error: {err}\n")
    print(f"synthetic set in {args.out}: {counts['images']} images, {counts['annotations']} objects, "
          f"{counts['refs']} refs, {counts['sentences']} sentences")
    print(f"convert: python -m src.data.build_mindrecord --refer_data_root {args.out} "
          f"--image_root {os.path.join(args.out, 'images')} --vocab_file {os.path.join(args.out, 'vocab.txt')} "
          "--mindrecord_dir <DIR>")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
