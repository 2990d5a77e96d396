// Exact (erf) GELU and its gradient for MindSpore's CPU backend, as AOT custom operators, also with
// the preceding layer's bias added on the fly (saving MindSpore's separate BiasAdd pass).
// MindSpore's own CPU erf runs one scalar std::erf per element (about 10 ns each). Here erf is
// Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7) with a branch-free exp, so that the compiler vectorises
// the loops, and the work is split over the cores.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernel_common.h"

namespace {

using coupalign::all_float32;
using coupalign::element_count;
using coupalign::exp_nonpositive;
using coupalign::parallel_for;
using coupalign::row_count;

constexpr int64_t kMinChunk = 1 << 15;

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

inline float erf_approx(float z) {
    const float a = std::fabs(z);
    const float t = 1.0f / (1.0f + 0.3275911f * a);
    const float poly =
        t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    return std::copysign(1.0f - poly * exp_nonpositive(-a * a), z);
}

// GELU(z) = z * Phi(z).
inline float gelu(float z) { return 0.5f * z * (1.0f + erf_approx(z * kInvSqrt2)); }

// dGELU/dz = Phi(z) + z * phi(z).
inline float gelu_slope(float z) {
    const float cdf = 0.5f * (1.0f + erf_approx(z * kInvSqrt2));
    const float pdf = kInvSqrt2Pi * exp_nonpositive(-0.5f * z * z);
    return cdf + z * pdf;
}

void gelu_range(const float *__restrict x, float *__restrict y, int64_t count) {
    for (int64_t i = 0; i < count; ++i) y[i] = gelu(x[i]);
}

void gelu_grad_range(const float *__restrict x, const float *__restrict dy, float *__restrict dx, int64_t count) {
    for (int64_t i = 0; i < count; ++i) dx[i] = dy[i] * gelu_slope(x[i]);
}

// The same on rows of `width` elements with a per-column bias added first.
void bias_gelu_rows(const float *__restrict x, const float *__restrict bias, float *__restrict y, int64_t rows,
                    int64_t width) {
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t offset = row * width;
        for (int64_t i = 0; i < width; ++i) y[offset + i] = gelu(x[offset + i] + bias[i]);
    }
}

void bias_gelu_grad_rows(const float *__restrict x, const float *__restrict bias, const float *__restrict dy,
                         float *__restrict dx, int64_t rows, int64_t width) {
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t offset = row * width;
        for (int64_t i = 0; i < width; ++i) dx[offset + i] = dy[offset + i] * gelu_slope(x[offset + i] + bias[i]);
    }
}

}  // namespace

// y = x * Phi(x).  params: x, y
extern "C" int GeluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
    if (nparam != 2 || !all_float32(nparam, dtypes)) return 1;
    const float *x = static_cast<const float *>(params[0]);
    float *y = static_cast<float *>(params[1]);
    parallel_for(element_count(ndims[0], shapes[0]), kMinChunk, 16,
                 [=](int64_t begin, int64_t end, int64_t) { gelu_range(x + begin, y + begin, end - begin); });
    return 0;
}

// dx = dy * (Phi(x) + x * phi(x)).  params: x, dy, dx
extern "C" int GeluBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *stream, void *extra) {
    if (nparam != 3 || !all_float32(nparam, dtypes)) return 1;
    const float *x = static_cast<const float *>(params[0]);
    const float *dy = static_cast<const float *>(params[1]);
    float *dx = static_cast<float *>(params[2]);
    parallel_for(element_count(ndims[0], shapes[0]), kMinChunk, 16, [=](int64_t begin, int64_t end, int64_t) {
        gelu_grad_range(x + begin, dy + begin, dx + begin, end - begin);
    });
    return 0;
}

// y = (x + bias) * Phi(x + bias), bias broadcast over the last axis.  params: x (..., C), bias (C), y
extern "C" int BiasGeluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *stream, void *extra) {
    if (nparam != 3 || !all_float32(nparam, dtypes)) return 1;
    const int64_t width = shapes[0][ndims[0] - 1];
    const float *x = static_cast<const float *>(params[0]);
    const float *bias = static_cast<const float *>(params[1]);
    float *y = static_cast<float *>(params[2]);
    parallel_for(row_count(ndims[0], shapes[0]), std::max<int64_t>(1, kMinChunk / width), 1,
                 [=](int64_t begin, int64_t end, int64_t) {
                     bias_gelu_rows(x + begin * width, bias, y + begin * width, end - begin, width);
                 });
    return 0;
}

// d(x + bias) of BiasGeluForward (the bias gradient is its sum over rows).  params: x, bias, dy, dx
extern "C" int BiasGeluBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
    if (nparam != 4 || !all_float32(nparam, dtypes)) return 1;
    const int64_t width = shapes[0][ndims[0] - 1];
    const float *x = static_cast<const float *>(params[0]);
    const float *bias = static_cast<const float *>(params[1]);
    const float *dy = static_cast<const float *>(params[2]);
    float *dx = static_cast<float *>(params[3]);
    parallel_for(row_count(ndims[0], shapes[0]), std::max<int64_t>(1, kMinChunk / width), 1,
                 [=](int64_t begin, int64_t end, int64_t) {
                     const int64_t offset = begin * width;
                     bias_gelu_grad_rows(x + offset, bias, dy + offset, dx + offset, end - begin, width);
                 });
    return 0;
}
