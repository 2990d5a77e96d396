// Helpers shared by the CPU kernels: argument checks and a branch-free exp that vectorises.
#pragma once

#include <cstdint>
#include <cstring>

namespace coupalign {

inline int64_t element_count(int ndim, const int64_t *shape) {
    int64_t count = 1;
    for (int axis = 0; axis < ndim; ++axis) count *= shape[axis];
    return count;
}

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

}  // namespace coupalign
