// The spatial half of a stride-1 'same' k x k convolution, as AOT custom operators for MindSpore's CPU
// backend. The channel half is one matmul of the input pixels with all k*k weight slices at once,
// y[p, (i, j), :] = W[:, :, i, j] x[p]; the convolution is then out[h, w] = sum over (i, j) of
// y[h + i - r, w + j - r, (i, j), :] (r = k / 2, outside the map counts zero). Unlike unfold + matmul,
// the matmul's backward needs only the input pixels, not the k*k times larger unfolded columns.
//
// A third int32 tensor, layout (H, k), carries only its shape: the map height and the kernel size.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernel_common.h"

namespace {

using coupalign::kLanes;
using coupalign::Lanes;
using coupalign::load_lanes;
using coupalign::parallel_for;

struct ShiftLayout {
    int64_t images, height, width, kernel, channels;
    int64_t radius() const { return kernel / 2; }
    int64_t slices() const { return kernel * kernel; }
};

// From y or dy (B, H*W, k*k*C) at `wide_param` and the layout (H, k) at `layout_param`.
bool read_layout(int *ndims, int64_t **shapes, int wide_param, int layout_param, ShiftLayout *layout) {
    if (ndims[wide_param] != 3 || ndims[layout_param] != 2) return false;
    const int64_t height = shapes[layout_param][0], kernel = shapes[layout_param][1];
    const int64_t pixels = shapes[wide_param][1], wide = shapes[wide_param][2];
    if (height <= 0 || kernel <= 0 || kernel % 2 == 0 || pixels % height || wide % (kernel * kernel)) return false;
    *layout = ShiftLayout{shapes[wide_param][0], height, pixels / height, kernel, wide / (kernel * kernel)};
    return true;
}

// The checks both entry points share: three parameters, float32 data at 0 and 2, the layout at 1.
bool read_call(int nparam, const char **dtypes, int *ndims, int64_t **shapes, int wide_param, ShiftLayout *layout) {
    return nparam == 3 && std::strcmp(dtypes[0], "float32") == 0 && std::strcmp(dtypes[2], "float32") == 0 &&
           read_layout(ndims, shapes, wide_param, 1, layout);
}

void add_row(const float *__restrict in, float *__restrict out, int64_t length) {
    int64_t c = 0;
    for (; c + kLanes <= length; c += kLanes) {
        const Lanes sum = load_lanes(out + c) + load_lanes(in + c);
        std::memcpy(out + c, &sum, sizeof(sum));
    }
    for (; c < length; ++c) out[c] += in[c];
}

}  // namespace

// params: y (B, H*W, k*k*C), layout (H, k), out (B, H*W, C)
extern "C" int ShiftSum(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                        void *extra) {
    ShiftLayout layout;
    if (!read_call(nparam, dtypes, ndims, shapes, 0, &layout)) return 1;
    const float *y = static_cast<const float *>(params[0]);
    float *out = static_cast<float *>(params[2]);
    const int64_t channels = layout.channels, wide = layout.slices() * channels, r = layout.radius();
    parallel_for(layout.images * layout.height, 1, 1, [=](int64_t begin, int64_t end, int64_t) {
        for (int64_t row = begin; row < end; ++row) {
            const int64_t image = row / layout.height, h = row % layout.height;
            const float *y_image = y + image * layout.height * layout.width * wide;
            for (int64_t w = 0; w < layout.width; ++w) {
                float *target = out + (row * layout.width + w) * channels;
                std::fill(target, target + channels, 0.0f);
                for (int64_t i = 0; i < layout.kernel; ++i) {
                    const int64_t source_h = h + i - r;
                    if (source_h < 0 || source_h >= layout.height) continue;
                    for (int64_t j = 0; j < layout.kernel; ++j) {
                        const int64_t source_w = w + j - r;
                        if (source_w < 0 || source_w >= layout.width) continue;
                        const int64_t slice = i * layout.kernel + j;
                        add_row(y_image + (source_h * layout.width + source_w) * wide + slice * channels, target,
                                channels);
                    }
                }
            }
        }
    });
    return 0;
}

// The gradient: dy[h', w', (i, j), :] = dout[h' - i + r, w' - j + r, :], zero outside the map.
// params: dout (B, H*W, C), layout (H, k), dy (B, H*W, k*k*C)
extern "C" int ShiftSumBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
    ShiftLayout layout;
    if (!read_call(nparam, dtypes, ndims, shapes, 2, &layout) || shapes[0][2] != layout.channels) return 1;
    const float *dout = static_cast<const float *>(params[0]);
    float *dy = static_cast<float *>(params[2]);
    const int64_t channels = layout.channels, wide = layout.slices() * channels, r = layout.radius();
    parallel_for(layout.images * layout.height, 1, 1, [=](int64_t begin, int64_t end, int64_t) {
        for (int64_t row = begin; row < end; ++row) {
            const int64_t image = row / layout.height, h = row % layout.height;
            const float *dout_image = dout + image * layout.height * layout.width * channels;
            for (int64_t w = 0; w < layout.width; ++w) {
                float *target = dy + (row * layout.width + w) * wide;
                for (int64_t i = 0; i < layout.kernel; ++i) {
                    const int64_t out_h = h - i + r;
                    for (int64_t j = 0; j < layout.kernel; ++j) {
                        const int64_t out_w = w - j + r;
                        float *slice = target + (i * layout.kernel + j) * channels;
                        if (out_h < 0 || out_h >= layout.height || out_w < 0 || out_w >= layout.width) {
                            std::fill(slice, slice + channels, 0.0f);
                        } else {
                            std::memcpy(slice, dout_image + (out_h * layout.width + out_w) * channels,
                                        channels * sizeof(float));
                        }
                    }
                }
            }
        }
    });
    return 0;
}
