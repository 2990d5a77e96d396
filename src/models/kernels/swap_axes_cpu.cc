// Swapping the last two axes, (..., R, C) -> (..., C, R), as an AOT custom operator for MindSpore's
// CPU backend, whose Transpose moves a (1, 14400, 128) token map to channels-first at about 0.5 GB/s.
// Here the copy goes through cache-sized tiles.
#include <algorithm>
#include <cstdint>

#include "kernel_common.h"

namespace {

using coupalign::all_float32;
using coupalign::element_count;
using coupalign::parallel_for;

constexpr int64_t kTile = 32;

// One tile of a matrix: out[c, r] = in[r, c] for r in [row, row_end), c in [col, col_end).
void swap_tile(const float *__restrict in, float *__restrict out, int64_t rows, int64_t cols, int64_t row,
               int64_t row_end, int64_t col, int64_t col_end) {
    for (int64_t c = col; c < col_end; ++c) {
        for (int64_t r = row; r < row_end; ++r) out[c * rows + r] = in[r * cols + c];
    }
}

}  // namespace

// params: x (..., R, C), y (..., C, R)
extern "C" int SwapLastAxes(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *stream, void *extra) {
    if (nparam != 2 || !all_float32(nparam, dtypes) || ndims[0] < 2) return 1;
    const int64_t rows = shapes[0][ndims[0] - 2], cols = shapes[0][ndims[0] - 1];
    const int64_t matrices = element_count(ndims[0] - 2, shapes[0]);
    const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
    const int64_t tiles_per_matrix = row_tiles * col_tiles;
    const float *x = static_cast<const float *>(params[0]);
    float *y = static_cast<float *>(params[1]);
    parallel_for(matrices * tiles_per_matrix, 64, 1, [=](int64_t begin, int64_t end, int64_t) {
        for (int64_t tile = begin; tile < end; ++tile) {
            const int64_t matrix = tile / tiles_per_matrix, index = tile % tiles_per_matrix;
            const int64_t row = (index / col_tiles) * kTile, col = (index % col_tiles) * kTile;
            const int64_t offset = matrix * rows * cols;
            swap_tile(x + offset, y + offset, rows, cols, row, std::min(rows, row + kTile), col,
                      std::min(cols, col + kTile));
        }
    });
    return 0;
}
