/*
 * bet_batch: host batch inference for dense lightning-bet models (see bet_batch.h).
 * Bit-identical to bet_predict; SIMD paths are chosen at compile time from the target.
 */
#include "bet_batch.h"

#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define BET_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__)
#define BET_AVX2 1
#include <immintrin.h>
#elif defined(__ARM_NEON) && defined(__aarch64__)
#define BET_NEON 1
#include <arm_neon.h>
#endif

#define BET_ALIGN 64u
#define BET_ROW_BLOCK 64u /* rows whose weights stay in L1/L2 while a batch passes over them */

static size_t bet_round_up(size_t n, size_t to)
{
    return (n + to - 1u) / to * to;
}

static uint8_t *bet_align(void *p)
{
    uintptr_t u = (uintptr_t)p;
    return (uint8_t *)(u + ((BET_ALIGN - u % BET_ALIGN) % BET_ALIGN));
}

static uint32_t bet_load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint32_t bet_words64(uint32_t n)
{
    return n / 64u + (uint32_t)(n % 64u != 0u);
}

const char *bet_batch_simd(void)
{
#if defined(BET_AVX512)
#if defined(__AVX512VNNI__) && defined(__AVX512VPOPCNTDQ__)
    return "avx512bw+vnni+vpopcntdq";
#elif defined(__AVX512VPOPCNTDQ__)
    return "avx512bw+vpopcntdq";
#elif defined(__AVX512VNNI__)
    return "avx512bw+vnni";
#else
    return "avx512bw";
#endif
#elif defined(BET_AVX2)
    return "avx2";
#elif defined(BET_NEON)
    return "neon";
#else
    return "scalar";
#endif
}

/* ---------------------------------------------------------------------------------------- */
/* Sizes. */

static size_t bet_layer_bytes(const bet_layer *layer)
{
    size_t rows = layer->out_features, bytes;
    if (layer->binary_input) {
        bytes = rows * bet_words64(layer->in_features) * 8u;
    } else {
        bytes = rows * bet_round_up(layer->in_features, BET_ALIGN);
    }
    bytes = bet_round_up(bytes, BET_ALIGN);
    if (!layer->is_output) {
        bytes += bet_round_up(4u * rows, BET_ALIGN) + bet_round_up(rows, BET_ALIGN);
    }
    return bytes;
}

size_t bet_batch_workspace_bytes(const bet_model *m)
{
    size_t total = BET_ALIGN; /* room to align the caller's buffer */
    uint32_t l;
    if (m == NULL || m->num_layers == 0u || m->num_layers > BET_MAX_LAYERS) {
        return 0u;
    }
    for (l = 0; l < m->num_layers; ++l) {
        total += bet_layer_bytes(&m->layers[l]);
    }
    return total;
}

