"""predict.py: one image and one sentence -> mask overlay PNG."""
import os

import cv2
import numpy as np

import mindspore as ms

from ..checkpoint import load_network_weights
from ..context import setup_context
from ..data.dataset import preprocess_image
from ..data.tokenizer import build_tokenizer
from ..files import atomic_path, check_output_file

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


def build_predictor(config):
    """A callable (image, input_ids, attention_mask) -> logits, from --mindir or from --ckpt_path."""
    if config.mindir:
        if not os.path.isfile(config.mindir):
            raise PredictError(f"MINDIR not found: {config.mindir}")
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


def check_picture_path(path):
    """The overlay's format follows --output's extension; anything else is refused before the work."""
    if os.path.splitext(path)[1].lower() not in PICTURE_FORMATS:
        raise PredictError(f"--output {path}: name the picture {', '.join(PICTURE_FORMATS[:-1])} or "
                           f"{PICTURE_FORMATS[-1]} (its format follows the extension)")
    check_output_file(path, "output")


def predict(config):
    """Writes the overlay picture to --output and returns the boolean mask at the image's own size."""
    if not config.sentence.strip():
        raise PredictError("--sentence is empty")
    if not config.mindir and not config.ckpt_path:
        raise PredictError("give --ckpt_path (a trained checkpoint) or --mindir (an exported model)")
    check_picture_path(config.output)
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
    ok, encoded = cv2.imencode(os.path.splitext(config.output)[1].lower(), overlay)
    if not ok:
        raise PredictError(f"could not encode the overlay for {config.output}")
    with atomic_path(config.output) as temp:
        encoded.tofile(temp)
    print(f"mask covers {binary.mean() * 100:.1f}% of the image; overlay written to {config.output}")
    return binary

