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
/* Layouts.  Rows are processed in groups so that one SIMD register holds one accumulator per
   row and no horizontal sum is needed:
   - first layer: groups of BET_G1 = 16 rows; weights int8 [group][k / 4][16 rows][4], inputs
     zero-padded to a multiple of 4 (uint8 x int8 dot products of 4 pixels per 32-bit lane);
   - binary layers: groups of BET_GB = 8 rows; weights uint64 [group][word][8 rows].
   Rows past out_features in the last group have zero weights; their outputs are masked off. */

#define BET_G1 16u
#define BET_GB 8u

static uint32_t bet_groups(uint32_t rows, uint32_t size)
{
    return rows / size + (uint32_t)(rows % size != 0u);
}

static size_t bet_layer_bytes(const bet_layer *layer)
{
    size_t rows = layer->out_features, bytes;
    if (layer->binary_input) {
        bytes = (size_t)bet_groups(layer->out_features, BET_GB) * BET_GB *
                bet_words64(layer->in_features) * 8u;
    } else {
        bytes = (size_t)bet_groups(layer->out_features, BET_G1) * BET_G1 *
                bet_round_up(layer->in_features, 4u);
    }
    bytes = bet_round_up(bytes, BET_ALIGN);
    if (!layer->is_output) {
        /* thresholds as int64 (binary layers) or int32, padded to whole groups; directions */
        bytes += bet_round_up(8u * (rows + BET_G1), BET_ALIGN) +
                 bet_round_up(8u * ((size_t)bet_words64(layer->out_features) + 1u), BET_ALIGN);
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

static uint32_t bet_weight_bit(const bet_layer *src, uint32_t row, uint32_t i)
{
    const uint8_t *w = src->weights + 4u * src->words_per_row * row;
    return (bet_load_le32(w + 4u * (i / 32u)) >> (i % 32u)) & 1u;
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
        if (m->layers[l].is_conv) { /* bet_predict runs convolutional layers */
            return BET_ERR_LAYOUT;
        }
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
        uint32_t rows = src->out_features, n = src->in_features, j, i, g, k, r;
        dst->in_features = n;
        dst->out_features = rows;
        dst->binary_input = src->binary_input;
        if (src->binary_input) {
            uint64_t *w = (uint64_t *)(void *)p;
            uint32_t groups = bet_groups(rows, BET_GB);
            dst->stride = bet_words64(n);
            for (g = 0; g < groups; ++g) {
                for (k = 0; k < dst->stride; ++k) {
                    for (r = 0; r < BET_GB; ++r) {
                        uint64_t word = 0u;
                        j = g * BET_GB + r;
                        for (i = 64u * k; j < rows && i < n && i < 64u * k + 64u; ++i) {
                            word |= (uint64_t)bet_weight_bit(src, j, i) << (i % 64u);
                        }
                        w[((size_t)g * dst->stride + k) * BET_GB + r] = word;
                    }
                }
            }
            dst->weights_u64 = w;
            p += bet_round_up((size_t)groups * BET_GB * dst->stride * 8u, BET_ALIGN);
        } else {
            int8_t *w = (int8_t *)(void *)p;
            uint32_t groups = bet_groups(rows, BET_G1);
            dst->stride = (uint32_t)bet_round_up(n, 4u) / 4u; /* 4-pixel steps */
            for (g = 0; g < groups; ++g) {
                for (k = 0; k < dst->stride; ++k) {
                    for (r = 0; r < BET_G1; ++r) {
                        for (i = 0; i < 4u; ++i) {
                            uint32_t input = 4u * k + i;
                            int8_t value = 0;
                            j = g * BET_G1 + r;
                            if (j < rows && input < n) {
                                value = (int8_t)(bet_weight_bit(src, j, input) ? -1 : 1);
                            }
                            w[(((size_t)g * dst->stride + k) * BET_G1 + r) * 4u + i] = value;
                        }
                    }
                }
            }
            dst->weights_i8 = w;
            p += bet_round_up((size_t)groups * BET_G1 * dst->stride * 4u, BET_ALIGN);
        }
        if (!src->is_output) {
            int64_t *t = (int64_t *)(void *)p;
            uint64_t *neg;
            for (j = 0; j < rows + BET_G1; ++j) {
                uint32_t u = j < rows ? bet_load_le32(src->thresholds + 4u * j) : 0u;
                t[j] = u <= 0x7FFFFFFFu ? (int64_t)u : -(int64_t)(~u) - 1;
            }
            p += bet_round_up(8u * ((size_t)rows + BET_G1), BET_ALIGN);
            neg = (uint64_t *)(void *)p;
            for (j = 0; j < bet_words64(rows) + 1u; ++j) {
                neg[j] = 0u;
            }
            for (j = 0; j < rows; ++j) {
                uint64_t bit = (bet_load_le32(src->directions + 4u * (j / 32u)) >> (j % 32u)) & 1u;
                neg[j / 64u] |= bit << (j % 64u);
            }
            p += bet_round_up(8u * ((size_t)bet_words64(rows) + 1u), BET_ALIGN);
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
           bet_round_up((size_t)count * b->num_classes * 4u, BET_ALIGN) +
           bet_round_up(BET_G1 * 8u, BET_ALIGN);
}

/* ---------------------------------------------------------------------------------------- */
/* Kernels.  Each computes the pre-activations of up to four consecutive row groups for one
   sample and stores them as int64 in a[0 .. 4 * group size). */

#if defined(BET_AVX512)
#if defined(__AVX512VNNI__)
#define BET_DOT(sum, x, y) _mm512_dpbusd_epi32(sum, x, y)
#else
/* u8 * s8 pairs: |q w| <= 255, pair sums <= 510: no int16 saturation */
#define BET_DOT(sum, x, y)                                                                     \
    _mm512_add_epi32(sum, _mm512_madd_epi16(_mm512_maddubs_epi16(x, y), _mm512_set1_epi16(1)))
#endif

static void bet_store_i32_as_i64(int64_t *a, __m512i v)
{
    _mm512_storeu_si512((void *)a, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)));
    _mm512_storeu_si512((void *)(a + 8), _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1)));
}
#endif

