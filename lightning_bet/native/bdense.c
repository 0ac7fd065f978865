/*
 * Host binary dense (XNOR/popcount) kernel.  See bdense.h for the contract.
 *
 * Two code paths:
 *
 *   AVX512-VPOPCNTDQ (compiled when __AVX512F__ and __AVX512VPOPCNTDQ__ are
 *   defined, e.g. with -march=native on a CPU that has them): the weights are
 *   repacked into panels that interleave 8 rows per 64-bit word, so one zmm
 *   holds the same 64-bit word of 8 different rows.  A 64-bit word of an input
 *   is broadcast to all 8 lanes, XOR'd with the panel word, vpopcntq'd and
 *   added to a zmm accumulator whose lanes are 8 output rows.  A micro tile of
 *   BB inputs x BR zmm (8 * BR rows) keeps BB * BR accumulators in registers
 *   and needs no horizontal reduction: the lanes are the outputs.
 *
 *   Portable: __builtin_popcountll on 64-bit words with a small register tile.
 *
 * OpenMP (-fopenmp) is optional: without it everything runs on one thread.
 */
#include "bdense.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
#include <immintrin.h>
#define BDENSE_AVX512 1
#else
#define BDENSE_AVX512 0
#endif

#define BDENSE_INLINE static inline __attribute__((always_inline))

