"""predict.py: images and sentences -> per query an overlay picture, a binary mask PNG at the image's size
and a JSON line (sentence, mask area, mean foreground probability, SMA weights over the N proposals).

One query (--image and one --sentence): the overlay at --output, the mask next to it (<stem>_mask.png),
the JSON line printed. Several (--sentence given several times, --sentences_file, or --input_list of JSON
lines {"image": ..., "sentence": ...}): everything in --predict_dir, with predictions.jsonl. The sentences of
one image go through the network together, in batches of the MINDIR's batch (or eval_batch_size).
"""
import collections
import functools
import json
import os
import sys

import cv2
import numpy as np

from tqdm import tqdm

import mindspore as ms

from ..checkpoint import load_network_weights
from ..context import setup_context
from ..data.dataset import preprocess_image
from ..data.tokenizer import build_tokenizer
from ..files import atomic_path, check_output_file, check_output_folder
from ..models.inspection import WithProposals

OVERLAY_COLOUR = (255, 80, 0)  # BGR: blue-ish fill
OUTLINE_COLOUR = (0, 255, 255)
MIN_DISPLAY_SIDE = 320
PICTURE_FORMATS = (".png", ".jpg", ".jpeg", ".bmp")


class PredictError(ValueError):
    """An input that predict.py cannot use."""


