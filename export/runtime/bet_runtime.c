/*
 * bet_runtime: portable C99 inference for lightning-bet bitstream v1 (export/FORMAT.md).
 * No malloc, no floating point in inference, no reads outside the caller's blob.
 */
#include "bet_runtime.h"

/* Only freestanding headers (<stddef.h>, <stdint.h>): no libc is needed. */

/* ---------------------------------------------------------------------------------------- */
/* Little-endian loads from bytes: byte-order independent and alignment free; GCC and Clang
   merge them into a single load on little-endian targets with unaligned access. */

static uint32_t bet_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint32_t bet_le16(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8);
}

/* Two's complement int32 from its bit pattern without implementation-defined conversion. */
static int32_t bet_i32(uint32_t u)
{
    if (u <= 0x7FFFFFFFu) {
        return (int32_t)u;
    }
    return -(int32_t)(~u) - 1;
}

/* IEEE-754 binary32 from its bit pattern (union punning is defined in C99). */
static float bet_f32(uint32_t bits)
{
    union {
        uint32_t u;
        float f;
    } pun;
    pun.u = bits;
    return pun.f;
}

/* ---------------------------------------------------------------------------------------- */
/* Population count: the compiler builtin under GCC/Clang, else a SWAR fallback.  Define
   BET_SWAR_POPCOUNT to force the fallback (on cores without a popcount instruction, e.g. Cortex-M,
   the builtin is a libgcc call; the SWAR version is a few inline instructions). */

#if (defined(__GNUC__) || defined(__clang__)) && !defined(BET_SWAR_POPCOUNT)
#if defined(__SIZEOF_INT__) && __SIZEOF_INT__ < 4 /* 16-bit int (AVR, MSP430) */
#define BET_POPCOUNT32(x) ((uint32_t)__builtin_popcountl((unsigned long)(x)))
#else
#define BET_POPCOUNT32(x) ((uint32_t)__builtin_popcount((unsigned int)(x)))
#endif
#else
static uint32_t bet_popcount32_swar(uint32_t x)
{
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    return (x * 0x01010101u) >> 24;
}
#define BET_POPCOUNT32(x) bet_popcount32_swar(x)
#endif

/* ---------------------------------------------------------------------------------------- */
/* CRC-32 (zlib): reflected polynomial 0xEDB88320, one 16-entry table (64 bytes of flash). */

static const uint32_t bet_crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};

uint32_t bet_crc32(uint32_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    if (data == NULL) {
        return crc;
    }
    crc = ~crc;
    for (i = 0; i < len; ++i) {
        crc ^= data[i];
        crc = (crc >> 4) ^ bet_crc_nibble[crc & 15u];
        crc = (crc >> 4) ^ bet_crc_nibble[crc & 15u];
    }
    return ~crc;
}

