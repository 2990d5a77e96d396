// Window attention's data movement as AOT custom operators for MindSpore's CPU backend: from the
// bias-free qkv projection of the tokens (B, L, 3C) straight to per-head queries, keys and values of
// the (shifted, padded) windows (B*nW, heads, N, C/heads), and from the per-head attention output back
// to the tokens (B, L, C). MindSpore would pad, gather, add the bias, split, scale and transpose in
// separate passes; here each direction is one pass.
//
// Windows are described by two int32 index tensors (see window_token_indices in swin.py):
//   slot_source (S,)  source token of each of the S = nW*N window slots of an image, L for padding;
//   token_slot  (L,)  window slot of each token.
// slot_source restricted to real tokens must be the inverse of token_slot (a permutation).
// A third int32 tensor, layout (heads, N), carries only its shape: it lets MindSpore infer the output
// shapes from the inputs alone (its cached bprop graphs must not depend on Python closures).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernel_common.h"

namespace {

using coupalign::all_float32;
using coupalign::parallel_for;

constexpr int64_t kMinElementsPerChunk = 1 << 14;

struct WindowLayout {
    int64_t windows;    // B * nW
    int64_t heads;
    int64_t tokens;     // N, per window
    int64_t head_dim;
    int64_t slots;      // S = nW * N, per image
    int64_t sources;    // L, tokens per image
    int64_t parts;      // 3 for q, k, v; 1 for the attention output
    int64_t width() const { return heads * head_dim; }
    int64_t images() const { return windows * tokens / slots; }
    // Offset of (slot row, head) in a (B*nW, heads, N, d) tensor; slot rows run over B*S.
    int64_t head_offset(int64_t slot_row, int64_t head) const {
        const int64_t window = slot_row / tokens, token = slot_row % tokens;
        return ((window * heads + head) * tokens + token) * head_dim;
    }
};

// The layout of a call from its per-head tensor (position `heads_param`, rank 4) and the slot_source and
// token_slot shapes; false when the shapes do not fit together.
bool read_layout(int *ndims, int64_t **shapes, int heads_param, int slot_source_param, int64_t parts,
                 WindowLayout *layout) {
    if (ndims[heads_param] != 4) return false;
    const int64_t *head_shape = shapes[heads_param];
    *layout = WindowLayout{head_shape[0], head_shape[1], head_shape[2], head_shape[3],
                           shapes[slot_source_param][0], shapes[slot_source_param + 1][0], parts};
    return layout->slots > 0 && layout->slots % layout->tokens == 0 &&
           (layout->windows * layout->tokens) % layout->slots == 0;
}

// heads[p][slot, h, :] = (tokens[source(slot), p*C + h*d : ...] + bias[p*C + h*d : ...]) * scales[p],
// with a padding slot reading a zero token. A null bias adds nothing.
void heads_from_tokens(const WindowLayout &layout, const float *tokens, const float *bias, const float *scales,
                       const int32_t *slot_source, float *const *heads) {
    const int64_t width = layout.width(), row_width = layout.parts * width;
    parallel_for(layout.images() * layout.slots, std::max<int64_t>(1, kMinElementsPerChunk / row_width), 1,
                 [=, &layout](int64_t begin, int64_t end, int64_t) {
                     for (int64_t row = begin; row < end; ++row) {
                         const int64_t image = row / layout.slots;
                         const int64_t source = slot_source[row % layout.slots];
                         const bool padding = source < 0 || source >= layout.sources;
                         const float *line = padding ? nullptr : tokens + (image * layout.sources + source) * row_width;
                         for (int64_t part = 0; part < layout.parts; ++part) {
                             const float scale = scales[part];
                             for (int64_t head = 0; head < layout.heads; ++head) {
                                 const int64_t column = part * width + head * layout.head_dim;
                                 float *__restrict out = heads[part] + layout.head_offset(row, head);
                                 for (int64_t i = 0; i < layout.head_dim; ++i) {
                                     const float value = padding ? 0.0f : line[column + i];
                                     out[i] = (bias == nullptr ? value : value + bias[column + i]) * scale;
                                 }
                             }
                         }
                     }
                 });
}

// tokens[t, p*C + h*d : ...] = heads[p][slot(t), h, :] * scales[p]
void tokens_from_heads(const WindowLayout &layout, const float *const *heads, const float *scales,
                       const int32_t *token_slot, float *tokens) {
    const int64_t width = layout.width(), row_width = layout.parts * width;
    parallel_for(layout.images() * layout.sources, std::max<int64_t>(1, kMinElementsPerChunk / row_width), 1,
                 [=, &layout](int64_t begin, int64_t end, int64_t) {
                     for (int64_t row = begin; row < end; ++row) {
                         const int64_t image = row / layout.sources;
                         const int64_t slot_row = image * layout.slots + token_slot[row % layout.sources];
                         float *__restrict line = tokens + row * row_width;
                         for (int64_t part = 0; part < layout.parts; ++part) {
                             const float scale = scales[part];
                             for (int64_t head = 0; head < layout.heads; ++head) {
                                 const float *__restrict in = heads[part] + layout.head_offset(slot_row, head);
                                 float *__restrict out = line + part * width + head * layout.head_dim;
                                 for (int64_t i = 0; i < layout.head_dim; ++i) out[i] = in[i] * scale;
                             }
                         }
                     }
                 });
}

const int32_t *index_param(void **params, int position) { return static_cast<const int32_t *>(params[position]); }

// slot_source, token_slot and layout, from position `first` on.
bool index_types(const char **dtypes, int first) {
    for (int index = first; index < first + 3; ++index) {
        if (std::strcmp(dtypes[index], "int32") != 0) return false;
    }
    return true;
}

}  // namespace

