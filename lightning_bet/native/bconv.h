/*
 * Host binary convolution kernels for the fast fault-injection sweep (lightning_bet.fast_sweep).
 *
 * One convolutional block of a BNN in deploy mode: convolution with zero padding (padded
 * positions contribute 0), max-pool with stride equal to its window on the integer
 * pre-activation, then the folded BatchNorm threshold: the output is +1 iff
 * d[c] * (max_window a - t[c]) >= 0.
 *
 * Layouts (HWC, channels innermost, so that one position's channels are whole words):
 *   - binary maps: uint64 (batch, h, w, nq) with nq = ceil(channels / 64); bit c % 64 of word
 *     c / 64 is 1 for the sign -1; padding bits past `channels` are 0;
 *   - binary kernels: uint64 (cout, k, k, nq) in the same bit layout (padding bits 0);
 *   - integer inputs: int16 (batch, cin, h, w); integer kernels: int8 (cout, cin, k, k) in
 *     {-1, +1} (both in PyTorch order).
 * Outputs are binary maps (batch, ho, wo, ceil(cout / 64)) with ho = hc / pool, wo = wc / pool,
 * hc = (h + 2 pad - k) / stride + 1 (likewise wc); pool must divide hc and wc.
 *
 * Every entry point runs on `threads` threads (<= 0: all online CPUs) split over samples and
 * returns 0 on success, -1 on invalid arguments, -2 when a work buffer cannot be allocated.
 */
#ifndef LIGHTNING_BET_BCONV_H
#define LIGHTNING_BET_BCONV_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Channel subsets: with cidx == NULL every output channel is computed (cout == cout_total,
 * base == NULL).  Otherwise only cout channels are computed, w / t / d holding theirs, and
 * channel c lands at output channel cidx[c] < cout_total; the other output bits are copied
 * from base (the same layout as bits), e.g. a clean pass where only some kernels changed.
 */

/* Binary inputs: a = sum over valid taps of (cin - 2 popcount(x XOR w)). */
int bconv_binary_sign_threads(const uint64_t *x, const uint64_t *w, const int32_t *t,
                              const int8_t *d, const int32_t *cidx, const uint64_t *base,
                              uint64_t *bits, int batch, int cin, int h, int wd, int cout,
                              int cout_total, int k, int stride, int pad, int pool,
                              int threads);

/* Integer inputs q: a = sum over valid taps and input channels of w q (exact int32). */
int bconv_int_sign_threads(const int16_t *q, const int8_t *w, const int32_t *t, const int8_t *d,
                           const int32_t *cidx, const uint64_t *base, uint64_t *bits, int batch,
                           int cin, int h, int wd, int cout, int cout_total, int k, int stride,
                           int pad, int pool, int threads);

/* Thread runner of bdense.c: fn(ctx, tid) on `threads` threads, the caller being tid 0. */
int bdense_run_threads(void (*fn)(void *ctx, int tid), void *ctx, int threads);

#ifdef __cplusplus
}
#endif

#endif /* LIGHTNING_BET_BCONV_H */
