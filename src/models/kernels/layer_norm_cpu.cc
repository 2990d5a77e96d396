// LayerNorm over the last axis and its gradient for MindSpore's CPU backend, as AOT custom operators.
// MindSpore's CPU LayerNorm costs 2-4 ns per element on Swin-sized inputs; here each row is two
// vectorised passes, and rows are split over the cores.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernel_common.h"

namespace {

using coupalign::all_float32;
using coupalign::broadcast_lanes;
using coupalign::kLanes;
using coupalign::Lanes;
using coupalign::lanes_sum;
using coupalign::load_lanes;
using coupalign::parallel_for;
using coupalign::row_centred_squares;
using coupalign::row_count;
using coupalign::row_dot;
using coupalign::row_sum;

// Rows per thread at least: below this, starting a thread costs more than it saves.
constexpr int64_t kMinElementsPerChunk = 1 << 14;

// Mean and 1/sqrt(variance + eps) of one row (two passes, as the reference implementations).
void row_statistics(const float *__restrict x, int64_t width, float eps, float *mean, float *rstd) {
    const float row_mean = row_sum(x, width) / static_cast<float>(width);
    const float squares = row_centred_squares(x, row_mean, width);
    *mean = row_mean;
    *rstd = 1.0f / std::sqrt(squares / static_cast<float>(width) + eps);
}

void normalise_row(const float *__restrict x, const float *__restrict gamma, const float *__restrict beta,
                   int64_t width, float eps, float *__restrict y) {
    float mean, rstd;
    row_statistics(x, width, eps, &mean, &rstd);
    for (int64_t i = 0; i < width; ++i) y[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
}

// Sum of a * b * (x - centre), in vector lanes (see kernel_common.h).
float weighted_centred_dot(const float *__restrict a, const float *__restrict b, const float *__restrict x,
                           float centre, int64_t length) {
    const Lanes centre_lanes = broadcast_lanes(centre);
    Lanes acc = broadcast_lanes(0.0f);
    int64_t i = 0;
    for (; i + kLanes <= length; i += kLanes) {
        acc += load_lanes(a + i) * load_lanes(b + i) * (load_lanes(x + i) - centre_lanes);
    }
    float total = lanes_sum(acc);
    for (; i < length; ++i) total += a[i] * b[i] * (x[i] - centre);
    return total;
}

// dx for one row; adds the row's share of dgamma and dbeta into the thread's accumulators.
void row_gradient(const float *__restrict x, const float *__restrict gamma, const float *__restrict dy,
                  int64_t width, float eps, float *__restrict dx, float *__restrict dgamma,
                  float *__restrict dbeta) {
    float mean, rstd;
    row_statistics(x, width, eps, &mean, &rstd);
    for (int64_t i = 0; i < width; ++i) {
        dgamma[i] += dy[i] * (x[i] - mean) * rstd;
        dbeta[i] += dy[i];
    }
    const float sum_g = row_dot(dy, gamma, width);
    const float sum_g_xhat = weighted_centred_dot(dy, gamma, x, mean, width) * rstd;
    const float mean_g = sum_g / static_cast<float>(width);
    const float mean_g_xhat = sum_g_xhat / static_cast<float>(width);
    for (int64_t i = 0; i < width; ++i) {
        const float xhat = (x[i] - mean) * rstd;
        dx[i] = rstd * (dy[i] * gamma[i] - mean_g - xhat * mean_g_xhat);
    }
}

}  // namespace

// params: x (..., C), gamma (C), beta (C), eps (1), y (..., C)
extern "C" int LayerNormForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
    if (nparam != 5 || !all_float32(nparam, dtypes)) return 1;
    const int64_t width = shapes[0][ndims[0] - 1];
    const int64_t rows = row_count(ndims[0], shapes[0]);
    const float *x = static_cast<const float *>(params[0]);
    const float *gamma = static_cast<const float *>(params[1]);
    const float *beta = static_cast<const float *>(params[2]);
    const float eps = *static_cast<const float *>(params[3]);
    float *y = static_cast<float *>(params[4]);
    parallel_for(rows, std::max<int64_t>(1, kMinElementsPerChunk / width), 1, [=](int64_t begin, int64_t end, int64_t) {
        for (int64_t row = begin; row < end; ++row) {
            normalise_row(x + row * width, gamma, beta, width, eps, y + row * width);
        }
    });
    return 0;
}

// params: x (..., C), gamma (C), eps (1), dy (..., C), dx (..., C), dgamma (C), dbeta (C)
extern "C" int LayerNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *stream, void *extra) {
    if (nparam != 7 || !all_float32(nparam, dtypes)) return 1;
    const int64_t width = shapes[0][ndims[0] - 1];
    const int64_t rows = row_count(ndims[0], shapes[0]);
    const float *x = static_cast<const float *>(params[0]);
    const float *gamma = static_cast<const float *>(params[1]);
    const float eps = *static_cast<const float *>(params[2]);
    const float *dy = static_cast<const float *>(params[3]);
    float *dx = static_cast<float *>(params[4]);
    float *dgamma = static_cast<float *>(params[5]);
    float *dbeta = static_cast<float *>(params[6]);
    // Partial sums per chunk, added in chunk order afterwards, so that results do not depend on timing.
    const int64_t chunks = coupalign::worker_count();
    std::vector<float> partial_dgamma(chunks * width, 0.0f), partial_dbeta(chunks * width, 0.0f);
    float *partial_g = partial_dgamma.data(), *partial_b = partial_dbeta.data();
    parallel_for(rows, std::max<int64_t>(1, kMinElementsPerChunk / width), 1,
                 [=](int64_t begin, int64_t end, int64_t chunk) {
                     for (int64_t row = begin; row < end; ++row) {
                         row_gradient(x + row * width, gamma, dy + row * width, width, eps, dx + row * width,
                                      partial_g + chunk * width, partial_b + chunk * width);
                     }
                 });
    std::fill(dgamma, dgamma + width, 0.0f);
    std::fill(dbeta, dbeta + width, 0.0f);
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        for (int64_t i = 0; i < width; ++i) {
            dgamma[i] += partial_g[chunk * width + i];
            dbeta[i] += partial_b[chunk * width + i];
        }
    }
    return 0;
}
