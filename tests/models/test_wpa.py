"""Word-Pixel Alignment attention against its unfused form."""
import numpy as np
import pytest

import mindspore as ms

from src.models.wpa import WordPixelAlignment


@pytest.mark.parametrize("num_heads", [1, 4])
@pytest.mark.slow
def test_pixel_key_attention_equals_attention_over_projected_pixels(num_heads):
    from src.models.layers import MultiHeadAttention
    from src.models.wpa import PixelKeyAttention
    reference = MultiHeadAttention(24, 16, 24, num_heads)
    ours = PixelKeyAttention(24, 16, 24, num_heads)
    rng = np.random.default_rng(num_heads)
    for (name, param), (our_name, our_param) in zip(reference.parameters_and_names(), ours.parameters_and_names()):
        assert name == our_name
        values = ms.Tensor(rng.standard_normal(param.shape).astype(np.float32) * 0.3)
        param.set_data(values)
        our_param.set_data(values.copy())
    words = ms.Tensor(rng.standard_normal((2, 5, 24)).astype(np.float32))
    pixels = ms.Tensor(rng.standard_normal((2, 30, 16)).astype(np.float32))
    upstream = ms.Tensor(rng.standard_normal((2, 5, 24)).astype(np.float32))

    def attend_reference(query, keys):
        return reference(query, keys, keys)

    def value_and_gradients(cell, attend):
        def loss(query, keys):
            return (attend(query, keys) * upstream).sum()

        grad_fn = ms.value_and_grad(loss, (0, 1), cell.trainable_params())
        _, (d_inputs, d_params) = grad_fn(words, pixels)
        return [attend(words, pixels).asnumpy()] + [grad.asnumpy() for grad in d_inputs + d_params]

    expected = value_and_gradients(reference, attend_reference)
    got = value_and_gradients(ours, ours)
    for index, (ours_value, reference_value) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(ours_value, reference_value, rtol=1e-4, atol=2e-5, err_msg=str(index))


@pytest.mark.parametrize("lang_to_vis, vis_to_lang", [(False, True), (True, False)])
def test_a_left_out_direction_passes_its_features_unchanged(lang_to_vis, vis_to_lang):
    rng = np.random.default_rng(1)
    pixels = ms.Tensor(rng.standard_normal((2, 16, 8)).astype(np.float32))
    words = ms.Tensor(rng.standard_normal((2, 5, 6)).astype(np.float32))
    mask = ms.Tensor(np.ones((2, 5), np.int32))
    wpa = WordPixelAlignment(8, 6, 1, resolution=(4, 4), cpu_kernels=False, lang_to_vis=lang_to_vis,
                             vis_to_lang=vis_to_lang)
    for param in wpa.trainable_params():  # open the gates, so that a direction that is there changes its side
        param.set_data(ms.Tensor(rng.standard_normal(param.shape).astype(np.float32)))
    new_pixels, new_words, fused = (value.asnumpy() for value in wpa(pixels, words, mask))
    assert np.array_equal(new_pixels, pixels.asnumpy()) == (not lang_to_vis)
    assert np.array_equal(new_words, words.asnumpy()) == (not vis_to_lang)
    if not lang_to_vis:
        assert np.array_equal(fused, pixels.asnumpy())
    assert not any(name.startswith("lang_to_vis" if not lang_to_vis else "vis_to_lang")
                   for name in (param.name for param in wpa.trainable_params()))
