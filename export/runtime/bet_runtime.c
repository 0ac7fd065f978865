/*
 * bet_runtime: portable C99 inference for lightning-bet bitstreams v1 and v2 (export/FORMAT.md).
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
#define BET_ENTRY_SIZE_V1 32u
#define BET_ENTRY_SIZE_V2 48u
#define BET_KIND_HIDDEN 1u
#define BET_KIND_OUTPUT 2u
#define BET_KIND_CONV 3u
#define BET_LAYER_BINARY_INPUT 1u
/* BET_NO_CONV builds a dense-only runtime (v2 files with conv layers get BET_ERR_LAYOUT): the
   convolution code is then dead and the compiler drops it (about 2 KB on a Cortex-M). */
#ifdef BET_NO_CONV
#define BET_CONV 0
#else
#define BET_CONV 1
#endif
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

/* *out = a * b; 0 when the product does not fit 31 bits (every size here is below 2^31). */
static int bet_mul31(uint32_t a, uint32_t b, uint32_t *out)
{
    if (a != 0u && b > 0x7FFFFFFFu / a) {
        return 0;
    }
    *out = a * b;
    return 1;
}

/* Geometry of a convolutional layer (kind 3), from the table entry's bytes 28..47. */
typedef struct bet_conv {
    uint32_t c_out, c_in, h, w; /* output channels, input channels, input height and width */
    uint32_t k, s, p, pool;     /* kernel, stride, zero padding, max-pool window */
    uint32_t hc, wc;            /* convolution output before pooling (valid after checking) */
    uint32_t fan_in;            /* C_in * k * k */
} bet_conv;

static void bet_conv_read(const uint8_t *g, bet_conv *c)
{
    c->c_out = bet_le32(g);
    c->c_in = bet_le32(g + 4);
    c->h = bet_le32(g + 8);
    c->w = bet_le32(g + 12);
    c->k = g[16];
    c->s = g[17];
    c->p = g[18];
    c->pool = g[19];
    c->hc = c->s == 0u || c->h + 2u * c->p < c->k ? 0u : (c->h + 2u * c->p - c->k) / c->s + 1u;
    c->wc = c->s == 0u || c->w + 2u * c->p < c->k ? 0u : (c->w + 2u * c->p - c->k) / c->s + 1u;
    c->fan_in = c->c_in * c->k * c->k;
}

/*
 * Check a kind-3 entry `e` against its in_features `in`, out_features `out` and weight words
 * (FORMAT.md, version 2); `prev` is the previous layer when it is convolutional, else NULL.
 */
static int bet_conv_entry_ok(const uint8_t *e, uint32_t in, uint32_t out, uint32_t words,
                             const bet_layer *prev)
{
    bet_conv c, before;
    uint32_t size, bits;
    bet_conv_read(e + 28, &c);
    /* sizes below 2^31 (in <= 0x7FFFFFFF holds), so h + 2 p (p < k <= 255) cannot wrap */
    if (c.c_out == 0u || c.c_in == 0u || c.h == 0u || c.w == 0u || c.k == 0u || c.s == 0u ||
        c.pool == 0u || c.p >= c.k || !bet_mul31(c.c_in, c.h, &size) ||
        !bet_mul31(size, c.w, &size) || size != in || c.hc == 0u || c.wc == 0u ||
        c.hc % c.pool != 0u || c.wc % c.pool != 0u ||
        !bet_mul31(c.c_out, c.hc / c.pool, &size) || !bet_mul31(size, c.wc / c.pool, &size) ||
        size != out || !bet_mul31(c.c_in, c.k * c.k, &size) || !bet_mul31(c.c_out, size, &bits) ||
        words != BET_WORDS(bits)) {
        return 0;
    }
    if (prev != NULL) {
        bet_conv_read(prev->geometry, &before);
        if (c.c_in != before.c_out || c.h != before.hc / before.pool ||
            c.w != before.wc / before.pool) {
            return 0;
        }
    }
    return 1;
}

/* 1 when the n bytes at p are all 0. */
static int bet_zero_bytes(const uint8_t *p, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; ++i) {
        if (p[i] != 0u) {
            return 0;
        }
    }
    return 1;
}

/* Scratch words of a conv layer's patch: bits and mask (binary input) or one byte per pixel. */
static uint32_t bet_patch_words(const bet_conv *c, int binary_input)
{
    return binary_input ? 2u * BET_WORDS(c->fan_in) : BET_PIXEL_PATCH_WORDS(c->fan_in);
}