/* First layer, `ng` (1..4) groups of 16 rows: a[r] = sum_i q[i] w[r][i], q padded to 4. */
static void bet_groups_pixels(const uint8_t *q, const int8_t *w, uint32_t steps, uint32_t ng,
                              int64_t *a)
{
    const size_t group = 64u * (size_t)steps; /* bytes of one group's weights */
    uint32_t k;
#if defined(BET_AVX512)
    if (ng == 4u) {
        /* the pixels are broadcast once for four independent sums */
        __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
        for (k = 0; k < steps; ++k) {
            int32_t four;
            __m512i x;
            const int8_t *wk = w + 64u * k;
            memcpy(&four, q + 4u * k, 4u);
            x = _mm512_set1_epi32(four);
            s0 = BET_DOT(s0, x, _mm512_load_si512((const void *)wk));
            s1 = BET_DOT(s1, x, _mm512_load_si512((const void *)(wk + group)));
            s2 = BET_DOT(s2, x, _mm512_load_si512((const void *)(wk + 2u * group)));
            s3 = BET_DOT(s3, x, _mm512_load_si512((const void *)(wk + 3u * group)));
        }
        bet_store_i32_as_i64(a, s0);
        bet_store_i32_as_i64(a + 16, s1);
        bet_store_i32_as_i64(a + 32, s2);
        bet_store_i32_as_i64(a + 48, s3);
        return;
    }
    {
        uint32_t h;
        for (h = 0; h < ng; ++h) {
            __m512i sum = _mm512_setzero_si512();
            for (k = 0; k < steps; ++k) {
                int32_t four;
                memcpy(&four, q + 4u * k, 4u);
                sum = BET_DOT(sum, _mm512_set1_epi32(four),
                              _mm512_load_si512((const void *)(w + h * group + 64u * k)));
            }
            bet_store_i32_as_i64(a + 16u * h, sum);
        }
    }
#elif defined(BET_AVX2)
    const __m256i ones = _mm256_set1_epi16(1);
    uint32_t h;
    for (h = 0; h < ng; ++h) {
        __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
        int32_t acc[16];
        uint32_t r;
        for (k = 0; k < steps; ++k) {
            int32_t four;
            __m256i x;
            const int8_t *wk = w + h * group + 64u * k;
            memcpy(&four, q + 4u * k, 4u);
            x = _mm256_set1_epi32(four);
            /* u8 * s8 pairs: |q w| <= 255, pair sums <= 510: no int16 saturation */
            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_maddubs_epi16(
                                          x, _mm256_load_si256((const __m256i *)(const void *)wk)),
                                      ones));
            hi = _mm256_add_epi32(
                hi, _mm256_madd_epi16(_mm256_maddubs_epi16(x, _mm256_load_si256((
                                          const __m256i *)(const void *)(wk + 32))),
                                      ones));
        }
        _mm256_storeu_si256((__m256i *)(void *)acc, lo);
        _mm256_storeu_si256((__m256i *)(void *)(acc + 8), hi);
        for (r = 0; r < BET_G1; ++r) {
            a[BET_G1 * h + r] = acc[r];
        }
    }
