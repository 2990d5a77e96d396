"""predict.py logic: one image and one sentence -> mask overlay PNG."""
import os
import sys

import cv2
import numpy as np

import mindspore as ms

from .checkpoint import CheckpointError, load_network_weights
from .context import setup_context
from .data.dataset import preprocess_image
from .data.tokenizer import VocabError, build_tokenizer

OVERLAY_COLOUR = (255, 80, 0)  # BGR: blue-ish fill
OUTLINE_COLOUR = (0, 255, 255)


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


def build_predictor(config):
    """A callable (image, input_ids, attention_mask) -> logits, from --mindir or from --ckpt_path."""
    if config.mindir:
        if not os.path.isfile(config.mindir):
            raise PredictError(f"MINDIR not found: {config.mindir}")
        graph = ms.load(config.mindir)
        return ms.nn.GraphCell(graph)
    from .models.coupalign import CoupAlign
    net = CoupAlign(config)
    load_network_weights(net, config.ckpt_path)
    net.set_train(False)
    return net


def overlay_mask(rgb, mask, sentence):
    """BGR uint8 image with the mask tinted, its outline drawn and the sentence written on top."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    tinted = bgr.copy()
    tinted[mask] = OVERLAY_COLOUR
    out = cv2.addWeighted(bgr, 0.5, tinted, 0.5, 0)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(min(mask.shape) / 200))
    cv2.drawContours(out, contours, -1, OUTLINE_COLOUR, thickness)
    scale = max(0.35, min(mask.shape) / 800)
    (text_w, text_h), base = cv2.getTextSize(sentence, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (min(text_w + 8, out.shape[1]), text_h + base + 8), (0, 0, 0), -1)
    cv2.putText(out, sentence, (4, text_h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def encode_query(config):
    """Token ids and mask of --sentence; a sentence longer than max_tokens or a vocab larger than the
    model's vocab_size is an error (the model would never see the end of it / an id it has no row for)."""
    if not config.vocab_file:
        raise PredictError("give --vocab_file (the vocab.txt the model was trained with)")
    tokenizer = build_tokenizer(config.vocab_file)
    if len(tokenizer) > config.vocab_size:
        raise PredictError(f"{config.vocab_file} has {len(tokenizer)} tokens but the model's vocab_size is "
                           f"{config.vocab_size}")
    input_ids, attention_mask, length = tokenizer.encode_with_length(config.sentence, config.max_tokens)
    if length > config.max_tokens:
        raise PredictError(f"the sentence has {length} tokens with [CLS] and [SEP], more than max_tokens="
                           f"{config.max_tokens}; shorten it")
    return input_ids, attention_mask


def predict(config):
    """Writes the overlay PNG to --output and returns the boolean mask at the image's own size."""
    if not config.sentence.strip():
        raise PredictError("--sentence is empty")
    if not config.mindir and not config.ckpt_path:
        raise PredictError("give --ckpt_path (a trained checkpoint) or --mindir (an exported model)")
    rgb = read_image(config.image)
    input_ids, attention_mask = encode_query(config)
    setup_context(config)
    predictor = build_predictor(config)
    batch = config.export_batch_size if config.mindir else 1
    image = np.repeat(preprocess_image(rgb, config.image_size)[None], batch, axis=0)
    ids = np.repeat(np.asarray(input_ids, np.int32)[None], batch, axis=0)
    mask = np.repeat(np.asarray(attention_mask, np.int32)[None], batch, axis=0)
    logits = predictor(ms.Tensor(image), ms.Tensor(ids), ms.Tensor(mask)).asnumpy()[0, 0]
    height, width = rgb.shape[:2]
    logits = cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR)
    binary = logits > 0
    overlay = overlay_mask(rgb, binary, config.sentence)
    output = config.output
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    ok, encoded = cv2.imencode(".png", overlay)
    if not ok:
        raise PredictError("could not encode the overlay as PNG")
    temp = os.path.join(os.path.dirname(os.path.abspath(output)), f".{os.path.basename(output)}.tmp")
    encoded.tofile(temp)
    os.replace(temp, output)
    print(f"mask covers {binary.mean() * 100:.1f}% of the image; overlay written to {output}")
    return binary


def main(config):
    try:
        predict(config)
    except (PredictError, VocabError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
