/*
 * bet_batch: host batch inference for lightning-bet dense models, bit-identical to bet_predict.
 *
 * The portable runtime (bet_runtime.c) reads packed 32-bit words straight from the bitstream,
 * one sample at a time, and is what a microcontroller compiles.  This optional companion is for
 * hosts (PCs, servers, application processors): it repacks a parsed model once into a caller
 * buffer, then classifies batches with
 *
 * - the integer-pixel first layer as uint8 x int8 dot products (AVX-512BW/VNNI, AVX2 or NEON when
 *   the compiler targets them, a scalar loop otherwise), since the weights are +-1;
 * - binary layers as a = n - 2 popcount(x XOR w) on 64-bit words (VPOPCNTQ with
 *   AVX-512 VPOPCNTDQ, NEON's vcnt, else the compiler's 64-bit popcount builtin);
 * - thresholds, directions and argmax exactly as bet_predict (first index on ties).
 *
 * Still no malloc: the caller provides the repacked-weights workspace and the scratch, sized by
 * bet_batch_workspace_bytes and bet_batch_scratch_bytes.  C99 plus compiler intrinsics under #if.
 * A model with convolutional layers is refused (BET_ERR_LAYOUT): classify it with bet_predict.
 */
#ifndef BET_BATCH_H
#define BET_BATCH_H

#include "bet_runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One repacked layer (pointers into the caller's workspace). */
typedef struct bet_batch_layer {
    uint32_t in_features;      /* n */
    uint32_t out_features;     /* m */
    uint32_t stride;           /* 4-pixel steps (first layer) or 64-bit words (binary layers) */
    uint8_t binary_input;      /* 0: uint8 pixels (int8 +-1 rows), 1: packed bits (u64 rows) */
    const int8_t *weights_i8;  /* first layer: [group][step][16 rows][4] int8 in {-1, +1, 0} */
    const uint64_t *weights_u64; /* binary layers: [group][word][8 rows], bit 1 = -1 */
    const int64_t *thresholds; /* hidden layers: T_j (padded to whole groups) */
    const uint64_t *negative;  /* hidden layers: bit j set where d_j = -1 (one spare word) */
} bet_batch_layer;

/* A model prepared for batch inference. */
typedef struct bet_batch {
    const bet_model *model;
    uint32_t num_layers;
    uint32_t num_inputs;
    uint32_t num_classes;
    uint32_t max_words;        /* widest packed activation, in 64-bit words */
    uint32_t pixel_stride;     /* padded bytes of one sample's pixels */
    bet_batch_layer layers[BET_MAX_LAYERS];
} bet_batch;

/* Bytes of workspace bet_batch_init needs for `m` (0 for NULL or an unsupported model). */
size_t bet_batch_workspace_bytes(const bet_model *m);

/*
 * Repack `m` (parsed by bet_model_init, dense layers only) into `workspace` (at least
 * bet_batch_workspace_bytes(m) bytes, any alignment).  `m` and its blob must outlive `b`.
 */
bet_status bet_batch_init(bet_batch *b, const bet_model *m, void *workspace, size_t bytes);

/* Bytes of scratch bet_predict_batch needs for up to `count` samples per call. */
size_t bet_batch_scratch_bytes(const bet_batch *b, uint32_t count);

/*
 * Classify `count` samples of b->num_inputs uint8 pixels each (row-major, back to back).
 *   logits_out: count * num_classes int32 integer logits (may be NULL)
 *   classes_out: count predicted classes (may be NULL)
 *   scratch: bet_batch_scratch_bytes(b, count) bytes, any alignment
 * Returns 0, or -1 on NULL arguments.  Results equal bet_predict's for every sample.
 */
int32_t bet_predict_batch(const bet_batch *b, const uint8_t *pixels, uint32_t count,
                          int32_t *logits_out, int32_t *classes_out, void *scratch);

/* Which SIMD paths this build of bet_batch uses, e.g. "avx512bw+vnni+vpopcntdq". */
const char *bet_batch_simd(void);

#ifdef __cplusplus
}
#endif

#endif /* BET_BATCH_H */