bet_status bet_batch_init(bet_batch *b, const bet_model *m, void *workspace, size_t bytes)
{
    uint8_t *p;
    uint32_t l;
    if (b == NULL || m == NULL || workspace == NULL) {
        return BET_ERR_NULL;
    }
    memset(b, 0, sizeof(*b));
    if (m->num_layers == 0u || m->num_layers > BET_MAX_LAYERS ||
        bytes < bet_batch_workspace_bytes(m)) {
        return BET_ERR_LAYOUT;
    }
    for (l = 0; l < m->num_layers; ++l) {
        if (m->layers[l].binary_input != (uint8_t)(l > 0u)) {
            return BET_ERR_LAYOUT;
        }
#ifdef BET_KIND_CONV_LAYER
        if (m->layers[l].is_conv) {
            return BET_ERR_LAYOUT;
        }
#endif
    }
    p = bet_align(workspace);
    b->model = m;
    b->num_layers = m->num_layers;
    b->num_inputs = m->num_inputs;
    b->num_classes = m->num_classes;
    b->pixel_stride = (uint32_t)bet_round_up(m->num_inputs, BET_ALIGN);
    b->max_words = 1u;
    for (l = 0; l < m->num_layers; ++l) {
        const bet_layer *src = &m->layers[l];
        bet_batch_layer *dst = &b->layers[l];
        uint32_t rows = src->out_features, n = src->in_features, j, i;
        dst->in_features = n;
        dst->out_features = rows;
        dst->binary_input = src->binary_input;
        if (src->binary_input) {
            uint64_t *w = (uint64_t *)(void *)p;
            uint32_t words32 = src->words_per_row;
            dst->stride = bet_words64(n);
            for (j = 0; j < rows; ++j) {
                const uint8_t *row = src->weights + 4u * words32 * j;
                for (i = 0; i < dst->stride; ++i) {
                    uint64_t lo = 2u * i < words32 ? bet_load_le32(row + 8u * i) : 0u;
                    uint64_t hi = 2u * i + 1u < words32 ? bet_load_le32(row + 8u * i + 4u) : 0u;
                    w[(size_t)j * dst->stride + i] = lo | (hi << 32);
                }
            }
            dst->weights_u64 = w;
            p += bet_round_up((size_t)rows * dst->stride * 8u, BET_ALIGN);
        } else {
            int8_t *w = (int8_t *)(void *)p;
            uint32_t words32 = src->words_per_row;
            dst->stride = (uint32_t)bet_round_up(n, BET_ALIGN);
            for (j = 0; j < rows; ++j) {
                const uint8_t *row = src->weights + 4u * words32 * j;
                int8_t *out = w + (size_t)j * dst->stride;
                for (i = 0; i < dst->stride; ++i) {
                    uint32_t bit = i < n ? (bet_load_le32(row + 4u * (i / 32u)) >> (i % 32u)) & 1u
                                         : 0u;
                    out[i] = (int8_t)(i < n ? (bit ? -1 : 1) : 0);
                }
            }
            dst->weights_i8 = w;
            p += bet_round_up((size_t)rows * dst->stride, BET_ALIGN);
        }
        if (!src->is_output) {
            int32_t *t = (int32_t *)(void *)p;
            uint8_t *neg;
            for (j = 0; j < rows; ++j) {
                uint32_t u = bet_load_le32(src->thresholds + 4u * j);
                t[j] = u <= 0x7FFFFFFFu ? (int32_t)u : -(int32_t)(~u) - 1;
            }
            p += bet_round_up(4u * (size_t)rows, BET_ALIGN);
            neg = p;
            for (j = 0; j < rows; ++j) {
                neg[j] = (uint8_t)((bet_load_le32(src->directions + 4u * (j / 32u)) >> (j % 32u)) &
                                   1u);
            }
            p += bet_round_up(rows, BET_ALIGN);
            dst->thresholds = t;
            dst->negative = neg;
            if (bet_words64(rows) > b->max_words) {
                b->max_words = bet_words64(rows);
            }
        }
    }
    return BET_OK;
}

size_t bet_batch_scratch_bytes(const bet_batch *b, uint32_t count)
{
    if (b == NULL || b->model == NULL) {
        return 0u;
    }
    return BET_ALIGN + bet_round_up((size_t)count * b->pixel_stride, BET_ALIGN) +
           2u * bet_round_up((size_t)count * b->max_words * 8u, BET_ALIGN) +
           bet_round_up((size_t)count * b->num_classes * 4u, BET_ALIGN);
}

/* ---------------------------------------------------------------------------------------- */
/* Kernels. */

/* sum_i q[i] * w[i] over `stride` bytes (a multiple of 64; padding is 0 on both sides). */
static int32_t bet_dot_u8_i8(const uint8_t *q, const int8_t *w, uint32_t stride)
{
    uint32_t i;
#if defined(BET_AVX512)
    __m512i acc = _mm512_setzero_si512();
#if !defined(__AVX512VNNI__)
    const __m512i ones = _mm512_set1_epi16(1);
#endif
    for (i = 0; i < stride; i += 64u) {
        __m512i x = _mm512_load_si512((const void *)(q + i));
        __m512i y = _mm512_load_si512((const void *)(w + i));
#if defined(__AVX512VNNI__)
        acc = _mm512_dpbusd_epi32(acc, x, y);
#else
        /* u8 * s8 pairs: |q w| <= 255, pair sums <= 510: no int16 saturation */
        acc = _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(x, y), ones));