def read_image(path):
    """RGB uint8 (H, W, 3) of an image file; errors name the file."""
    if not os.path.isfile(path):
        raise PredictError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise PredictError(f"{path} is not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


MINDIR_INPUTS = ("image", "input_ids", "attention_mask")


def mindir_input_shapes(path):
    """The input shapes a MINDIR file declares, in order, a free axis as None: [(B, 3, S, S), (B, T), (B, T)].
    Parsed once per unchanged file: the check and the predictor both ask, and a full-size file is ~1 GB."""
    stat = os.stat(path)
    return _parsed_mindir_input_shapes(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _parsed_mindir_input_shapes(path, mtime_ns, size):  # pylint: disable=unused-argument  # the cache key
    from mindspore.train import mind_ir_pb2
    model = mind_ir_pb2.ModelProto()
    try:
        with open(path, "rb") as handle:
            model.ParseFromString(handle.read())
    except Exception:  # pylint: disable=broad-except  # protobuf's DecodeError and kin
        raise PredictError(f"{path} is not a MINDIR file") from None
    if not model.graph.input:
        raise PredictError(f"{path} is not a MINDIR file")
    return [tuple(None if dim < 0 else dim for dim in tensor.tensor[0].dims)
            for tensor in model.graph.input if tensor.tensor]


def _shape_text(shape):
    return "(" + ", ".join("B" if dim is None else str(dim) for dim in shape) + ")"


def check_mindir_inputs(path, config):
    """PredictError naming the MINDIR's input shape and the flag it contradicts: --image_size or --max_tokens.
    Any batch fits: the predictor pads its last batch to a fixed-batch file's size."""
    shapes = mindir_input_shapes(path)
    name = os.path.basename(path)
    if len(shapes) != len(MINDIR_INPUTS) or [len(shape) for shape in shapes] != [4, 2, 2]:
        raise PredictError(f"{name} takes inputs {', '.join(map(_shape_text, shapes))}; CoupAlign's are image "
                           "(B, 3, S, S), input_ids and attention_mask (B, T)")
    image = shapes[0]
    if image[1:] != (3, config.image_size, config.image_size):
        raise PredictError(f"{name} takes image {_shape_text(image)} but --image_size is {config.image_size}")
    for input_name, shape in zip(MINDIR_INPUTS[1:], shapes[1:]):
        if shape[1] != config.max_tokens:
            raise PredictError(f"{name} takes {input_name} {_shape_text(shape)} but --max_tokens is "
                               f"{config.max_tokens}")
    if len({shape[0] for shape in shapes}) != 1:
        raise PredictError(f"{name} takes inputs {', '.join(map(_shape_text, shapes))}: their batch sizes differ")


def build_predictor(config):
    """A callable (image, input_ids, attention_mask) -> logits, from --mindir or from --ckpt_path.

    A MINDIR whose input shapes do not fit --image_size or --max_tokens is refused, naming both shapes.
    """
    if config.mindir:
        if not os.path.isfile(config.mindir):
            raise PredictError(f"MINDIR not found: {config.mindir}")
        check_mindir_inputs(config.mindir, config)
        graph = ms.load(config.mindir)
        return ms.nn.GraphCell(graph)
    from ..models.coupalign import CoupAlign
    net = CoupAlign.from_config(config)
    load_network_weights(net, config.ckpt_path)
    net.set_train(False)
    return net


def overlay_mask(rgb, mask, sentence):
    """BGR uint8 picture: the image with the mask tinted and outlined, the sentence in a strip below.

    Images smaller than MIN_DISPLAY_SIDE are enlarged (nearest neighbour) so that the outline and
    the text stay legible; the mask itself is computed at the image's own size.
    """
    scale = max(1, int(np.ceil(MIN_DISPLAY_SIDE / min(mask.shape))))
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if scale > 1:
        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        mask = cv2.resize(mask.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) > 0
    tinted = bgr.copy()
    tinted[mask] = OVERLAY_COLOUR
    picture = cv2.addWeighted(bgr, 0.5, tinted, 0.5, 0)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, OUTLINE_COLOUR, max(1, round(min(mask.shape) / 200)))
    font_scale = max(0.45, min(mask.shape) / 900)
    (_, text_h), baseline = cv2.getTextSize(sentence, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    strip = np.zeros((text_h + baseline + 12, picture.shape[1], 3), np.uint8)
    cv2.putText(strip, sentence, (6, text_h + 6), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.concatenate((picture, strip), axis=0)


def check_picture_path(path):
    """The overlay's format follows --output's extension; anything else is refused before the work."""
    check_output_file(path, "output")
    if os.path.splitext(path)[1].lower() not in PICTURE_FORMATS:
        raise PredictError(f"--output {path}: name the picture {', '.join(PICTURE_FORMATS[:-1])} or "
                           f"{PICTURE_FORMATS[-1]} (its format follows the extension)")


Query = collections.namedtuple("Query", ["image", "sentence"])


def sentences_of(config):
    """--sentence (once or several times) and the lines of --sentences_file, in that order."""
    given = config.sentence if isinstance(config.sentence, list) else [config.sentence]
    sentences = [text for text in given if text]
    if config.sentences_file:
        if not os.path.isfile(config.sentences_file):
            raise PredictError(f"--sentences_file {config.sentences_file} not found")
        with open(config.sentences_file, encoding="utf-8") as handle:
            sentences += [line.strip() for line in handle if line.strip()]
    return sentences


def read_input_list(path):
    """[Query] of a JSON-lines file of {"image": path, "sentence": text}; relative image paths are taken
    from the list's folder."""
    if not os.path.isfile(path):
        raise PredictError(f"--input_list {path} not found")
    folder = os.path.dirname(os.path.abspath(path))
    queries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                image, sentence = entry["image"], entry["sentence"]
            except (ValueError, KeyError, TypeError):
                raise PredictError(f"{path} line {number}: expected a JSON object with \"image\" and "
                                   "\"sentence\"") from None
            queries.append(Query(os.path.join(folder, image), str(sentence)))
    return queries


def read_queries(config):
    """Every (image, sentence) asked for; PredictError naming what is missing or empty."""
    if config.input_list:
        queries = read_input_list(config.input_list)
    else:
        if not config.image:
            raise PredictError("give --image (with --sentence or --sentences_file), or --input_list")
        queries = [Query(config.image, sentence) for sentence in sentences_of(config)]
    if not queries:
        raise PredictError("no sentence given: --sentence, --sentences_file or --input_list")
    for index, query in enumerate(queries):
        if not query.sentence.strip():
            raise PredictError(f"query {index + 1} ({query.image}) has an empty sentence")
        if not os.path.isfile(query.image):
            raise PredictError(f"image not found: {query.image}")
    return queries


def single_query(config):
    """One --image with one sentence: the outputs go where --output says (as before lists existed)."""
    return not config.input_list and not config.sentences_file and len(sentences_of(config)) == 1


class QueryEncoder:
    """Sentence -> token ids and mask (T,) int32 each; a sentence longer than max_tokens or a vocab larger
    than the model's vocab_size is an error (the model would never see the end of it / an id it has no row
    for)."""

    def __init__(self, config):
        if not config.vocab_file:
            raise PredictError("give --vocab_file (the vocab.txt the model was trained with)")
        self.tokenizer = build_tokenizer(config.vocab_file)
        if len(self.tokenizer) > config.vocab_size:
            raise PredictError(f"{config.vocab_file} has {len(self.tokenizer)} tokens but the model's vocab_size is "
                               f"{config.vocab_size}")
        self.max_tokens = config.max_tokens

    def __call__(self, sentence):
        input_ids, attention_mask, length = self.tokenizer.encode_with_length(sentence, self.max_tokens)
        if length > self.max_tokens:
            raise PredictError(f"the sentence '{sentence}' has {length} tokens with [CLS] and [SEP], more than "
                               f"max_tokens={self.max_tokens}; shorten it")
        return np.asarray(input_ids, np.int32), np.asarray(attention_mask, np.int32)


class Predictor:
    """Runs queries in batches of a fixed size (the MINDIR's; for a checkpoint the most sentences of an image,
    at most eval_batch_size: one graph whatever the number of sentences), or of any size for a free-batch
    MINDIR; the last batch is padded."""

    def __init__(self, config, largest_group):
        self.network = build_predictor(config)
        self.from_mindir = bool(config.mindir)
        if self.from_mindir:
            batch = mindir_input_shapes(config.mindir)[0][0]
            self.batch = batch  # None: free
        else:
            self.network = WithProposals(self.network)
            self.batch = max(1, min(int(config.eval_batch_size), largest_group))

    def __call__(self, images, input_ids, attention_masks):
        """(n, 3, S, S), (n, T), (n, T) numpy -> logits (n, 1, S, S) float32, SMA weights (n, N) or None."""
        def run(*arrays):
            outputs = self.network(*(ms.Tensor(array) for array in arrays))
            return (outputs.asnumpy(),) if self.from_mindir else (outputs[0].asnumpy(), outputs[1].asnumpy())

        outputs = run_padded(run, self.batch, (images, input_ids, attention_masks))
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)


def run_padded(run, batch, arrays):
    """Calls run(*chunk) on chunks of `batch` rows of the arrays (all of them when batch is None), the last
    chunk padded with copies of its last row; returns run's outputs (numpy arrays) concatenated, padding cut."""
    count = len(arrays[0])
    step = batch or count
    pieces = []
    for start in range(0, count, step):
        chunk = [array[start:start + step] for array in arrays]
        real = len(chunk[0])
        if real < step:
            chunk = [np.concatenate([array, np.repeat(array[-1:], step - real, axis=0)]) for array in chunk]
        pieces.append([output[:real] for output in run(*chunk)])
    return [np.concatenate(parts) for parts in zip(*pieces)]


def sigmoid(values):
    return 1.0 / (1.0 + np.exp(-values))


def query_result(query, logits, weights, height, width):
    """(binary mask (H, W) bool, its JSON record) of one query's logits (S, S) resized to the image."""
    logits = cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR)
    binary = logits > 0
    area = int(binary.sum())
    record = {"image": query.image, "sentence": query.sentence, "mask_area": area,
              "mask_fraction": round(area / binary.size, 6),
              "mean_foreground_probability": round(float(sigmoid(logits[binary]).mean()), 6) if area else None,
              "sma_weights": None if weights is None else [round(float(weight), 6) for weight in weights]}
    return binary, record


def encode_picture(path, picture):
    ok, encoded = cv2.imencode(os.path.splitext(path)[1].lower(), picture)
    if not ok:
        raise PredictError(f"could not encode a picture for {path}")
    return encoded


def write_picture(path, picture):
    encoded = encode_picture(path, picture)
    with atomic_path(path) as temp:
        encoded.tofile(temp)


class OutputPlan:
    """Where each query's overlay and mask go: --output (and <stem>_mask.png) for a single query, else
    --predict_dir/<nnnn>_overlay.png, <nnnn>_mask.png and predictions.jsonl."""

    def __init__(self, config, count):
        self.single = count == 1 and single_query(config)
        if self.single:
            check_picture_path(config.output)
            self.output = config.output
        else:
            if not config.predict_dir:
                raise PredictError("several queries: give --predict_dir, the folder for their pictures")
            check_output_folder(config.predict_dir, "predict_dir")
            self.folder = config.predict_dir
            self.digits = max(4, len(str(count)))

    def paths(self, index):
        if self.single:
            stem, _ = os.path.splitext(self.output)
            return self.output, f"{stem}_mask.png"
        name = f"{index + 1:0{self.digits}d}"
        return (os.path.join(self.folder, f"{name}_overlay.png"), os.path.join(self.folder, f"{name}_mask.png"))

    def records_path(self):
        return None if self.single else os.path.join(self.folder, "predictions.jsonl")


def queries_by_image(queries):
    """[(image path, [query indices])] in the order the images first appear."""
    groups = collections.OrderedDict()
    for index, query in enumerate(queries):
        groups.setdefault(query.image, []).append(index)
    return list(groups.items())


def predict(config):
    """Writes every query's overlay, mask and record; returns the binary masks (H, W) bool in query order."""
    if not config.mindir and not config.ckpt_path:
        raise PredictError("give --ckpt_path (a trained checkpoint) or --mindir (an exported model)")
    queries = read_queries(config)
    plan = OutputPlan(config, len(queries))
    encoder = QueryEncoder(config)
    tokens = [encoder(query.sentence) for query in queries]
    groups = queries_by_image(queries)
    setup_context(config)
    predictor = Predictor(config, max(len(indices) for _, indices in groups))
    masks, records = [None] * len(queries), [None] * len(queries)
    progress = tqdm(total=len(queries), desc="queries", unit="query", disable=None if len(queries) > 1 else True,
                    file=sys.stdout)
    for image_path, indices in groups:
        rgb = read_image(image_path)
        picture = preprocess_image(rgb, config.image_size)
        images = np.repeat(picture[None], len(indices), axis=0)
        logits, weights = predictor(images, np.stack([tokens[i][0] for i in indices]),
                                    np.stack([tokens[i][1] for i in indices]))
        height, width = rgb.shape[:2]
        for row, index in enumerate(indices):
            binary, record = query_result(queries[index], logits[row, 0], None if weights is None else weights[row],
                                          height, width)
            overlay_path, mask_path = plan.paths(index)
            write_picture(overlay_path, overlay_mask(rgb, binary, queries[index].sentence))
            write_picture(mask_path, binary.astype(np.uint8) * 255)
            record.update(overlay=overlay_path, mask=mask_path)
            masks[index], records[index] = binary, record
            progress.update(1)
    progress.close()
    if plan.single:
        print(json.dumps(records[0]))
        print(f"mask covers {masks[0].mean() * 100:.1f}% of the image; overlay written to {plan.output}, "
              f"mask to {plan.paths(0)[1]}")
    else:
        with atomic_path(plan.records_path(), suffix=".jsonl") as temp, open(temp, "w", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(record) + "\n" for record in records))
        print(f"{len(queries)} queries on {len(groups)} image(s): pictures and "
              f"{plan.records_path()} written to {plan.folder}")
    return masks
