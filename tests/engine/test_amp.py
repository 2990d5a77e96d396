"""Mixed precision."""
import numpy as np
import pytest

import mindspore as ms

from src.models.coupalign import CoupAlign
from tests.conftest import make_batch


@pytest.mark.slow
def test_mixed_precision_keeps_norms_in_float32_and_returns_float32(tiny_config):
    from src.engine.amp import apply_mixed_precision
    net = apply_mixed_precision(CoupAlign.from_config(tiny_config), "O2")
    net.set_train(False)
    image, input_ids, attention_mask, _ = make_batch(tiny_config)
    logits = net(image, input_ids, attention_mask)
    assert logits.dtype == ms.float32 and np.isfinite(logits.asnumpy()).all()
    with pytest.raises(ValueError, match="amp_level"):
        apply_mixed_precision(net, "O1")