#else
    uint32_t h, r, i;
    for (h = 0; h < ng; ++h) {
        int32_t acc[16] = {0};
        for (k = 0; k < steps; ++k) {
            const int8_t *wk = w + h * group + 64u * k;
            for (r = 0; r < BET_G1; ++r) {
                for (i = 0; i < 4u; ++i) {
                    acc[r] += (int32_t)q[4u * k + i] * (int32_t)wk[4u * r + i];
                }
            }
        }
        for (r = 0; r < BET_G1; ++r) {
            a[BET_G1 * h + r] = acc[r];
        }
    }
#endif
}

/* Binary layers, `ng` (1..4) groups of 8 rows: a[r] = n - 2 popcount(x XOR w[r]). */
static void bet_groups_bits(const uint64_t *x, const uint64_t *w, uint32_t words, uint32_t n,
                            uint32_t ng, int64_t *a)
{
    const size_t group = 8u * (size_t)words; /* words of one group's weights */
    uint32_t k, h;
#if defined(BET_AVX512) && defined(__AVX512VPOPCNTDQ__)
    const __m512i nvec = _mm512_set1_epi64((long long)n);
    if (ng == 4u) {
        /* each input word is broadcast once for four independent sums */
        __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
        for (k = 0; k < words; ++k) {
            const uint64_t *wk = w + 8u * k;
            __m512i xk = _mm512_set1_epi64((long long)x[k]);
            s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_xor_si512(
                                          xk, _mm512_load_si512((const void *)wk))));
            s1 = _mm512_add_epi64(s1, _mm512_popcnt_epi64(_mm512_xor_si512(
                                          xk, _mm512_load_si512((const void *)(wk + group)))));
            s2 = _mm512_add_epi64(s2, _mm512_popcnt_epi64(_mm512_xor_si512(
                                          xk, _mm512_load_si512((const void *)(wk + 2u * group)))));
            s3 = _mm512_add_epi64(s3, _mm512_popcnt_epi64(_mm512_xor_si512(
                                          xk, _mm512_load_si512((const void *)(wk + 3u * group)))));
        }
        _mm512_storeu_si512((void *)a, _mm512_sub_epi64(nvec, _mm512_slli_epi64(s0, 1)));
        _mm512_storeu_si512((void *)(a + 8), _mm512_sub_epi64(nvec, _mm512_slli_epi64(s1, 1)));
        _mm512_storeu_si512((void *)(a + 16), _mm512_sub_epi64(nvec, _mm512_slli_epi64(s2, 1)));
        _mm512_storeu_si512((void *)(a + 24), _mm512_sub_epi64(nvec, _mm512_slli_epi64(s3, 1)));
        return;
    }
    for (h = 0; h < ng; ++h) {
        __m512i sum = _mm512_setzero_si512();
        for (k = 0; k < words; ++k) {
            __m512i v = _mm512_xor_si512(_mm512_set1_epi64((long long)x[k]),
                                         _mm512_load_si512((const void *)(w + h * group + 8u * k)));
            sum = _mm512_add_epi64(sum, _mm512_popcnt_epi64(v));
        }
        _mm512_storeu_si512((void *)(a + 8u * h), _mm512_sub_epi64(nvec, _mm512_slli_epi64(sum, 1)));
    }
