/*
 * Host binary dense (XOR/popcount) kernel.
 *
 * Bit convention: bit 1 encodes -1, bit 0 encodes +1.  Each vector of n signs
 * is packed LSB-first into little-endian 32-bit words (sign i is bit i % 32 of
 * word i / 32) and padded with 0-bits up to `words` >= ceil(n / 32) words.
 * The padding bits of x and w are 0, so they never count as mismatches.
 *
 * For x in {-1,+1}^n and a weight row w_j in {-1,+1}^n the pre-activation is
 *
 *     a_j = sum_i w_ji x_i = n - 2 * popcount(x XOR w_j).
 *
 * Threading uses POSIX threads (no OpenMP runtime); every entry point is
 * reentrant and keeps no global state.
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
 * x:   batch x words uint32, row-major.
 * w:   rows x words uint32, row-major.
 * out: batch x rows int32, row-major.
 * n:   true fan-in, 0 <= n <= 32 * words.
 *
 * Runs on one thread.  Returns 0 on success, -1 on invalid arguments, -2 when
 * a work buffer cannot be allocated or a thread cannot be started.
 */
int bdense_popcount(const uint32_t *x, const uint32_t *w, int32_t *out, int batch, int rows,
                    int words, int n);

/* Same as bdense_popcount on `threads` threads (<= 0: all online CPUs). */
int bdense_popcount_threads(const uint32_t *x, const uint32_t *w, int32_t *out, int batch,
                            int rows, int words, int n, int threads);

/*
 * Packed signs of thresholded pre-activations: bit j of bits[b, :] (LSB-first, j / 32-th
 * word) is 1 (the sign -1) iff a[b, j] < t[j]; padding bits past `rows` are 0.
 *
 * a:    batch x rows int32, row-major.
 * t:    rows int32 thresholds.
 * bits: batch x ceil(rows / 32) uint32, row-major.
 *
 * Runs on `threads` threads (<= 0: all online CPUs).  Returns 0 on success, -1 on invalid
 * arguments.
 */
int bdense_sign_pack_threads(const int32_t *a, const int32_t *t, uint32_t *bits, int batch,
                             int rows, int threads);

/*
 * The next layer's packed input signs straight from the popcount: bits as in
 * bdense_sign_pack_threads for a = the output of bdense_popcount_threads, without
 * materialising a (the AVX-512 path thresholds each tile in registers).
 * Returns 0 on success, -1 on invalid arguments, -2 when a work buffer cannot be allocated.
 */
int bdense_popcount_sign_threads(const uint32_t *x, const uint32_t *w, const int32_t *t,
                                 uint32_t *bits, int batch, int rows, int words, int n,
                                 int threads);

/* Straightforward reference (32-bit __builtin_popcount, one thread, no tiling). */
int bdense_popcount_reference(const uint32_t *x, const uint32_t *w, int32_t *out, int batch,
                              int rows, int words, int n);

/*
 * Popcount peak of this CPU in popcount'd bits per second on `threads`
 * threads (<= 0: all online CPUs).  Each thread runs `iters` iterations of 16
 * independent popcount instructions on register data (no loads, no
 * dependency chains); the rate is total bits over the wall time of the
 * parallel section.  There is no warm-up inside: call once with few
 * iterations first to bring the core up to speed.
 *   bdense_peak_vector: 512-bit VPOPCNTQ, 512 bits per instruction; 0.0 when
 *                       the AVX512-VPOPCNTDQ path is not compiled in.
 *   bdense_peak_scalar: 64-bit POPCNT, 64 bits per instruction (a plain C
 *                       __builtin_popcountll loop where the POPCNT instruction
 *                       is not available at compile time).
 * Returns a negative value when a thread cannot be started.
 */
double bdense_peak_vector(int threads, long long iters);
double bdense_peak_scalar(int threads, long long iters);

/*
 * Sorted positions of a Bernoulli process on [0, numel) (the fault-map sampler of
 * lightning_bet.functional.faults, which defines the stream and holds a numpy twin of it).
 *
 * The range is cut into segments of `segment` positions; segment s draws x_j =
 * splitmix64(splitmix64(seed + (s + 1) * G) + j * G), j = 1, 2, ..., G = 0x9e3779b97f4a7c15,
 * and skips gap(x_j) = #{i < k : x_j < t[i]} positions before the next included one, where
 * t[i] ~ 2^64 (1 - p)^(i + 1) is decreasing; a gap of k includes nothing and draws again.
 * guide[x >> (64 - guide_bits)] must be the gap of the largest x of that bucket (a lower
 * bound the scan starts from).
 *
 * Segment s writes its positions to out[s * slot ...] (at most `slot` of them) and its count
 * to counts[s]; out holds ceil(numel / segment) * slot entries, counts one per segment.
 * Returns the number of positions, packed to the front of out in order; -1 on invalid
 * arguments; -2 - c when a segment had c > slot positions (out is then unspecified: call
 * again with slot >= c). Runs on `threads` threads (<= 0: all online CPUs); the result does
 * not depend on the thread count.
 */
long long bdense_bernoulli_positions(uint64_t seed, long long numel, long long segment,
                                     const uint64_t *t, int k, const uint32_t *guide,
                                     int guide_bits, long long *out, long long slot,
                                     long long *counts, int threads);

/* 1 when the AVX512-VPOPCNTDQ kernel path was compiled in, else 0. */
int bdense_has_avx512(void);

/* Number of online CPUs (the thread count used for threads <= 0). */
int bdense_online_cpus(void);

#ifdef __cplusplus
}
#endif

#endif /* LIGHTNING_BET_BDENSE_H */