#endif
    }
    return _mm512_reduce_add_epi32(acc);
#elif defined(BET_AVX2)
    __m256i acc = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    __m128i sum;
    for (i = 0; i < stride; i += 32u) {
        __m256i x = _mm256_load_si256((const __m256i *)(const void *)(q + i));
        __m256i y = _mm256_load_si256((const __m256i *)(const void *)(w + i));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), ones));
    }
    sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0x4E));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0xB1));
    return _mm_cvtsi128_si32(sum);
#elif defined(BET_NEON)
    int32x4_t acc = vdupq_n_s32(0);
    for (i = 0; i < stride; i += 16u) {
        uint8x16_t x = vld1q_u8(q + i);
        int8x16_t y = vld1q_s8(w + i);
        int16x8_t lo = vmulq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(x))),
                                 vmovl_s8(vget_low_s8(y)));
        int16x8_t hi = vmulq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(x))),
                                 vmovl_s8(vget_high_s8(y)));
        acc = vpadalq_s16(acc, lo);
        acc = vpadalq_s16(acc, hi);
    }
    return vaddvq_s32(acc);
#else
    int32_t acc = 0;
    for (i = 0; i < stride; ++i) {
        acc += (int32_t)q[i] * (int32_t)w[i];
    }
    return acc;
#endif
}

/* popcount(x XOR w) over `words` 64-bit words. */
static uint32_t bet_xor_popcount(const uint64_t *x, const uint64_t *w, uint32_t words)
{
    uint32_t k = 0u;
    uint64_t diff = 0u;
#if defined(BET_AVX512) && defined(__AVX512VPOPCNTDQ__)
    __m512i acc = _mm512_setzero_si512();
    for (; k + 8u <= words; k += 8u) {
        __m512i v = _mm512_xor_si512(_mm512_loadu_si512((const void *)(x + k)),
                                     _mm512_loadu_si512((const void *)(w + k)));
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(v));
    }
    if (k < words) {
        __mmask8 mask = (__mmask8)((1u << (words - k)) - 1u);
        __m512i v = _mm512_xor_si512(_mm512_maskz_loadu_epi64(mask, (const void *)(x + k)),
                                     _mm512_maskz_loadu_epi64(mask, (const void *)(w + k)));
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(v));
        k = words;
    }
    diff = (uint64_t)_mm512_reduce_add_epi64(acc);
#elif defined(BET_NEON)
    uint64x2_t acc = vdupq_n_u64(0);
    for (; k + 2u <= words; k += 2u) {
        uint8x16_t v = vreinterpretq_u8_u64(veorq_u64(vld1q_u64(x + k), vld1q_u64(w + k)));
        acc = vpadalq_u32(acc, vpaddlq_u16(vpaddlq_u8(vcntq_u8(v))));
    }
    diff = vaddvq_u64(acc);
#endif
    for (; k < words; ++k) {
#if defined(__GNUC__) || defined(__clang__)
        diff += (uint64_t)__builtin_popcountll((unsigned long long)(x[k] ^ w[k]));
#else
        uint64_t v = x[k] ^ w[k];
        v = v - ((v >> 1) & 0x5555555555555555ull);
        v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
        v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0Full;
        diff += (v * 0x0101010101010101ull) >> 56;
#endif
    }
    return (uint32_t)diff;
}