#elif defined(BET_NEON)
    for (h = 0; h < ng; ++h) {
        uint64x2_t s0 = vdupq_n_u64(0), s1 = s0, s2 = s0, s3 = s0;
        for (k = 0; k < words; ++k) {
            uint64x2_t xk = vdupq_n_u64(x[k]);
            const uint64_t *wk = w + h * group + 8u * k;
            s0 = vpadalq_u32(s0, vpaddlq_u16(vpaddlq_u8(vcntq_u8(
                                     vreinterpretq_u8_u64(veorq_u64(xk, vld1q_u64(wk)))))));
            s1 = vpadalq_u32(s1, vpaddlq_u16(vpaddlq_u8(vcntq_u8(
                                     vreinterpretq_u8_u64(veorq_u64(xk, vld1q_u64(wk + 2)))))));
            s2 = vpadalq_u32(s2, vpaddlq_u16(vpaddlq_u8(vcntq_u8(
                                     vreinterpretq_u8_u64(veorq_u64(xk, vld1q_u64(wk + 4)))))));
            s3 = vpadalq_u32(s3, vpaddlq_u16(vpaddlq_u8(vcntq_u8(
                                     vreinterpretq_u8_u64(veorq_u64(xk, vld1q_u64(wk + 6)))))));
        }
        a[8u * h + 0] = (int64_t)n - 2 * (int64_t)vgetq_lane_u64(s0, 0);
        a[8u * h + 1] = (int64_t)n - 2 * (int64_t)vgetq_lane_u64(s0, 1);
        a[8u * h + 2] = (int64_t)n - 2 * (int64_t)vgetq_lane_u64(s1, 0);
        a[8u * h + 3] = (int64_t)n - 2 * (int64_t)vgetq_lane_u64(s1, 1);
        a[8u * h + 4] = (int64_t)n - 2 * (int64_t)vgetq_lane_u64(s2, 0);
        a[8u * h + 5] = (int64_t)n - 2 * (int64_t)vgetq_lane_u64(s2, 1);
        a[8u * h + 6] = (int64_t)n - 2 * (int64_t)vgetq_lane_u64(s3, 0);
        a[8u * h + 7] = (int64_t)n - 2 * (int64_t)vgetq_lane_u64(s3, 1);
    }
#else
    uint32_t r;
    for (h = 0; h < ng; ++h) {
        uint64_t acc[8] = {0};
        for (k = 0; k < words; ++k) {
            const uint64_t *wk = w + h * group + 8u * k;
            for (r = 0; r < BET_GB; ++r) {
                uint64_t v = x[k] ^ wk[r];
#if defined(__GNUC__) || defined(__clang__)
                acc[r] += (uint64_t)__builtin_popcountll((unsigned long long)v);
#else
                v = v - ((v >> 1) & 0x5555555555555555ull);
                v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
                v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0Full;
                acc[r] += (v * 0x0101010101010101ull) >> 56;
#endif
            }
        }
        for (r = 0; r < BET_GB; ++r) {
            a[8u * h + r] = (int64_t)n - 2 * (int64_t)acc[r];
        }
    }
#endif
}

/* Threshold bits of `size` (<= 64) pre-activations a[r] (bit r set: output -1); `negative`
   has bit r set where d = -1. */
static uint64_t bet_threshold_bits(const int64_t *a, const int64_t *t, uint64_t negative,
                                   uint32_t size)
{
    uint64_t bits = 0u;
    uint32_t r = 0;
#if defined(BET_AVX512)
    for (; r + 8u <= size; r += 8u) {
        __m512i va = _mm512_loadu_si512((const void *)(a + r));
        __m512i vt = _mm512_loadu_si512((const void *)(t + r));
        uint64_t neg = (negative >> r) & 0xFFu;
        uint64_t gt = _mm512_cmpgt_epi64_mask(va, vt), lt = _mm512_cmplt_epi64_mask(va, vt);
        bits |= ((gt & neg) | (lt & ~neg & 0xFFu)) << r;
    }
#endif
    for (; r < size; ++r) {
        /* o = +1 (bit 0) iff d (a - T) >= 0, compared as bet_predict does */
        uint64_t bit = ((negative >> r) & 1u) ? (uint64_t)(a[r] > t[r]) : (uint64_t)(a[r] < t[r]);
        bits |= bit << r;
    }
    return bits;
}