/* Parse and check the layer table into m (sections must tile [table end, file_size - 4)). */
static bet_status bet_parse_table(bet_model *m, const uint8_t *blob, uint32_t file_size)
{
    uint32_t l;
    uint32_t entry_size = m->version == 1u ? BET_ENTRY_SIZE_V1 : BET_ENTRY_SIZE_V2;
    uint32_t offset = BET_HEADER_SIZE + entry_size * m->num_layers + 4u;
    uint32_t prev_out = 0u;
    for (l = 0; l < m->num_layers; ++l) {
        const uint8_t *e = blob + BET_HEADER_SIZE + entry_size * l;
        bet_layer *layer = &m->layers[l];
        uint32_t kind = bet_le32(e);
        uint32_t lflags = bet_le32(e + 4);
        uint32_t out = bet_le32(e + 8);
        uint32_t in = bet_le32(e + 12);
        uint32_t words = bet_le32(e + 16);
        uint32_t section_offset = bet_le32(e + 20);
        uint32_t section_size = bet_le32(e + 24);
        uint32_t room = file_size - 4u - offset; /* offset <= file_size - 4 holds here */
        uint32_t weight_bytes, extra, expected, thresholds = out;
        int is_output = l + 1u == m->num_layers;
        int is_conv = BET_CONV && kind == BET_KIND_CONV;
        /* conv layers first (v2 only), then hidden dense layers, then the output layer */
        int kind_ok = is_output ? kind == BET_KIND_OUTPUT
                                : kind == BET_KIND_HIDDEN ||
                                      (is_conv && m->version >= 2u &&
                                       (l == 0u || m->layers[l - 1u].is_conv));
        const bet_layer *prev_conv = l > 0u && m->layers[l - 1u].is_conv ? layer - 1 : NULL;
        bet_conv c;
        if (!BET_CONV && kind == BET_KIND_CONV) {
            return BET_ERR_LAYOUT;
        }
        /* reserved: v1 entry bytes 28..31, v2 dense entry bytes 28..47 (the conv fields) */
        if ((lflags & ~BET_LAYER_BINARY_INPUT) != 0u ||
            (!is_conv && !bet_zero_bytes(e + 28, entry_size - 28u))) {
            return BET_ERR_FLAGS;
        }
        if (!kind_ok || (lflags & BET_LAYER_BINARY_INPUT) != (l > 0u ? 1u : 0u) || out == 0u ||
            in == 0u || in > 0x7FFFFFFFu || (l > 0u && in != prev_out) ||
            section_offset != offset ||
            (is_conv ? !bet_conv_entry_ok(e, in, out, words, prev_conv)
                     : words != BET_WORDS(in))) {
            return BET_ERR_LAYOUT;
        }
        if (is_conv) { /* one threshold and direction per output channel */
            bet_conv_read(e + 28, &c);
            thresholds = c.c_out;
        }
        /* section size without overflow: every part must fit in the remaining bytes; weights
           are `out` rows of `words` (dense) or `words` for the whole layer (conv) */
        if (is_conv ? words > room / 4u : out > room / 4u / words) {
            return BET_ERR_LAYOUT;
        }
        weight_bytes = is_conv ? 4u * words : 4u * out * words;
        room -= weight_bytes;
        extra = 0u;
        if (!is_output) {
            /* thresholds then directions, checked so that nothing overflows */
            if (4u * thresholds > room || 4u * BET_WORDS(thresholds) > room - 4u * thresholds) {
                return BET_ERR_LAYOUT;
            }
            extra = 4u * thresholds + 4u * BET_WORDS(thresholds);
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
        layer->is_conv = (uint8_t)is_conv;
        layer->geometry = is_conv ? e + 28 : NULL;
        layer->weights = blob + offset;
        layer->thresholds = is_output ? NULL : blob + offset + weight_bytes;
        layer->directions = is_output ? NULL : blob + offset + weight_bytes + 4u * thresholds;
        if (!is_output && out > m->max_hidden) {
            m->max_hidden = out;
        }
        if (is_conv) {
            uint32_t patch = bet_patch_words(&c, l > 0u);
            m->patch_words = patch > m->patch_words ? patch : m->patch_words;
            m->conv_channels = c.c_out > m->conv_channels ? c.c_out : m->conv_channels;
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
    uint32_t file_size, scale_bits, l, i, product, entry_size, version, fan0;
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
    version = bet_le16(blob + 4);
    if (version != 1u && version != 2u) {
        return BET_ERR_VERSION;
    }
    entry_size = version == 1u ? BET_ENTRY_SIZE_V1 : BET_ENTRY_SIZE_V2;
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
    m->version = version;
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
    if (file_size < BET_HEADER_SIZE + entry_size * m->num_layers + 4u + 4u) {
        st = BET_ERR_TRUNCATED;
        goto fail;
    }
    if (check_crc && bet_crc_at(blob, BET_HEADER_SIZE, entry_size * m->num_layers) !=
                         bet_le32(blob + BET_HEADER_SIZE + entry_size * m->num_layers)) {
        st = BET_ERR_TABLE_CRC;
        goto fail;
    }
    st = bet_parse_table(m, blob, file_size);
    if (st != BET_OK) {
        goto fail;
    }
    m->num_inputs = m->layers[0].in_features;
    m->num_classes = m->layers[m->num_layers - 1u].out_features;
    /* the pixel layer's fan-in n0 (conv: C_in k k): n0 * 255 and n0 * Lq + 1 fit int32 */
    fan0 = m->num_inputs;
    if (BET_CONV && m->layers[0].is_conv) {
        bet_conv c;
        bet_conv_read(m->layers[0].geometry, &c);
        fan0 = c.fan_in;
        /* layer 0 of kind 3 needs the input shape (C_in, H, W) */
        if (m->input_ndim != 3u || m->input_shape[0] != c.c_in || m->input_shape[1] != c.h ||
            m->input_shape[2] != c.w) {
            st = BET_ERR_LAYOUT;
            goto fail;
        }
    }
    if (fan0 > BET_MAX_PIXEL_FAN_IN || m->input_levels > 0x7FFFFFFEu / fan0) {
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
            const uint8_t *e = blob + BET_HEADER_SIZE + entry_size * l;
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
        uint32_t j, rows = layer->out_features, bits = layer->in_features;
        uint32_t neurons = layer->out_features;
        if (BET_CONV && layer->is_conv) { /* one bit vector; a threshold and direction a channel */
            bet_conv c;
            bet_conv_read(layer->geometry, &c);
            rows = 1u;
            bits = c.c_out * c.fan_in;
            neurons = c.c_out;
        }
        for (j = 0; j < rows; ++j) {
            if (!bet_padding_clear(layer->weights + 4u * layer->words_per_row * j, bits)) {
                st = BET_ERR_PADDING;
                goto fail;
            }
        }
        if (!layer->is_output && !bet_padding_clear(layer->directions, neurons)) {
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
    return m == NULL ? 0u
                     : BET_SCRATCH_WORDS_CONV(m->max_hidden, m->patch_words, m->conv_channels);
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

/* ---------------------------------------------------------------------------------------- */
/* Convolutional layers (v2 kind 3): im2col one patch per convolution position, reused by every
   output channel; max-pool over the window, then the threshold. */

/* `count` (1..32) bits of the packed words v from bit b, in the low bits (the rest 0).  Reads
   only the words that hold those bits. */
static uint32_t bet_get_bits(const uint32_t *v, uint32_t b, uint32_t count)
{
    uint32_t shift = b % 32u;
    const uint32_t *p = v + b / 32u;
    uint32_t bits = p[0] >> shift;
    if (shift + count > 32u) {
        bits |= p[1] << (32u - shift);
    }
    return count == 32u ? bits : bits & ((1u << count) - 1u);
}

/* bet_get_bits for little-endian words stored as bytes (the weights in the blob). */
static uint32_t bet_get_le_bits(const uint8_t *w, uint32_t b, uint32_t count)
{
    uint32_t shift = b % 32u;
    const uint8_t *p = w + 4u * (b / 32u);
    uint32_t bits = bet_le32(p) >> shift;
    if (shift + count > 32u) {
        bits |= bet_le32(p + 4) << (32u - shift);
    }
    return count == 32u ? bits : bits & ((1u << count) - 1u);
}

/* OR the low `count` (1..32) bits of `bits` (the rest 0) into the packed words v from bit b. */
static void bet_or_bits(uint32_t *v, uint32_t b, uint32_t bits, uint32_t count)
{
    uint32_t shift = b % 32u;
    uint32_t *p = v + b / 32u;
    p[0] |= bits << shift;
    if (shift + count > 32u) {
        p[1] |= bits >> (32u - shift);
    }
}

/* Copy `count` bits from bit `from` of src to bit `to` of the zeroed dst, 32 at a time; a NULL
   src sets them to 1 instead. */
static void bet_copy_bits(uint32_t *dst, uint32_t to, const uint32_t *src, uint32_t from,
                          uint32_t count)
{
    while (count > 0u) {
        uint32_t n = count < 32u ? count : 32u;
        uint32_t ones = n == 32u ? 0xFFFFFFFFu : (1u << n) - 1u;
        bet_or_bits(dst, to, src != NULL ? bet_get_bits(src, from, n) : ones, n);
        to += n;
        from += n;
        count -= n;
    }
}

/* The rows i0..i1-1 and columns j0..j1-1 of the k x k window at convolution position (y, x)
   that lie inside the input (the rest is zero padding). */
typedef struct bet_window {
    uint32_t top, left; /* input row and column of window element (i0, j0) */
    uint32_t i0, i1, j0, j1;
} bet_window;

static void bet_window_at(const bet_conv *c, uint32_t y, uint32_t x, bet_window *win)
{
    uint32_t sy = c->s * y, sx = c->s * x; /* sy + k <= h + 2 p */
    win->i0 = sy < c->p ? c->p - sy : 0u;
    win->j0 = sx < c->p ? c->p - sx : 0u;
    win->i1 = c->h + c->p - sy < c->k ? c->h + c->p - sy : c->k;
    win->j1 = c->w + c->p - sx < c->k ? c->w + c->p - sx : c->k;
    win->top = sy + win->i0 - c->p;
    win->left = sx + win->j0 - c->p;
}

/* Binary input: patch bits (c, i, j) of the window and their in-the-image mask; returns n_v,
   the number of positions inside the input. */
static uint32_t bet_patch_bits(const bet_conv *c, const bet_window *win, const uint32_t *x,
                               uint32_t *patch, uint32_t *mask)
{
    uint32_t words = BET_WORDS(c->fan_in), t, ch, i, width = win->j1 - win->j0;
    for (t = 0; t < words; ++t) {
        patch[t] = 0u;
        mask[t] = 0u;
    }
    for (ch = 0; ch < c->c_in; ++ch) {
        for (i = win->i0; i < win->i1; ++i) {
            uint32_t to = (ch * c->k + i) * c->k + win->j0;
            uint32_t from = (ch * c->h + win->top + i - win->i0) * c->w + win->left;
            bet_copy_bits(patch, to, x, from, width);
            bet_copy_bits(mask, to, NULL, 0u, width);
        }
    }
    return c->c_in * (win->i1 - win->i0) * width;
}

/* Pixel input: the window's pixels in (c, i, j) order, 0 in the padding; returns their sum. */
static int32_t bet_patch_pixels(const bet_conv *c, const bet_window *win, const uint8_t *q,
                                uint8_t *patch)
{
    uint32_t e, ch, i, j;
    int32_t total = 0;
    for (e = 0; e < c->fan_in; ++e) {
        patch[e] = 0u;
    }
    for (ch = 0; ch < c->c_in; ++ch) {
        for (i = win->i0; i < win->i1; ++i) {
            const uint8_t *row = q + (ch * c->h + win->top + i - win->i0) * c->w + win->left;
            uint8_t *dst = patch + (ch * c->k + i) * c->k + win->j0;
            for (j = 0; j < win->j1 - win->j0; ++j) {
                dst[j] = row[j];
                total += (int32_t)row[j];
            }
        }
    }
    return total;
}

/* Pre-activation of output channel o for a binary patch: n_v - 2 popcount((x ^ w) & mask). */
static int32_t bet_conv_dot_bits(const bet_conv *c, const uint8_t *w, uint32_t o,
                                 const uint32_t *patch, const uint32_t *mask, uint32_t valid)
{
    uint32_t base = o * c->fan_in, t, diff = 0u;
    for (t = 0; 32u * t < c->fan_in; ++t) {
        uint32_t n = c->fan_in - 32u * t < 32u ? c->fan_in - 32u * t : 32u;
        diff += BET_POPCOUNT32((patch[t] ^ bet_get_le_bits(w, base + 32u * t, n)) & mask[t]);
    }
    return (int32_t)valid - 2 * (int32_t)diff;
}

/* Pre-activation of output channel o for a pixel patch: total - 2 * sum_{bit 1} q. */
static int32_t bet_conv_dot_pixels(const bet_conv *c, const uint8_t *w, uint32_t o,
                                   const uint8_t *patch, int32_t total)
{
    uint32_t base = o * c->fan_in, t, i;
    int32_t neg = 0;
    for (t = 0; t < c->fan_in; t += 32u) {
        uint32_t n = c->fan_in - t < 32u ? c->fan_in - t : 32u;
        uint32_t bits = bet_get_le_bits(w, base + t, n);
        for (i = 0; i < n; ++i) {
            uint32_t mask = 0u - ((bits >> i) & 1u); /* all ones where the weight is -1 */
            neg += (int32_t)(patch[t + i] & mask);
        }
    }
    return total - 2 * neg;
}

/*
 * One convolutional layer: out (BET_WORDS(out_features) words) receives the thresholded,
 * max-pooled map in (C, H, W) order.  Input: pixels q (layer 0) or packed bits x.  patch:
 * bet_patch_words words; best: C_out int32 running maxima.
 */
static void bet_conv_forward(const bet_layer *layer, const uint8_t *q, const uint32_t *x,
                             uint32_t *out, uint32_t *patch, int32_t *best)
{
    bet_conv c;
    bet_window win;
    uint32_t ho, wo, yy, xx, u, v, o, t, *mask;
    bet_conv_read(layer->geometry, &c);
    ho = c.hc / c.pool;
    wo = c.wc / c.pool;
    mask = patch + BET_WORDS(c.fan_in); /* used for binary inputs only */
    for (t = 0; t < BET_WORDS(layer->out_features); ++t) {
        out[t] = 0u;
    }
    for (yy = 0; yy < ho; ++yy) {
        for (xx = 0; xx < wo; ++xx) {
            for (u = 0; u < c.pool; ++u) {
                for (v = 0; v < c.pool; ++v) {
                    uint32_t valid = 0u;
                    int32_t total = 0;
                    bet_window_at(&c, c.pool * yy + u, c.pool * xx + v, &win);
                    if (layer->binary_input) {
                        valid = bet_patch_bits(&c, &win, x, patch, mask);
                    } else {
                        total = bet_patch_pixels(&c, &win, q, (uint8_t *)patch);
                    }
                    for (o = 0; o < c.c_out; ++o) {
                        int32_t a = layer->binary_input
                                        ? bet_conv_dot_bits(&c, layer->weights, o, patch, mask,
                                                            valid)
                                        : bet_conv_dot_pixels(&c, layer->weights, o,
                                                              (const uint8_t *)patch, total);
                        if ((u == 0u && v == 0u) || a > best[o]) {
                            best[o] = a;
                        }
                    }
                }
            }
            for (o = 0; o < c.c_out; ++o) {
                int32_t th = bet_i32(bet_le32(layer->thresholds + 4u * o));
                uint32_t negative_d =
                    (bet_le32(layer->directions + 4u * (o / 32u)) >> (o % 32u)) & 1u;
                /* +1 (bit 0) iff d (max - T) >= 0, which is the OR (d = +1) or AND (d = -1) of
                   the window's threshold bits */
                uint32_t bit = negative_d ? (uint32_t)(best[o] > th) : (uint32_t)(best[o] < th);
                uint32_t at = (o * ho + yy) * wo + xx;
                out[at / 32u] |= bit << (at % 32u);
            }
        }
    }
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
    if (!(BET_CONV && m->layers[0].is_conv)) { /* a dense first layer uses the pixel sum */
        for (i = 0; i < m->num_inputs; ++i) {
            total += (int32_t)pixels[i];
        }
    }
    half = BET_WORDS(m->max_hidden);
    buffers[0] = scratch;
    buffers[1] = scratch + half;
    for (l = 0; l + 1u < m->num_layers; ++l) {
        const bet_layer *layer = &m->layers[l];
        uint32_t *out = buffers[l & 1u];
        uint32_t word = 0u;
        if (BET_CONV && layer->is_conv) {
            /* patch after the two buffers, then the int32 maxima (same-width integer type) */
            bet_conv_forward(layer, pixels, x, out, scratch + 2u * half,
                             (int32_t *)(scratch + 2u * half + m->patch_words));
            x = out;
            continue;
        }
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