const char *bet_status_str(bet_status status)
{
    switch (status) {
    case BET_OK: return "ok";
    case BET_ERR_NULL: return "null argument";
    case BET_ERR_TRUNCATED: return "truncated";
    case BET_ERR_TRAILING: return "trailing bytes";
    case BET_ERR_MAGIC: return "bad magic";
    case BET_ERR_VERSION: return "unsupported version";
    case BET_ERR_HEADER_CRC: return "header crc mismatch";
    case BET_ERR_FLAGS: return "reserved flag or field set";
    case BET_ERR_VALUE: return "invalid header value";
    case BET_ERR_TOO_MANY_LAYERS: return "too many layers";
    case BET_ERR_TABLE_CRC: return "layer table crc mismatch";
    case BET_ERR_LAYOUT: return "inconsistent layout";
    case BET_ERR_SECTION_CRC: return "section crc mismatch";
    case BET_ERR_FILE_CRC: return "file crc mismatch";
    case BET_ERR_PADDING: return "non-zero padding bit";
    default: return "unknown status";
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Parsing. */

#define BET_HEADER_SIZE 48u
#define BET_ENTRY_SIZE 32u
#define BET_KIND_HIDDEN 1u
#define BET_KIND_OUTPUT 2u
#define BET_LAYER_BINARY_INPUT 1u
/* Largest first-layer fan-in whose uint8 accumulation cannot overflow int32: n * 255 < 2^31. */
#define BET_MAX_PIXEL_FAN_IN (0x7FFFFFFFu / 255u)

static const bet_model bet_empty_model = {0};

static uint32_t bet_crc_at(const uint8_t *blob, uint32_t offset, uint32_t size)
{
    return bet_crc32(0u, blob + offset, size);
}

/* 1 when the bits at positions >= n (n > 0) of the last of BET_WORDS(n) words at p are 0. */
static int bet_padding_clear(const uint8_t *p, uint32_t n)
{
    uint32_t used = n % 32u;
    if (used == 0u) {
        return 1;
    }
    return (bet_le32(p + 4u * (BET_WORDS(n) - 1u)) >> used) == 0u;
}

/* Parse and check the layer table into m (sections must tile [table end, file_size - 4)). */
static bet_status bet_parse_table(bet_model *m, const uint8_t *blob, uint32_t file_size)
{
    uint32_t l;
    uint32_t offset = BET_HEADER_SIZE + BET_ENTRY_SIZE * m->num_layers + 4u;
    uint32_t prev_out = 0u;
    for (l = 0; l < m->num_layers; ++l) {
        const uint8_t *e = blob + BET_HEADER_SIZE + BET_ENTRY_SIZE * l;
        bet_layer *layer = &m->layers[l];
        uint32_t kind = bet_le32(e);
        uint32_t lflags = bet_le32(e + 4);
        uint32_t out = bet_le32(e + 8);
        uint32_t in = bet_le32(e + 12);
        uint32_t words = bet_le32(e + 16);
        uint32_t section_offset = bet_le32(e + 20);
        uint32_t section_size = bet_le32(e + 24);
        uint32_t room = file_size - 4u - offset; /* offset <= file_size - 4 holds here */
        uint32_t weight_bytes, extra, expected;
        int is_output = l + 1u == m->num_layers;
        if ((lflags & ~BET_LAYER_BINARY_INPUT) != 0u || bet_le32(e + 28) != 0u) {
            return BET_ERR_FLAGS;
        }
        if (kind != (is_output ? BET_KIND_OUTPUT : BET_KIND_HIDDEN) ||
            (lflags & BET_LAYER_BINARY_INPUT) != (l > 0u ? 1u : 0u) || out == 0u || in == 0u ||
            in > 0x7FFFFFFFu || (l > 0u && in != prev_out) || words != BET_WORDS(in) ||
            section_offset != offset) {
            return BET_ERR_LAYOUT;
        }
        /* section size without overflow: every part must fit in the remaining bytes */
        if (out > room / 4u / words) {
            return BET_ERR_LAYOUT;
        }
        weight_bytes = 4u * out * words;
        room -= weight_bytes;
        extra = 0u;
        if (!is_output) {
            /* thresholds then directions, checked so that nothing overflows */
            if (4u * out > room || 4u * BET_WORDS(out) > room - 4u * out) {
                return BET_ERR_LAYOUT;
            }
            extra = 4u * out + 4u * BET_WORDS(out);
        }
        if (4u > room - extra) {
            return BET_ERR_LAYOUT;
        }
        expected = weight_bytes + extra + 4u;
        if (section_size != expected) {
            return BET_ERR_LAYOUT;
        }
        layer->in_features = in;
        layer->out_features = out;
        layer->words_per_row = words;
        layer->binary_input = (uint8_t)(l > 0u);
        layer->is_output = (uint8_t)is_output;
        layer->weights = blob + offset;
        layer->thresholds = is_output ? NULL : blob + offset + weight_bytes;
        layer->directions = is_output ? NULL : blob + offset + weight_bytes + 4u * out;
        if (!is_output && out > m->max_hidden) {
            m->max_hidden = out;
        }
        prev_out = out;
        offset += expected;
    }
    if (offset != file_size - 4u) {
        return BET_ERR_LAYOUT;
    }
    return BET_OK;
}

bet_status bet_model_init_ex(bet_model *m, const uint8_t *blob, size_t len, uint32_t options)
{
    uint32_t file_size, scale_bits, l, i, product;
    uint32_t check_crc = (options & BET_INIT_SKIP_CRC) == 0u;
    bet_status st;
    if (m == NULL) {
        return BET_ERR_NULL;
    }
    *m = bet_empty_model;
    if (blob == NULL) {
        return BET_ERR_NULL;
    }
    if (len < BET_HEADER_SIZE) {
        return BET_ERR_TRUNCATED;
    }
    if (blob[0] != 'L' || blob[1] != 'B' || blob[2] != 'E' || blob[3] != 'T') {
        return BET_ERR_MAGIC;
    }
    if (bet_le16(blob + 4) != 1u) {
        return BET_ERR_VERSION;
    }
    if (check_crc && bet_crc_at(blob, 0u, 44u) != bet_le32(blob + 44)) {
        return BET_ERR_HEADER_CRC;
    }
    if (bet_le16(blob + 6) != 0u) {
        return BET_ERR_FLAGS;
    }
    file_size = bet_le32(blob + 8);
    if ((size_t)file_size > len) {
        return BET_ERR_TRUNCATED;
    }
    if ((size_t)file_size < len) {
        return BET_ERR_TRAILING;
    }
    m->version = 1u;
    m->flags = 0u;
    m->num_layers = bet_le32(blob + 12);
    m->input_levels = bet_le32(blob + 16);
    scale_bits = bet_le32(blob + 20);
    m->input_ndim = bet_le32(blob + 24);
    if (m->num_layers == 0u) {
        st = BET_ERR_LAYOUT;
        goto fail;
    }
    if (m->num_layers > BET_MAX_LAYERS) {
        st = BET_ERR_TOO_MANY_LAYERS;
        goto fail;
    }
    /* output_scale: finite (exponent not all ones) and > 0 (sign clear, not +0) */
    if (m->input_levels == 0u || (scale_bits & 0x80000000u) != 0u ||
        (scale_bits & 0x7F800000u) == 0x7F800000u || scale_bits == 0u) {
        st = BET_ERR_VALUE;
        goto fail;
    }
    if (m->input_ndim > 4u) {
        st = BET_ERR_LAYOUT;
        goto fail;
    }
    for (i = 0; i < 4u; ++i) {
        m->input_shape[i] = bet_le32(blob + 28u + 4u * i);
        if (i >= m->input_ndim && m->input_shape[i] != 0u) {
            st = BET_ERR_FLAGS;
            goto fail;
        }
    }
    if (file_size < BET_HEADER_SIZE + BET_ENTRY_SIZE * m->num_layers + 4u + 4u) {
        st = BET_ERR_TRUNCATED;
        goto fail;
    }
    if (check_crc && bet_crc_at(blob, BET_HEADER_SIZE, BET_ENTRY_SIZE * m->num_layers) !=
                         bet_le32(blob + BET_HEADER_SIZE + BET_ENTRY_SIZE * m->num_layers)) {
        st = BET_ERR_TABLE_CRC;
        goto fail;
    }
    st = bet_parse_table(m, blob, file_size);
    if (st != BET_OK) {
        goto fail;
    }
    m->num_inputs = m->layers[0].in_features;
    m->num_classes = m->layers[m->num_layers - 1u].out_features;
    if (m->num_inputs > BET_MAX_PIXEL_FAN_IN ||
        m->input_levels > 0x7FFFFFFEu / m->num_inputs) { /* n0 * Lq + 1 < 2^31 */
        st = BET_ERR_VALUE;
        goto fail;
    }
    if (m->input_ndim > 0u) {
        product = 1u;
        for (i = 0; i < m->input_ndim; ++i) {
            uint32_t s = m->input_shape[i];
            if (s == 0u || product > m->num_inputs / s) {
                st = BET_ERR_LAYOUT;
                goto fail;
            }
            product *= s;
        }
        if (product != m->num_inputs) {
            st = BET_ERR_LAYOUT;
            goto fail;
        }
    }
    if (check_crc) {
        for (l = 0; l < m->num_layers; ++l) {
            const uint8_t *e = blob + BET_HEADER_SIZE + BET_ENTRY_SIZE * l;
            uint32_t offset = bet_le32(e + 20), size = bet_le32(e + 24);
            if (bet_crc_at(blob, offset, size - 4u) != bet_le32(blob + offset + size - 4u)) {
                st = BET_ERR_SECTION_CRC;
                goto fail;
            }
        }
        if (bet_crc_at(blob, 0u, file_size - 4u) != bet_le32(blob + file_size - 4u)) {
            st = BET_ERR_FILE_CRC;
            goto fail;
        }
    }
    for (l = 0; l < m->num_layers; ++l) {
        const bet_layer *layer = &m->layers[l];
        uint32_t j;
        for (j = 0; j < layer->out_features; ++j) {
            if (!bet_padding_clear(layer->weights + 4u * layer->words_per_row * j,
                                   layer->in_features)) {
                st = BET_ERR_PADDING;
                goto fail;
            }
        }
        if (!layer->is_output && !bet_padding_clear(layer->directions, layer->out_features)) {
            st = BET_ERR_PADDING;
            goto fail;
        }
    }
    m->scale = bet_f32(scale_bits);
    return BET_OK;
fail:
    *m = bet_empty_model;
    return st;
}

bet_status bet_model_init(bet_model *m, const uint8_t *blob, size_t len)
{
    return bet_model_init_ex(m, blob, len, BET_INIT_DEFAULT);
}

uint32_t bet_scratch_words(const bet_model *m)
{
    return m == NULL ? 0u : BET_SCRATCH_WORDS(m->max_hidden);
}

/* ---------------------------------------------------------------------------------------- */
/* Inference. */

/* a = n - 2 * popcount(x XOR w) for packed x, w whose padding bits are 0. */
static int32_t bet_dot_bits(const uint32_t *x, const uint8_t *w, uint32_t words, uint32_t n)
{
    uint32_t k;
    uint32_t diff = 0u;
    for (k = 0; k < words; ++k) {
        diff += BET_POPCOUNT32(x[k] ^ bet_le32(w + 4u * k));
    }
    return (int32_t)n - 2 * (int32_t)diff;
}

/* a = sum_i (+q_i where bit i of w is 0, -q_i where it is 1) = total - 2 * sum_{bit 1} q_i. */
static int32_t bet_dot_pixels(const uint8_t *q, int32_t total, const uint8_t *w, uint32_t n)
{
    uint32_t base;
    int32_t neg = 0;
    for (base = 0u; base < n; base += 32u, w += 4) {
        uint32_t bits = bet_le32(w);
        uint32_t count = n - base < 32u ? n - base : 32u;
        uint32_t i;
        for (i = 0; i < count; ++i) {
            /* branch free: the mask is all ones where the weight is -1 */
            uint32_t mask = 0u - ((bits >> i) & 1u);
            neg += (int32_t)(q[base + i] & mask);
        }
    }
    return total - 2 * neg;
}

/* Pre-activation of neuron j of `layer` for pixels q (layer 0) or packed bits x. */
static int32_t bet_preactivation(const bet_layer *layer, uint32_t j, const uint8_t *q,
                                 int32_t total, const uint32_t *x)
{
    const uint8_t *row = layer->weights + 4u * layer->words_per_row * j;
    if (layer->binary_input) {
        return bet_dot_bits(x, row, layer->words_per_row, layer->in_features);
    }
    return bet_dot_pixels(q, total, row, layer->in_features);
}

int32_t bet_predict(const bet_model *m, const uint8_t *pixels, int32_t *logits_out,
                    uint32_t *scratch)
{
    const uint32_t *x = NULL;
    uint32_t *buffers[2];
    uint32_t l, j, i, half;
    int32_t total = 0, best = 0, best_value = 0;
    if (m == NULL || pixels == NULL || scratch == NULL || m->num_layers == 0u) {
        return -1;
    }
    for (i = 0; i < m->num_inputs; ++i) {
        total += (int32_t)pixels[i];
    }
    half = BET_WORDS(m->max_hidden);
    buffers[0] = scratch;
    buffers[1] = scratch + half;
    for (l = 0; l + 1u < m->num_layers; ++l) {
        const bet_layer *layer = &m->layers[l];
        uint32_t *out = buffers[l & 1u];
        uint32_t word = 0u;
        for (j = 0; j < layer->out_features; ++j) {
            int32_t a = bet_preactivation(layer, j, pixels, total, x);
            int32_t t = bet_i32(bet_le32(layer->thresholds + 4u * j));
            uint32_t negative_d = (bet_le32(layer->directions + 4u * (j / 32u)) >> (j % 32u)) & 1u;
            /* o_j = +1 (bit 0) iff d_j (a_j - T_j) >= 0; compared without subtracting */
            uint32_t bit = negative_d ? (uint32_t)(a > t) : (uint32_t)(a < t);
            word |= bit << (j % 32u);
            if (j % 32u == 31u || j + 1u == layer->out_features) {
                out[j / 32u] = word;
                word = 0u;
            }
        }
        x = out;
    }
    {
        const bet_layer *layer = &m->layers[m->num_layers - 1u];
        for (j = 0; j < layer->out_features; ++j) {
            int32_t a = bet_preactivation(layer, j, pixels, total, x);
            if (logits_out != NULL) {
                logits_out[j] = a;
            }
            if (j == 0u || a > best_value) {
                best = (int32_t)j;
                best_value = a;
            }
        }
    }
    return best;
}