/* Unaligned, aliasing-safe little-endian 64-bit load of two uint32 words. */
BDENSE_INLINE uint64_t ld64(const uint32_t *p) {
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static int resolve_threads(int threads) {
#ifdef _OPENMP
    if (threads <= 0) {
        threads = omp_get_max_threads();
    }
    return threads < 1 ? 1 : threads;
#else
    (void)threads;
    return 1;
#endif
}

int bdense_max_threads(void) { return resolve_threads(0); }

int bdense_has_avx512(void) { return BDENSE_AVX512; }

static int check_args(const uint32_t *x, const uint32_t *w, const int32_t *out, int batch,
                      int rows, int words, int n) {
    if (batch < 0 || rows < 0 || words < 0 || n < 0 || (long long)n > 32LL * words) {
        return -1;
    }
    if ((batch > 0 && words > 0 && x == NULL) || (rows > 0 && words > 0 && w == NULL) ||
        (batch > 0 && rows > 0 && out == NULL)) {
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Reference                                                                 */
/* ------------------------------------------------------------------------ */

int bdense_popcount_reference(const uint32_t *x, const uint32_t *w, int32_t *out, int batch,
                              int rows, int words, int n) {
    if (check_args(x, w, out, batch, rows, words, n) != 0) {
        return -1;
    }
    for (int b = 0; b < batch; ++b) {
        const uint32_t *xb = x + (size_t)b * words;
        for (int j = 0; j < rows; ++j) {
            const uint32_t *wj = w + (size_t)j * words;
            long long pc = 0;
            for (int k = 0; k < words; ++k) {
                pc += __builtin_popcount(xb[k] ^ wj[k]);
            }
            out[(size_t)b * rows + j] = (int32_t)(n - 2 * pc);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Portable tiled kernel                                                     */
/* ------------------------------------------------------------------------ */

#define PB 4 /* inputs per portable micro tile */
#define PR 2 /* rows per portable micro tile */

BDENSE_INLINE void portable_tile(const uint32_t *x, const uint32_t *w, int32_t *out, int b0,
                                 int j0, int nb, int nr, int rows, int words, int n) {
    uint64_t acc[PB][PR] = {{0}};
    const int nq = words / 2;
    const uint32_t *xp[PB];
    const uint32_t *wp[PR];
    for (int b = 0; b < PB; ++b) {
        xp[b] = x + (size_t)(b0 + (b < nb ? b : 0)) * words;
    }
    for (int r = 0; r < PR; ++r) {
        wp[r] = w + (size_t)(j0 + (r < nr ? r : 0)) * words;
    }
    for (int q = 0; q < nq; ++q) {
        uint64_t wv[PR];
        for (int r = 0; r < PR; ++r) {
            wv[r] = ld64(wp[r] + 2 * q);
        }
        for (int b = 0; b < PB; ++b) {
            const uint64_t xv = ld64(xp[b] + 2 * q);
            for (int r = 0; r < PR; ++r) {
                acc[b][r] += (uint64_t)__builtin_popcountll(xv ^ wv[r]);
            }
        }
    }
    if (words & 1) {
        const int k = words - 1;
        for (int b = 0; b < PB; ++b) {
            for (int r = 0; r < PR; ++r) {
                acc[b][r] += (uint64_t)__builtin_popcount(xp[b][k] ^ wp[r][k]);
            }
        }
    }
    for (int b = 0; b < nb; ++b) {
        for (int r = 0; r < nr; ++r) {
            out[(size_t)(b0 + b) * rows + j0 + r] = (int32_t)(n - 2 * (long long)acc[b][r]);
        }
    }
}

static void portable_kernel(const uint32_t *x, const uint32_t *w, int32_t *out, int batch,
                            int rows, int words, int n, int threads) {
    const int tb = (batch + PB - 1) / PB;
    const int tr = (rows + PR - 1) / PR;
    const long long ntiles = (long long)tb * tr;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#else
    (void)threads;
#endif
    for (long long t = 0; t < ntiles; ++t) {
        const int b0 = (int)(t / tr) * PB;
        const int j0 = (int)(t % tr) * PR;
        const int nb = batch - b0 < PB ? batch - b0 : PB;
        const int nr = rows - j0 < PR ? rows - j0 : PR;
        portable_tile(x, w, out, b0, j0, nb, nr, rows, words, n);
    }
}

/* ------------------------------------------------------------------------ */
/* AVX512-VPOPCNTDQ kernel                                                   */
/* ------------------------------------------------------------------------ */

#if BDENSE_AVX512

#define BB 4   /* inputs per micro tile */
#define BR 4   /* zmm (8 rows each) per micro tile: 32 rows */
#define BC 64  /* inputs per cache block (x block: BC * words * 4 bytes) */
#define RS 256 /* rows per cache block (multiple of 8 * BR) */

/*
 * One micro tile: nb (<= BB) inputs starting at xb (stride xs uint32 words)
 * against nr (<= BR) 8-row groups of the panel starting at wp (stride gs
 * uint64 words between groups).  Output rows j0 .. j0 + 8 * nr - 1, masked at
 * `rows`.  nb and nr are compile-time constants at every call site.
 */
BDENSE_INLINE void avx512_tile(const uint32_t *xb, size_t xs, const uint64_t *wp, size_t gs,
                               int nq, int nb, int nr, int32_t *out, int b0, int j0, int rows,
                               int n) {
    __m512i acc[BB][BR];
#pragma GCC unroll 4
    for (int b = 0; b < BB; ++b) {
#pragma GCC unroll 4
        for (int r = 0; r < BR; ++r) {
            acc[b][r] = _mm512_setzero_si512();
        }
    }
    for (int q = 0; q < nq; ++q) {
        __m512i wv[BR];
#pragma GCC unroll 4
        for (int r = 0; r < BR; ++r) {
            if (r < nr) {
                wv[r] = _mm512_load_si512((const void *)(wp + (size_t)r * gs + (size_t)q * 8));
                /* Keep the panel word in a register: otherwise the compiler folds
                 * the load into every XOR, issuing BB times as many 512-bit loads. */
                __asm__("" : "+v"(wv[r]));
            }
        }
#pragma GCC unroll 4
        for (int b = 0; b < BB; ++b) {
            if (b < nb) {
                const __m512i xv = _mm512_set1_epi64((long long)ld64(xb + (size_t)b * xs + 2 * q));
#pragma GCC unroll 4
                for (int r = 0; r < BR; ++r) {
                    if (r < nr) {
                        acc[b][r] = _mm512_add_epi64(
                            acc[b][r], _mm512_popcnt_epi64(_mm512_xor_si512(xv, wv[r])));
                    }
                }
            }
        }
    }
    const __m512i vn = _mm512_set1_epi64((long long)n);
#pragma GCC unroll 4
    for (int b = 0; b < BB; ++b) {
        if (b < nb) {
            int32_t *ob = out + (size_t)(b0 + b) * rows;
#pragma GCC unroll 4
            for (int r = 0; r < BR; ++r) {
                if (r < nr) {
                    const int j = j0 + 8 * r;
                    const __m512i a = _mm512_sub_epi64(vn, _mm512_slli_epi64(acc[b][r], 1));
                    const __m256i a32 = _mm512_cvtepi64_epi32(a);
                    const int left = rows - j;
                    if (left >= 8) {
                        _mm256_storeu_si256((__m256i *)(ob + j), a32);
                    } else {
                        _mm256_mask_storeu_epi32(ob + j, (__mmask8)((1u << left) - 1u), a32);
                    }
                }
            }
        }
    }
}

/* Dispatch a tile with runtime nb, nr to a constant-specialised instance. */
#define BDENSE_TILE_CASE(NB, NR)                                                               \
    case (NB) * 8 + (NR):                                                                      \
        avx512_tile(xb, xs, wp, gs, nq, NB, NR, out, b0, j0, rows, n);                         \
        break;

static void avx512_tile_any(const uint32_t *xb, size_t xs, const uint64_t *wp, size_t gs,
                            int nq, int nb, int nr, int32_t *out, int b0, int j0, int rows,
                            int n) {
    switch (nb * 8 + nr) {
        BDENSE_TILE_CASE(1, 1)
        BDENSE_TILE_CASE(1, 2)
        BDENSE_TILE_CASE(1, 3)
        BDENSE_TILE_CASE(1, 4)
        BDENSE_TILE_CASE(2, 1)
        BDENSE_TILE_CASE(2, 2)
        BDENSE_TILE_CASE(2, 3)
        BDENSE_TILE_CASE(2, 4)
        BDENSE_TILE_CASE(3, 1)
        BDENSE_TILE_CASE(3, 2)
        BDENSE_TILE_CASE(3, 3)
        BDENSE_TILE_CASE(3, 4)
        BDENSE_TILE_CASE(4, 1)
        BDENSE_TILE_CASE(4, 2)
        BDENSE_TILE_CASE(4, 3)
    default:
        break;
    }
}

/*
 * Repack w (rows x words uint32) into panels [groups][nq][8] uint64: panel
 * word (g, q, r) is 64-bit word q of row 8 g + r (0 past the last row or word).
 */
static void pack_panels(const uint32_t *w, uint64_t *panel, int rows, int words, int nq,
                        int groups) {
    for (int g = 0; g < groups; ++g) {
        uint64_t *pg = panel + (size_t)g * nq * 8;
        for (int r = 0; r < 8; ++r) {
            const int j = 8 * g + r;
            if (j >= rows) {
                for (int q = 0; q < nq; ++q) {
                    pg[(size_t)q * 8 + r] = 0;
                }
                continue;
            }
            const uint32_t *wj = w + (size_t)j * words;
            for (int q = 0; q < words / 2; ++q) {
                pg[(size_t)q * 8 + r] = ld64(wj + 2 * q);
            }
            if (words & 1) {
                pg[(size_t)(nq - 1) * 8 + r] = (uint64_t)wj[words - 1];
            }
        }
    }
}

static int avx512_kernel(const uint32_t *x, const uint32_t *w, int32_t *out, int batch, int rows,
                         int words, int n, int threads) {
    const int nq = (words + 1) / 2;
    const int groups = (rows + 7) / 8;
    const size_t gs = (size_t)nq * 8;
    uint64_t *panel = NULL;
    uint32_t *xcopy = NULL;
    const size_t panel_bytes = (size_t)groups * gs * sizeof(uint64_t);
    if (posix_memalign((void **)&panel, 64, panel_bytes ? panel_bytes : 64) != 0) {
        return -2;
    }
    pack_panels(w, panel, rows, words, nq, groups);

    /* Inputs are read as 64-bit words: with an odd word count, copy them into
     * a zero-padded buffer with an even stride. */
    const uint32_t *xq = x;
    const size_t xs = (size_t)nq * 2; /* input stride in uint32 words */
    if (words & 1) {
        xcopy = (uint32_t *)malloc((size_t)batch * xs * sizeof(uint32_t));
        if (xcopy == NULL) {
            free(panel);
            return -2;
        }
        for (int b = 0; b < batch; ++b) {
            uint32_t *dst = xcopy + (size_t)b * xs;
            memcpy(dst, x + (size_t)b * words, (size_t)words * sizeof(uint32_t));
            dst[words] = 0;
        }
        xq = xcopy;
    }

    const int nbc = (batch + BC - 1) / BC;
    const int nrs = (rows + RS - 1) / RS;
    const long long nblocks = (long long)nbc * nrs;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
#else
    (void)threads;
#endif
    for (long long blk = 0; blk < nblocks; ++blk) {
        const int bc0 = (int)(blk / nrs) * BC;
        const int rs0 = (int)(blk % nrs) * RS;
        const int bc1 = bc0 + BC < batch ? bc0 + BC : batch;
        const int rs1 = rs0 + RS < rows ? rs0 + RS : rows;
        for (int j0 = rs0; j0 < rs1; j0 += 8 * BR) {
            const int nr = (rs1 - j0 + 7) / 8 < BR ? (rs1 - j0 + 7) / 8 : BR;
            const uint64_t *wp = panel + (size_t)(j0 / 8) * gs;
            int b0 = bc0;
            if (nr == BR) {
                for (; b0 + BB <= bc1; b0 += BB) {
                    avx512_tile(xq + (size_t)b0 * xs, xs, wp, gs, nq, BB, BR, out, b0, j0, rows,
                                n);
                }
            }
            for (; b0 < bc1; b0 += BB) {
                const int nb = bc1 - b0 < BB ? bc1 - b0 : BB;
                avx512_tile_any(xq + (size_t)b0 * xs, xs, wp, gs, nq, nb, nr, out, b0, j0, rows,
                                n);
            }
        }
    }
    free(xcopy);
    free(panel);
    return 0;
}

#endif /* BDENSE_AVX512 */

/* ------------------------------------------------------------------------ */
/* Public entry points                                                       */
/* ------------------------------------------------------------------------ */

int bdense_popcount_threads(const uint32_t *x, const uint32_t *w, int32_t *out, int batch,
                            int rows, int words, int n, int threads) {
    if (check_args(x, w, out, batch, rows, words, n) != 0) {
        return -1;
    }
    if (batch == 0 || rows == 0) {
        return 0;
    }
    threads = resolve_threads(threads);
    if (words == 0) {
        for (size_t i = 0; i < (size_t)batch * rows; ++i) {
            out[i] = n;
        }
        return 0;
    }
#if BDENSE_AVX512
    return avx512_kernel(x, w, out, batch, rows, words, n, threads);
#else
    portable_kernel(x, w, out, batch, rows, words, n, threads);
    return 0;
#endif
}

int bdense_popcount(const uint32_t *x, const uint32_t *w, int32_t *out, int batch, int rows,
                    int words, int n) {
    return bdense_popcount_threads(x, w, out, batch, rows, words, n, 0);
}

/* ------------------------------------------------------------------------ */
/* Popcount peak                                                             */
/* ------------------------------------------------------------------------ */

#define PEAK_UNROLL 16 /* independent popcount instructions per loop iteration */

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#if BDENSE_AVX512
#define VPOP(D) "vpopcntq %1, %%zmm" #D "\n\t"
static void vector_loop(long long iters) {
    const __m512i src = _mm512_set1_epi64(0x0123456789abcdefLL);
    __asm__ __volatile__(".p2align 5\n"
                         "1:\n\t" VPOP(0) VPOP(1) VPOP(2) VPOP(3) VPOP(4) VPOP(5) VPOP(6) VPOP(7)
                             VPOP(8) VPOP(9) VPOP(10) VPOP(11) VPOP(12) VPOP(13) VPOP(14)
                                 VPOP(15) "sub $1, %0\n\t"
                                          "jnz 1b\n\t"
                         : "+r"(iters)
                         : "v"(src)
                         : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                           "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
                           "cc");
}
#undef VPOP
#endif

#if defined(__x86_64__) && defined(__POPCNT__)
#define SPOP(D) "popcnt %1, %%" #D "\n\t"
static void scalar_loop(long long iters) {
    const unsigned long long src = 0x0123456789abcdefULL;
    __asm__ __volatile__(".p2align 5\n"
                         "1:\n\t" SPOP(r8) SPOP(r9) SPOP(r10) SPOP(r11) SPOP(r12) SPOP(r13)
                             SPOP(r14) SPOP(r15) SPOP(r8) SPOP(r9) SPOP(r10) SPOP(r11) SPOP(r12)
                                 SPOP(r13) SPOP(r14) SPOP(r15) "sub $1, %0\n\t"
                                                               "jnz 1b\n\t"
                         : "+r"(iters)
                         : "r"(src)
                         : "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "cc");
}
#undef SPOP
#else
static void scalar_loop(long long iters) {
    volatile uint64_t sink = 0;
    uint64_t s[PEAK_UNROLL];
    for (int i = 0; i < PEAK_UNROLL; ++i) {
        s[i] = 0x0123456789abcdefULL + (uint64_t)i;
    }
    uint64_t acc = 0;
    for (long long it = 0; it < iters; ++it) {
        for (int i = 0; i < PEAK_UNROLL; ++i) {
            acc += (uint64_t)__builtin_popcountll(s[i] ^ (uint64_t)it);
        }
    }
    sink = acc;
    (void)sink;
}
#endif

static double run_peak(void (*loop)(long long), int bits, int threads, long long iters) {
    threads = resolve_threads(threads);
    if (iters <= 0) {
        iters = 1;
    }
    loop(iters / 8 + 1); /* warm up clocks and the instruction cache */
    const double t0 = now_seconds();
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    loop(iters);
    const double dt = now_seconds() - t0;
    const double ops = (double)threads * (double)iters * PEAK_UNROLL * (double)bits;
    return dt > 0.0 ? ops / dt : 0.0;
}

double bdense_peak_vector(int threads, long long iters) {
#if BDENSE_AVX512
    return run_peak(vector_loop, 512, threads, iters);
#else
    (void)threads;
    (void)iters;
    return 0.0;
#endif
}

double bdense_peak_scalar(int threads, long long iters) {
    return run_peak(scalar_loop, 64, threads, iters);
}
