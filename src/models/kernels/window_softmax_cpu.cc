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

constexpr int64_t kMinElementsPerChunk = 1 << 14;

void softmax_row(const float *__restrict scores, const float *__restrict bias, const float *__restrict mask,
                 int64_t length, float *__restrict out) {
    for (int64_t j = 0; j < length; ++j) out[j] = scores[j] + bias[j] + mask[j];
    // Row maximum in a GCC vector type: the compiler does not vectorise a scalar max reduction (NaN
    // rules), and a vector select keeps them while using the vector registers of any target.
    constexpr int64_t kLanes = 16;
    typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));
    Lanes best;
    for (int64_t lane = 0; lane < kLanes; ++lane) best[lane] = -INFINITY;
    int64_t j = 0;
    for (; j + kLanes <= length; j += kLanes) {
        Lanes values;
        std::memcpy(&values, out + j, sizeof(values));
        best = best > values ? best : values;
    }
    float top = -INFINITY;
    for (; j < length; ++j) top = std::max(top, out[j]);
    for (int64_t lane = 0; lane < kLanes; ++lane) top = std::max(top, best[lane]);
    float total = 0.0f;
    for (int64_t k = 0; k < length; ++k) {
        out[k] = exp_nonpositive(out[k] - top);
        total += out[k];
    }
    const float inverse = 1.0f / total;
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
            float dot = 0.0f;
            for (int64_t j = 0; j < keys; ++j) dot += dp[j] * p[j];
            for (int64_t j = 0; j < keys; ++j) ds[j] = p[j] * (dp[j] - dot);
        }
    });
    return 0;
}
