/*
 * Host binary dense (XNOR/popcount) kernel.
 *
 * Bit convention: bit 1 encodes -1, bit 0 encodes +1.  Each vector of n
 * signs is packed LSB-first into little-endian 32-bit words and padded with
 * 0-bits up to `words` = ceil(n / 32) words (any larger `words` also works as
 * long as the padding bits of x and w are 0).
 *
 * For x in {-1,+1}^n and a weight row w_j in {-1,+1}^n the pre-activation is
 *
 *     a_j = sum_i w_ji x_i = n - 2 * popcount(x XOR w_j).
 */
#ifndef LIGHTNING_BET_BDENSE_H
#define LIGHTNING_BET_BDENSE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * out[b * rows + j] = n - 2 * popcount(x[b, :] XOR w[j, :]).
 *
 * x:   batch x words uint32 (row-major), w: rows x words uint32 (row-major),
 * out: batch x rows int32 (row-major).  Uses the default thread count
 * (OpenMP's, or 1 without OpenMP).  Returns 0 on success, -1 on invalid
 * arguments, -2 on allocation failure.
 */
int bdense_popcount(const uint32_t *x, const uint32_t *w, int32_t *out, int batch, int rows,
                    int words, int n);

/* Same as bdense_popcount with an explicit thread count (<= 0: default). */
int bdense_popcount_threads(const uint32_t *x, const uint32_t *w, int32_t *out, int batch,
                            int rows, int words, int n, int threads);

/* Portable reference (scalar __builtin_popcountll, single thread, no tiling). */
int bdense_popcount_reference(const uint32_t *x, const uint32_t *w, int32_t *out, int batch,
                              int rows, int words, int n);

/*
 * Popcount peak of this CPU in popcount'd bits per second, using `threads`
 * threads (<= 0: default) that each run `iters` iterations of 16 independent
 * popcount instructions on register data.
 *   bdense_peak_vector: 512-bit vpopcntq (0.0 when not compiled with
 *                       AVX512-VPOPCNTDQ).
 *   bdense_peak_scalar: 64-bit popcnt.
 */
double bdense_peak_vector(int threads, long long iters);
double bdense_peak_scalar(int threads, long long iters);

/* 1 when the AVX512-VPOPCNTDQ kernel path was compiled in, else 0. */
int bdense_has_avx512(void);

/* Default number of threads the kernel uses (1 without OpenMP). */
int bdense_max_threads(void);

#ifdef __cplusplus
}
#endif

#endif /* LIGHTNING_BET_BDENSE_H */