// q (scaled), k, v of every window slot from the bias-free qkv projection of the tokens.
// params: qkv (B, L, 3C), bias (3C), scale (1), slot_source (S), token_slot (L), layout (heads, N),
//         q, k, v (B*nW, heads, N, d)
extern "C" int QkvHeadsForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *stream, void *extra) {
    if (nparam != 9 || !all_float32(3, dtypes) || !index_types(dtypes, 3) || !all_float32(3, dtypes + 6)) return 1;
    WindowLayout layout;
    if (ndims[0] != 3 || !read_layout(ndims, shapes, 6, 3, 3, &layout)) return 1;
    if (shapes[0][1] != layout.sources || shapes[0][2] != 3 * layout.width()) return 1;
    const float scales[3] = {*static_cast<const float *>(params[2]), 1.0f, 1.0f};
    float *heads[3] = {static_cast<float *>(params[6]), static_cast<float *>(params[7]),
                       static_cast<float *>(params[8])};
    heads_from_tokens(layout, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]), scales,
                      index_param(params, 3), heads);
    return 0;
}

// d qkv of the tokens (padding slots have no token; the bias gradient, which they do share, is summed
// over all slots by the caller).
// params: dq, dk, dv (B*nW, heads, N, d), scale (1), slot_source (S), token_slot (L), layout (heads, N),
//         dqkv (B, L, 3C)
extern "C" int QkvHeadsBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
    if (nparam != 8 || !all_float32(4, dtypes) || !index_types(dtypes, 4) || !all_float32(1, dtypes + 7)) return 1;
    WindowLayout layout;
    if (!read_layout(ndims, shapes, 0, 4, 3, &layout)) return 1;
    const float scales[3] = {*static_cast<const float *>(params[3]), 1.0f, 1.0f};
    const float *heads[3] = {static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                             static_cast<const float *>(params[2])};
    tokens_from_heads(layout, heads, scales, index_param(params, 5), static_cast<float *>(params[7]));
    return 0;
}

// Attention output of the window slots back to the tokens (padding slots dropped).
// params: x (B*nW, heads, N, d), slot_source (S), token_slot (L), layout (heads, N), y (B, L, heads*d)
extern "C" int MergeHeadsForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *stream, void *extra) {
    if (nparam != 5 || !all_float32(1, dtypes) || !index_types(dtypes, 1) || !all_float32(1, dtypes + 4)) return 1;
    WindowLayout layout;
    if (!read_layout(ndims, shapes, 0, 1, 1, &layout)) return 1;
    const float scales[1] = {1.0f};
    const float *heads[1] = {static_cast<const float *>(params[0])};
    tokens_from_heads(layout, heads, scales, index_param(params, 2), static_cast<float *>(params[4]));
    return 0;
}

// params: dy (B, L, heads*d), slot_source (S), token_slot (L), layout (heads, N), dx (B*nW, heads, N, d)
extern "C" int MergeHeadsBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                  void *stream, void *extra) {
    if (nparam != 5 || !all_float32(1, dtypes) || !index_types(dtypes, 1) || !all_float32(1, dtypes + 4)) return 1;
    WindowLayout layout;
    if (!read_layout(ndims, shapes, 4, 1, 1, &layout)) return 1;
    const float scales[1] = {1.0f};
    float *heads[1] = {static_cast<float *>(params[4])};
    heads_from_tokens(layout, static_cast<const float *>(params[0]), nullptr, scales, index_param(params, 1), heads);
    return 0;
}