/* Pre-activations of `ng` consecutive groups (from group g) of `layer` for one sample. */
static void bet_group_preactivation(const bet_batch_layer *layer, uint32_t g, uint32_t ng,
                                    const uint8_t *q, const uint64_t *x, int64_t *a)
{
    if (layer->binary_input) {
        bet_groups_bits(x, layer->weights_u64 + (size_t)g * BET_GB * layer->stride,
                        layer->stride, layer->in_features, ng, a);
    } else {
        bet_groups_pixels(q, layer->weights_i8 + (size_t)g * BET_G1 * layer->stride * 4u,
                          layer->stride, ng, a);
    }
}

/* Bit r of the negative-direction bits of rows [j0, j0 + 64). */
static uint64_t bet_negative_bits(const bet_batch_layer *layer, uint32_t j0)
{
    uint32_t word = j0 / 64u, shift = j0 % 64u;
    uint64_t bits = layer->negative[word] >> shift;
    if (shift != 0u) {
        bits |= layer->negative[word + 1u] << (64u - shift);
    }
    return bits;
}

int32_t bet_predict_batch(const bet_batch *b, const uint8_t *pixels, uint32_t count,
                          int32_t *logits_out, int32_t *classes_out, void *scratch)
{
    uint8_t *p, *q;
    uint64_t *buffers[2];
    int32_t *logits;
    const uint64_t *x = NULL;
    uint32_t l, s, g, j, words_in = 0u;
    size_t act_bytes;
    int64_t a[4u * BET_G1];
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
        uint32_t size = layer->binary_input ? BET_GB : BET_G1;
        uint32_t groups = bet_groups(layer->out_features, size);
        memset(out, 0, (size_t)count * words_out * 8u);
        /* group-major: four groups' weights stay in L1/L2 while the whole batch passes */
        for (g = 0; g < groups; g += 4u) {
            uint32_t ng = groups - g < 4u ? groups - g : 4u, h;
            for (s = 0; s < count; ++s) {
                const uint64_t *xs = x != NULL ? x + (size_t)s * words_in : NULL;
                bet_group_preactivation(layer, g, ng, q + (size_t)s * b->pixel_stride, xs, a);
                for (h = 0; h < ng; ++h) {
                    uint32_t j0 = (g + h) * size;
                    uint32_t used = layer->out_features - j0 < size ? layer->out_features - j0
                                                                    : size;
                    uint64_t bits = bet_threshold_bits(a + h * size, layer->thresholds + j0,
                                                       bet_negative_bits(layer, j0), used);
                    /* groups of 8 or 16 rows never straddle a 64-bit word */
                    out[(size_t)s * words_out + j0 / 64u] |= bits << (j0 % 64u);
                }
            }
        }
        x = out;
        words_in = words_out;
    }
    {
        const bet_batch_layer *layer = &b->layers[b->num_layers - 1u];
        uint32_t classes = layer->out_features;
        uint32_t size = layer->binary_input ? BET_GB : BET_G1;
        uint32_t groups = bet_groups(classes, size);
        for (s = 0; s < count; ++s) {
            const uint64_t *xs = x != NULL ? x + (size_t)s * words_in : NULL;
            int32_t *ls = logits + (size_t)s * classes;
            int32_t best = 0;
            for (g = 0; g < groups; ++g) {
                uint32_t j0 = g * size;
                bet_group_preactivation(layer, g, 1u, q + (size_t)s * b->pixel_stride, xs, a);
                for (j = j0; j < classes && j < j0 + size; ++j) {
                    ls[j] = (int32_t)a[j - j0];
                }
            }
            for (j = 1; j < classes; ++j) {
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