/* Pre-activation of row j of `layer` for one sample's pixels q (layer 0) or packed bits x. */
static int32_t bet_row_preactivation(const bet_batch_layer *layer, uint32_t j,
                                     const uint8_t *q, const uint64_t *x)
{
    if (layer->binary_input) {
        const uint64_t *w = layer->weights_u64 + (size_t)j * layer->stride;
        return (int32_t)layer->in_features - 2 * (int32_t)bet_xor_popcount(x, w, layer->stride);
    }
    return bet_dot_u8_i8(q, layer->weights_i8 + (size_t)j * layer->stride, layer->stride);
}

int32_t bet_predict_batch(const bet_batch *b, const uint8_t *pixels, uint32_t count,
                          int32_t *logits_out, int32_t *classes_out, void *scratch)
{
    uint8_t *p, *q;
    uint64_t *buffers[2];
    int32_t *logits;
    const uint64_t *x = NULL;
    uint32_t l, s, j0, j, words_in = 0u;
    size_t act_bytes;
    if (b == NULL || b->model == NULL || pixels == NULL || scratch == NULL) {
        return -1;
    }
    if (count == 0u) {
        return 0;
    }
    p = bet_align(scratch);
    q = p;
    for (s = 0; s < count; ++s) {
        uint8_t *row = q + (size_t)s * b->pixel_stride;
        memcpy(row, pixels + (size_t)s * b->num_inputs, b->num_inputs);
        memset(row + b->num_inputs, 0, b->pixel_stride - b->num_inputs);
    }
    p += bet_round_up((size_t)count * b->pixel_stride, BET_ALIGN);
    act_bytes = bet_round_up((size_t)count * b->max_words * 8u, BET_ALIGN);
    buffers[0] = (uint64_t *)(void *)p;
    buffers[1] = (uint64_t *)(void *)(p + act_bytes);
    logits = logits_out != NULL ? logits_out : (int32_t *)(void *)(p + 2u * act_bytes);
    for (l = 0; l + 1u < b->num_layers; ++l) {
        const bet_batch_layer *layer = &b->layers[l];
        uint64_t *out = buffers[l & 1u];
        uint32_t words_out = bet_words64(layer->out_features);
        memset(out, 0, (size_t)count * words_out * 8u);
        for (j0 = 0; j0 < layer->out_features; j0 += BET_ROW_BLOCK) {
            uint32_t j1 = j0 + BET_ROW_BLOCK < layer->out_features ? j0 + BET_ROW_BLOCK
                                                                  : layer->out_features;
            for (s = 0; s < count; ++s) {
                const uint8_t *qs = q + (size_t)s * b->pixel_stride;
                const uint64_t *xs = x != NULL ? x + (size_t)s * words_in : NULL;
                uint64_t *os = out + (size_t)s * words_out;
                for (j = j0; j < j1; ++j) {
                    int32_t a = bet_row_preactivation(layer, j, qs, xs);
                    int32_t t = layer->thresholds[j];
                    /* o_j = +1 (bit 0) iff d_j (a_j - T_j) >= 0, as bet_predict compares */
                    uint64_t bit = layer->negative[j] ? (uint64_t)(a > t) : (uint64_t)(a < t);
                    os[j / 64u] |= bit << (j % 64u);
                }
            }
        }
        x = out;
        words_in = words_out;
    }
    {
        const bet_batch_layer *layer = &b->layers[b->num_layers - 1u];
        uint32_t classes = layer->out_features;
        for (s = 0; s < count; ++s) {
            const uint8_t *qs = q + (size_t)s * b->pixel_stride;
            const uint64_t *xs = x != NULL ? x + (size_t)s * words_in : NULL;
            int32_t *ls = logits + (size_t)s * classes;
            int32_t best = 0;
            for (j = 0; j < classes; ++j) {
                ls[j] = bet_row_preactivation(layer, j, qs, xs);
                if (ls[j] > ls[best]) {
                    best = (int32_t)j;
                }
            }
            if (classes_out != NULL) {
                classes_out[s] = best;
            }
        }
    }
    return 0;
}
