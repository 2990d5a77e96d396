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


@pytest.mark.parametrize("position_dim", [0, 8])
def test_words_learn_where_the_pixels_are_only_with_the_position_input(position_dim):
    """Vision to language reads the pixels with their projected sine encoding: moving the same pixels to other
    places changes what the words gather when position_dim > 0, and nothing without it (a set of pixels)."""
    from src.models.layers import sine_position_encoding
    from src.models.wpa import WordPixelAttention
    rng = np.random.default_rng(2)
    attention = WordPixelAttention(6, 8, 2, cpu_kernels=False, resolution=(4, 4), position_dim=position_dim)
    words = ms.Tensor(rng.standard_normal((1, 3, 6)).astype(np.float32))
    pixels = rng.standard_normal((1, 16, 8)).astype(np.float32)
    moved = pixels[:, rng.permutation(16)]
    here, there = (attention(words, ms.Tensor(values)).asnumpy() for values in (pixels, moved))
    if position_dim == 0:
        np.testing.assert_allclose(here, there, atol=1e-5)
        assert attention.position is None
        return
    assert np.abs(here - there).max() > 1e-3
    # the encoding added to every pixel is the projection of the sine table: linear in it, as nn.Dense
    projection = attention.position.proj
    expected = sine_position_encoding(4, 4, position_dim) @ projection.weight.asnumpy().T + projection.bias.asnumpy()
    np.testing.assert_allclose(attention.position(ms.Tensor(pixels)).asnumpy()[0], expected, rtol=1e-5, atol=1e-6)
