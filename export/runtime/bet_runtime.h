/*
 * bet_runtime: portable C99 inference for lightning-bet bitstream v1 and v2 models.
 *
 * - No dynamic memory: the model is parsed in place (pointers into the caller's blob) and
 *   inference works in caller-provided scratch buffers.
 * - Integer-only hidden layers: XNOR/popcount on 32-bit words for binary inputs, integer
 *   add/subtract for the first layer's uint8 pixels.
 * - Byte order independent: every multi-byte field (including packed weight words) is read
 *   as little-endian from bytes, so the blob needs no particular alignment.
 *
 * Bit convention (METHOD section 7): bit 1 encodes -1, bit 0 encodes +1; each weight row is
 * packed LSB-first into 32-bit words and padded with 0-bits.
 *
 * Semantics (lightning_bet/deploy/model.py, export/FORMAT.md): for integer pixels q,
 *   conv layer:    (v2) a[o, y, x] = sum W[o, c, i, j] v[c, s y + i - p, s x + j - p] over the
 *                  positions inside the input (zero padding contributes 0), max-pooled over
 *                  P x P windows, then o = +1 iff d_o * (a - T_o) >= 0; output in (C, H, W) order;
 *   hidden layer:  a = W v;  o_j = +1 (bit 0) iff d_j * (a_j - T_j) >= 0, else -1 (bit 1)
 *                  v = q for the first layer, else the previous layer's outputs in {-1, +1};
 *   output layer:  integer logits a = W v; prediction argmax(a), first index on ties.
 *
 * See export/FORMAT.md for the byte layout and export/RUNTIME.md for usage and sizes.
 */
#ifndef BET_RUNTIME_H
#define BET_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Maximum number of layers (hidden + output) a model may have; override at compile time. */
#ifndef BET_MAX_LAYERS
#define BET_MAX_LAYERS 16
#endif

/* 32-bit words needed to hold `n` packed bits. */
#define BET_WORDS(n) ((uint32_t)(n) / 32u + (uint32_t)((uint32_t)(n) % 32u != 0u))

/*
 * Scratch words bet_predict needs:
 *   - two ping-pong bit buffers for the widest hidden layer (`max_hidden` outputs; for a
 *     convolutional layer C_out * H_out * W_out, packed in (C, H, W) order);
 *   - `patch_words` for the largest im2col patch of a convolutional layer: a binary-input layer
 *     needs 2 * BET_WORDS(C_in k k) (the patch bits and their in-the-image mask), a pixel-input
 *     layer BET_PIXEL_PATCH_WORDS(C_in k k) (one byte per pixel);
 *   - `conv_channels` int32 words for the per-channel running maxima of a convolutional layer
 *     (its largest C_out);
 *   - one word, so that a model without hidden layers still gets a non-empty array.
 * Fully connected models have patch_words = conv_channels = 0.  Generated model headers
 * define <NAME>_MAX_HIDDEN, <NAME>_PATCH_WORDS, <NAME>_CONV_CHANNELS and <NAME>_SCRATCH_WORDS.
 */
#define BET_SCRATCH_WORDS_CONV(max_hidden, patch_words, conv_channels) \
    (2u * BET_WORDS(max_hidden) + (uint32_t)(patch_words) + (uint32_t)(conv_channels) + 1u)
#define BET_SCRATCH_WORDS(max_hidden) BET_SCRATCH_WORDS_CONV(max_hidden, 0u, 0u)
#define BET_PIXEL_PATCH_WORDS(fan_in) \
    ((uint32_t)(fan_in) / 4u + (uint32_t)((uint32_t)(fan_in) % 4u != 0u))

/*
 * Attributes for model blobs, written after the declarator (`static const uint8_t x[] BET_ALIGN4`).
 * 4-byte alignment only speeds up loads (the runtime reads bytes, any address works); compilers
 * without GCC-style attributes get nothing.
 */
#if defined(__GNUC__) || defined(__clang__)
#define BET_ALIGN4 __attribute__((aligned(4)))
#define BET_UNUSED __attribute__((unused))
#else
#define BET_ALIGN4
#define BET_UNUSED
#endif

