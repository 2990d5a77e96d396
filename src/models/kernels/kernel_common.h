// Helpers shared by the CPU kernels: argument checks, a branch-free exp that vectorises, and a
// parallel loop.
#pragma once

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace coupalign {

inline int64_t element_count(int ndim, const int64_t *shape) {
    int64_t count = 1;
    for (int axis = 0; axis < ndim; ++axis) count *= shape[axis];
    return count;
}

// Rows of a tensor read as (rows, last axis): the product of all axes but the last.
inline int64_t row_count(int ndim, const int64_t *shape) { return element_count(ndim - 1, shape); }

inline bool all_float32(int nparam, const char **dtypes) {
    for (int index = 0; index < nparam; ++index) {
        if (std::strcmp(dtypes[index], "float32") != 0) return false;
    }
    return true;
}

// exp(v) for v <= 0 (relative error < 2e-7): v = k ln2 + r with |r| <= ln2/2, 2^k built in the
// exponent bits. No branch and no libm call, so loops calling it vectorise without a vector libm.
inline float exp_nonpositive(float v) {
    v = v < -87.0f ? -87.0f : v;
    // Nearest integer to v/ln2, by truncating v/ln2 - 0.5 towards zero (v <= 0).
    const int32_t k = static_cast<int32_t>(v * 1.44269504088896341f - 0.5f);
    const float r = v - static_cast<float>(k) * 0.693147180559945309f;
    const float poly =
        1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    const int32_t bits = (k + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return poly * scale;
}

// Reductions in a GCC vector type of 16 float lanes: without -ffast-math the compiler keeps a scalar
// sum (or max) in source order and does not vectorise it; explicit lanes give a fixed order that
// does vectorise, on any target.
constexpr int64_t kLanes = 16;
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

inline Lanes load_lanes(const float *p) {
    Lanes value;
    std::memcpy(&value, p, sizeof(value));
    return value;
}

inline Lanes broadcast_lanes(float value) {
    Lanes lanes;
    for (int64_t lane = 0; lane < kLanes; ++lane) lanes[lane] = value;
    return lanes;
}

inline float lanes_sum(Lanes value) {
    float total = 0.0f;
    for (int64_t lane = 0; lane < kLanes; ++lane) total += value[lane];
    return total;
}

inline float row_sum(const float *__restrict x, int64_t length) {
    Lanes acc = broadcast_lanes(0.0f);
    int64_t i = 0;
    for (; i + kLanes <= length; i += kLanes) acc += load_lanes(x + i);
    float total = lanes_sum(acc);
    for (; i < length; ++i) total += x[i];
    return total;
}

inline float row_dot(const float *__restrict a, const float *__restrict b, int64_t length) {
    Lanes acc = broadcast_lanes(0.0f);
    int64_t i = 0;
    for (; i + kLanes <= length; i += kLanes) acc += load_lanes(a + i) * load_lanes(b + i);
    float total = lanes_sum(acc);
    for (; i < length; ++i) total += a[i] * b[i];
    return total;
}

// Sum of (x - centre)^2.
inline float row_centred_squares(const float *__restrict x, float centre, int64_t length) {
    const Lanes centre_lanes = broadcast_lanes(centre);
    Lanes acc = broadcast_lanes(0.0f);
    int64_t i = 0;
    for (; i + kLanes <= length; i += kLanes) {
        const Lanes centred = load_lanes(x + i) - centre_lanes;
        acc += centred * centred;
    }
    float total = lanes_sum(acc);
    for (; i < length; ++i) total += (x[i] - centre) * (x[i] - centre);
    return total;
}

inline float row_max(const float *__restrict x, int64_t length) {
    Lanes best = broadcast_lanes(-INFINITY);
    int64_t i = 0;
    for (; i + kLanes <= length; i += kLanes) {
        const Lanes values = load_lanes(x + i);
        best = best > values ? best : values;
    }
    float top = -INFINITY;
    for (int64_t lane = 0; lane < kLanes; ++lane) top = std::max(top, best[lane]);
    for (; i < length; ++i) top = std::max(top, x[i]);
    return top;
}

// Cores this process may run on (affinity mask), or COUPALIGN_KERNEL_THREADS when set.
inline int worker_count() {
    static const int count = [] {
        if (const char *configured = std::getenv("COUPALIGN_KERNEL_THREADS")) {
            return std::max(1, std::atoi(configured));
        }
        cpu_set_t cpus;
        if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0) return std::max(1, CPU_COUNT(&cpus));
        return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    }();
    return count;
}

// Splits [0, count) into one contiguous chunk per worker (each a multiple of `align` items, at
// least `min_chunk`) and calls body(begin, end, chunk_index); chunk 0 runs on the calling thread.
// Threads are started per call and joined, not kept spinning: between our kernels MindSpore's own
// thread pool needs the cores (an OpenMP team left spinning made the whole Swin forward 30% slower).
template <typename Body>
void parallel_for(int64_t count, int64_t min_chunk, int64_t align, Body body) {
    const int64_t by_size = std::max<int64_t>(1, count / std::max<int64_t>(1, min_chunk));
    const int64_t chunks = std::min<int64_t>(worker_count(), by_size);
    const int64_t chunk = ((count + chunks - 1) / chunks + align - 1) / align * align;
    std::vector<std::thread> helpers;
    for (int64_t index = 1; index < chunks; ++index) {
        const int64_t begin = std::min(count, index * chunk), end = std::min(count, begin + chunk);
        if (end > begin) helpers.emplace_back(body, begin, end, index);
    }
    body(0, std::min(count, chunk), 0);
    for (auto &helper : helpers) helper.join();
}

}  // namespace coupalign
