// Softmax over the keys of window attention scores with the relative position bias and the shift
// mask added on the fly, and its gradient, as AOT custom operators for MindSpore's CPU backend.
// MindSpore would broadcast-add bias and mask in two passes over the scores and then run softmax;
// here each row is read once and written once.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernel_common.h"

namespace {

using coupalign::all_float32;
using coupalign::exp_nonpositive;
using coupalign::parallel_for;
using coupalign::row_count;
using coupalign::row_dot;
using coupalign::row_max;
using coupalign::row_sum;

constexpr int64_t kMinElementsPerChunk = 1 << 14;

void softmax_row(const float *__restrict scores, const float *__restrict bias, const float *__restrict mask,
                 int64_t length, float *__restrict out) {
    for (int64_t j = 0; j < length; ++j) out[j] = scores[j] + bias[j] + mask[j];
    const float top = row_max(out, length);
    for (int64_t k = 0; k < length; ++k) out[k] = exp_nonpositive(out[k] - top);
    const float inverse = 1.0f / row_sum(out, length);
    for (int64_t k = 0; k < length; ++k) out[k] *= inverse;
}

}  // namespace

// params: scores (W, H, N, N), bias (H, N, N), mask (M, N, N) with W a multiple of M, probs (W, H, N, N)
extern "C" int WindowSoftmaxForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
    if (nparam != 4 || !all_float32(nparam, dtypes) || ndims[0] != 4) return 1;
    const int64_t windows = shapes[0][0], heads = shapes[0][1], queries = shapes[0][2], keys = shapes[0][3];
    const int64_t mask_windows = shapes[2][0];
    const float *scores = static_cast<const float *>(params[0]);
    const float *bias = static_cast<const float *>(params[1]);
    const float *mask = static_cast<const float *>(params[2]);
    float *probs = static_cast<float *>(params[3]);
    const int64_t rows = windows * heads * queries;
    parallel_for(rows, std::max<int64_t>(1, kMinElementsPerChunk / keys), 1, [=](int64_t begin, int64_t end, int64_t) {
        for (int64_t row = begin; row < end; ++row) {
            const int64_t query = row % queries;
            const int64_t head = (row / queries) % heads;
            const int64_t window = row / (queries * heads);
            softmax_row(scores + row * keys, bias + (head * queries + query) * keys,
                        mask + ((window % mask_windows) * queries + query) * keys, keys, probs + row * keys);
        }
    });
    return 0;
}

// d scores = p * (dp - sum(dp * p)) row by row.  params: probs (..., N), dprobs (..., N), dscores (..., N)
extern "C" int WindowSoftmaxBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
    if (nparam != 3 || !all_float32(nparam, dtypes)) return 1;
    const int64_t keys = shapes[0][ndims[0] - 1];
    const int64_t rows = row_count(ndims[0], shapes[0]);
    const float *probs = static_cast<const float *>(params[0]);
    const float *dprobs = static_cast<const float *>(params[1]);
    float *dscores = static_cast<float *>(params[2]);
    parallel_for(rows, std::max<int64_t>(1, kMinElementsPerChunk / keys), 1, [=](int64_t begin, int64_t end, int64_t) {
        for (int64_t row = begin; row < end; ++row) {
            const float *__restrict p = probs + row * keys;
            const float *__restrict dp = dprobs + row * keys;
            float *__restrict ds = dscores + row * keys;
            const float dot = row_dot(dp, p, keys);
            for (int64_t j = 0; j < keys; ++j) ds[j] = p[j] * (dp[j] - dot);
        }
    });
    return 0;
}