/* Result codes of bet_model_init. */
typedef enum bet_status {
    BET_OK = 0,
    BET_ERR_NULL = 1,            /* a NULL pointer argument */
    BET_ERR_TRUNCATED = 2,       /* the blob is shorter than the header or than file_size */
    BET_ERR_TRAILING = 3,        /* the blob is longer than file_size */
    BET_ERR_MAGIC = 4,           /* the magic bytes are not "LBET" */
    BET_ERR_VERSION = 5,         /* a format version other than 1 and 2 */
    BET_ERR_HEADER_CRC = 6,      /* header CRC32 mismatch */
    BET_ERR_FLAGS = 7,           /* a non-zero reserved flag, flag bit or reserved field */
    BET_ERR_VALUE = 8,           /* output_scale not finite and > 0, or input_levels == 0 */
    BET_ERR_TOO_MANY_LAYERS = 9, /* num_layers > BET_MAX_LAYERS (compile-time limit) */
    BET_ERR_TABLE_CRC = 10,      /* layer table CRC32 mismatch */
    BET_ERR_LAYOUT = 11,         /* inconsistent layer table, shapes, offsets or sizes */
    BET_ERR_SECTION_CRC = 12,    /* a layer section's CRC32 mismatch */
    BET_ERR_FILE_CRC = 13,       /* CRC32 over the whole file mismatch */
    BET_ERR_PADDING = 14         /* a padding bit (weights or directions) is not 0 */
} bet_status;

/* One layer, parsed in place. */
typedef struct bet_layer {
    uint32_t in_features;       /* fan-in n (convolutional: C_in * H * W) */
    uint32_t out_features;      /* neurons or classes (convolutional: C_out * H_out * W_out) */
    uint32_t words_per_row;     /* BET_WORDS(in_features); conv: weight words of the whole layer */
    uint8_t binary_input;       /* 1: inputs in {-1, +1} (packed bits), 0: uint8 pixels */
    uint8_t is_output;          /* 1 for the last layer (integer logits, no thresholds) */
    uint8_t is_conv;            /* 1 for a convolutional layer (v2 kind 3) */
    const uint8_t *geometry;    /* conv: the table entry's bytes 28..47 (C_out, C_in, H, W as
                                   u32, then k, s, p, P as u8), read at inference; else NULL */
    const uint8_t *weights;     /* out_features * words_per_row little-endian words (conv: one
                                   bit vector of C_out * C_in * k * k kernels in PyTorch order) */
    const uint8_t *thresholds;  /* little-endian int32 T per neuron / output channel (hidden) */
    const uint8_t *directions;  /* packed bits, bit j = 1 iff d_j = -1 (hidden layers) */
} bet_layer;

/* A parsed model; holds pointers into the blob passed to bet_model_init (no copies). */
typedef struct bet_model {
    uint32_t version;
    uint32_t flags;
    uint32_t num_layers;        /* hidden layers + 1 output layer */
    uint32_t num_inputs;        /* in_features of the first layer (bytes per sample) */
    uint32_t num_classes;       /* out_features of the output layer */
    uint32_t max_hidden;        /* widest hidden layer (0 without hidden layers) */
    uint32_t patch_words;       /* scratch words of the largest conv patch (0 without conv) */
    uint32_t conv_channels;     /* largest C_out of a conv layer (0 without conv) */
    uint32_t input_levels;      /* pixels are q / input_levels with q in [0, input_levels] */
    float scale;                /* output scale s: float logits are s * integer logits */
    uint32_t input_ndim;        /* used entries of input_shape (0: not recorded) */
    uint32_t input_shape[4];    /* shape of one sample before flattening */
    bet_layer layers[BET_MAX_LAYERS];
} bet_model;

/* Options of bet_model_init_ex. */
#define BET_INIT_DEFAULT 0u
/* Skip CRC checks (e.g. to run a model whose stored bits were deliberately faulted). */
#define BET_INIT_SKIP_CRC 1u

/*
 * Parse and validate a bitstream (version 1 or 2) held in memory.  Never reads outside
 * blob[0, len).
 * On success *m points into `blob`, which must outlive it.  On failure *m is zeroed.
 */
bet_status bet_model_init(bet_model *m, const uint8_t *blob, size_t len);

/* bet_model_init with options (BET_INIT_*). */
bet_status bet_model_init_ex(bet_model *m, const uint8_t *blob, size_t len, uint32_t options);

/* Words of scratch bet_predict needs for this model:
   BET_SCRATCH_WORDS_CONV(m->max_hidden, m->patch_words, m->conv_channels). */
uint32_t bet_scratch_words(const bet_model *m);

/*
 * Classify one sample.
 *   pixels:     m->num_inputs integer pixels q (uint8, row-major flattened input)
 *   logits_out: m->num_classes int32 integer logits (may be NULL)
 *   scratch:    bet_scratch_words(m) words
 * Returns the predicted class (argmax of the integer logits, first index on ties), or -1 on
 * NULL arguments.
 */
int32_t bet_predict(const bet_model *m, const uint8_t *pixels, int32_t *logits_out,
                    uint32_t *scratch);

/* CRC-32 (IEEE 802.3, reflected, as zlib.crc32); pass crc = 0 to start. */
uint32_t bet_crc32(uint32_t crc, const uint8_t *data, size_t len);

/* A short constant description of a status code. */
const char *bet_status_str(bet_status status);

#ifdef __cplusplus
}
#endif

#endif /* BET_RUNTIME_H */
