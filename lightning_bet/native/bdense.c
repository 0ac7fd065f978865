/*
 * Host binary dense (XOR/popcount) kernel.  See bdense.h for the contract.
 *
 * Two code paths, chosen at compile time:
 *
 *   AVX512-VPOPCNTDQ (when __AVX512F__ and __AVX512VPOPCNTDQ__ are defined,
 *   e.g. -march=native on a CPU that has them).  The weights are repacked into
 *   panels that interleave 8 rows per 64-bit word, so one zmm register holds
 *   the same 64-bit word of 8 different rows.  A 64-bit word of an input is
 *   broadcast to all 8 lanes, XOR'd with the panel word, VPOPCNTQ'd and added
 *   to a zmm accumulator whose 8 lanes are 8 output rows.  A micro tile of
 *   BB inputs x BR zmm (8 BR rows) keeps BB * BR accumulators in registers,
 *   loads each panel zmm once per BB inputs and needs no horizontal reduction.
 *   Per 512 bits the inner loop issues XOR + VPOPCNTQ + ADD, three 512-bit
 *   vector ops; on CPUs that issue at most two 512-bit integer ops per cycle
 *   and one VPOPCNTQ per cycle (e.g. AMD Zen 4) this bounds the kernel at 2/3
 *   of the pure VPOPCNTQ peak.
 *
 *   Portable: __builtin_popcountll on 64-bit words with a small register tile.
 *
 * Work is split into (batch block x row block) pieces that POSIX threads take
 * from a shared atomic counter; with one thread no thread is created.
 *
 * The library also holds the fault-map sampler (bdense_bernoulli_positions), whose
 * segments threads take the same way.
 */
#define _POSIX_C_SOURCE 200809L

#include "bdense.h"

#include <pthread.h>
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
#include <immintrin.h>
#define BDENSE_AVX512 1
#else
#define BDENSE_AVX512 0
#endif

#define BDENSE_INLINE static inline __attribute__((always_inline))
#define BDENSE_MAX_THREADS 256

/* Unaligned, aliasing-safe 64-bit load of two uint32 words (x and w are loaded
 * alike, so the popcount of their XOR does not depend on the byte order). */
BDENSE_INLINE uint64_t ld64(const uint32_t *p) {
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

int bdense_online_cpus(void) {
    const long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c < 1 ? 1 : (c > BDENSE_MAX_THREADS ? BDENSE_MAX_THREADS : (int)c);
}

int bdense_has_avx512(void) { return BDENSE_AVX512; }

static int resolve_threads(int threads) {
    if (threads <= 0) {
        return bdense_online_cpus();
    }
    return threads > BDENSE_MAX_THREADS ? BDENSE_MAX_THREADS : threads;
}

/* Worker threads for a popcount of batch x rows x words: starting a thread costs tens of
 * microseconds, the time of ~10^7 binary MACs, so small calls run on the calling thread. */
static int popcount_threads(int threads, int batch, int rows, int words) {
    return (long long)batch * rows * words < (1LL << 20) ? 1 : resolve_threads(threads);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Threads                                                                   */
/* ------------------------------------------------------------------------ */

typedef void (*work_fn)(void *ctx, int tid);

struct thread_arg {
    work_fn fn;
    void *ctx;
    int tid;
};

static void *thread_main(void *p) {
    const struct thread_arg *a = (const struct thread_arg *)p;
    a->fn(a->ctx, a->tid);
    return NULL;
}

/*
 * Run fn(ctx, tid) on `threads` threads, the calling thread being tid 0.
 * Returns the number of threads that ran (fewer than asked when a thread
 * cannot be created; callers whose work is shared dynamically still finish).
 */
static int run_threads(work_fn fn, void *ctx, int threads) {
    pthread_t handles[BDENSE_MAX_THREADS];
    struct thread_arg args[BDENSE_MAX_THREADS];
    int started = 1;
    for (int t = 1; t < threads; ++t) {
        args[t].fn = fn;
        args[t].ctx = ctx;
        args[t].tid = t;
        if (pthread_create(&handles[t], NULL, thread_main, &args[t]) != 0) {
            break;
        }
        ++started;
    }
    fn(ctx, 0);
    for (int t = 1; t < started; ++t) {
        pthread_join(handles[t], NULL);
    }
    return started;
}

/* ------------------------------------------------------------------------ */
/* Argument checks and reference                                             */
/* ------------------------------------------------------------------------ */

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

/* Shared description of one kernel call, handed to every worker thread. */
struct job {
    const uint32_t *x;     /* inputs (AVX-512 path: even stride xs) */
    size_t xs;             /* input stride in uint32 words */
    const uint32_t *w;     /* weights, row-major (portable path) */
    const uint64_t *panel; /* repacked weights (AVX-512 path) */
    size_t gs;             /* panel stride between 8-row groups, in uint64 */
    int32_t *out;
    const int64_t *thr; /* thresholds padded with INT64_MIN (AVX-512 sign path), or NULL */
    uint32_t *bits;     /* packed output signs (sign path), or NULL: int32 `out` */
    int out_words;      /* words per row of `bits` */
    int batch, rows, words, n, nq;
    int bblock, rblock; /* batch and row block sizes */
    int nbb;            /* batch blocks; block i covers batch block i % nbb of
                         * row block i / nbb, so consecutive blocks share weights */
    long long nblocks;
    long long next; /* next block to take (atomic) */
};

/* The next piece of shared work: a relaxed atomic fetch-and-increment of *next. */
static long long take_next(long long *next) {
    return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
}

static long long take_block(struct job *job) { return take_next(&job->next); }

/* ------------------------------------------------------------------------ */
/* Portable tiled kernel                                                     */
/* ------------------------------------------------------------------------ */

#if !BDENSE_AVX512

#define PB 4   /* inputs per portable micro tile */
#define PR 2   /* rows per portable micro tile */
#define PBC 32 /* inputs per portable block */
#define PRS 64 /* rows per portable block */

static void portable_tile(const struct job *job, int b0, int j0, int nb, int nr) {
    const int words = job->words;
    const int nq = words / 2;
    uint64_t acc[PB][PR] = {{0}};
    const uint32_t *xp[PB];
    const uint32_t *wp[PR];
    for (int b = 0; b < PB; ++b) {
        xp[b] = job->x + (size_t)(b0 + (b < nb ? b : 0)) * job->xs;
    }
    for (int r = 0; r < PR; ++r) {
        wp[r] = job->w + (size_t)(j0 + (r < nr ? r : 0)) * words;
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
        int32_t *ob = job->out + (size_t)(b0 + b) * job->rows;
        for (int r = 0; r < nr; ++r) {
            ob[j0 + r] = (int32_t)(job->n - 2 * (long long)acc[b][r]);
        }
    }
}

static void portable_worker(void *ctx, int tid) {
    struct job *job = (struct job *)ctx;
    (void)tid;
    for (long long blk = take_block(job); blk < job->nblocks; blk = take_block(job)) {
        const int bb0 = (int)(blk % job->nbb) * job->bblock;
        const int rb0 = (int)(blk / job->nbb) * job->rblock;
        const int bb1 = bb0 + job->bblock < job->batch ? bb0 + job->bblock : job->batch;
        const int rb1 = rb0 + job->rblock < job->rows ? rb0 + job->rblock : job->rows;
        for (int j0 = rb0; j0 < rb1; j0 += PR) {
            const int nr = rb1 - j0 < PR ? rb1 - j0 : PR;
            for (int b0 = bb0; b0 < bb1; b0 += PB) {
                portable_tile(job, b0, j0, bb1 - b0 < PB ? bb1 - b0 : PB, nr);
            }
        }
    }
}

#endif /* !BDENSE_AVX512 */

/* ------------------------------------------------------------------------ */
/* AVX512-VPOPCNTDQ kernel                                                   */
/* ------------------------------------------------------------------------ */

#if BDENSE_AVX512

#define BB 4   /* inputs per micro tile */
#define BR 4   /* zmm (8 rows each) per micro tile: 32 rows */
#define BC 64  /* inputs per block (x block of BC * words * 4 bytes) */
#define RS 256 /* rows per block (multiple of 8 * BR) */

/*
 * One micro tile: nb (<= BB) inputs starting at xb (stride xs uint32 words)
 * against nr (<= BR) 8-row groups of the panel starting at wp (stride gs
 * uint64 words between groups).  Writes output rows j0 .. j0 + 8 nr - 1,
 * masked at `rows`.  nb and nr are compile-time constants at every call site.
 */
BDENSE_INLINE void avx512_tile(const uint32_t *xb, size_t xs, const uint64_t *wp, size_t gs,
                               int nq, int nb, int nr, const struct job *job, int b0, int j0) {
    int32_t *out = job->out;
    const int rows = job->rows;
    const int n = job->n;
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
                /* Keep the panel word in a register: otherwise the compiler may fold
                 * the load into every XOR, issuing BB times as many 512-bit loads. */
                __asm__("" : "+v"(wv[r]));
            }
        }
#pragma GCC unroll 4
        for (int b = 0; b < BB; ++b) {
            if (b < nb) {
                const __m512i xv =
                    _mm512_set1_epi64((long long)ld64(xb + (size_t)b * xs + 2 * (size_t)q));
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
    if (job->bits != NULL) {
        /* j0 is a multiple of 32 and this tile holds rows j0 .. j0 + 31: it alone writes
         * word j0 / 32 of each of its inputs (rows past `rows` meet INT64_MIN: bit 0). */
#pragma GCC unroll 4
        for (int b = 0; b < BB; ++b) {
            if (b < nb) {
                uint32_t word = 0;
#pragma GCC unroll 4
                for (int r = 0; r < BR; ++r) {
                    if (r < nr) {
                        const __m512i a = _mm512_sub_epi64(vn, _mm512_slli_epi64(acc[b][r], 1));
                        const __m512i t =
                            _mm512_loadu_si512((const void *)(job->thr + j0 + 8 * r));
                        word |= (uint32_t)_mm512_cmplt_epi64_mask(a, t) << (8 * r);
                    }
                }
                job->bits[(size_t)(b0 + b) * job->out_words + (size_t)(j0 / 32)] = word;
            }
        }
        return;
    }
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
                        _mm256_storeu_si256((__m256i *)(void *)(ob + j), a32);
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
        avx512_tile(xb, xs, wp, gs, nq, NB, NR, job, b0, j0);                                  \
        break;

static void avx512_tile_any(const uint32_t *xb, size_t xs, const uint64_t *wp, size_t gs,
                            int nq, int nb, int nr, const struct job *job, int b0, int j0) {
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
        BDENSE_TILE_CASE(4, 4)
    default:
        break;
    }
}

/*
 * Repack w (rows x words uint32) into panels [groups][nq][8] uint64: panel
 * word (g, q, i) is 64-bit word q of row 8 g + i (0 past the last row or word).
 */
static void pack_panels(const uint32_t *w, uint64_t *panel, int rows, int words, int nq,
                        int groups) {
    for (int g = 0; g < groups; ++g) {
        uint64_t *pg = panel + (size_t)g * nq * 8;
        for (int i = 0; i < 8; ++i) {
            const int j = 8 * g + i;
            if (j >= rows) {
                for (int q = 0; q < nq; ++q) {
                    pg[(size_t)q * 8 + i] = 0;
                }
                continue;
            }
            const uint32_t *wj = w + (size_t)j * words;
            for (int q = 0; q < words / 2; ++q) {
                pg[(size_t)q * 8 + i] = ld64(wj + 2 * q);
            }
            if (words & 1) {
                pg[(size_t)(nq - 1) * 8 + i] = (uint64_t)wj[words - 1];
            }
        }
    }
}

static void avx512_worker(void *ctx, int tid) {
    struct job *job = (struct job *)ctx;
    (void)tid;
    const size_t xs = job->xs;
    const size_t gs = job->gs;
    for (long long blk = take_block(job); blk < job->nblocks; blk = take_block(job)) {
        const int bc0 = (int)(blk % job->nbb) * BC;
        const int rs0 = (int)(blk / job->nbb) * RS;
        const int bc1 = bc0 + BC < job->batch ? bc0 + BC : job->batch;
        const int rs1 = rs0 + RS < job->rows ? rs0 + RS : job->rows;
        for (int j0 = rs0; j0 < rs1; j0 += 8 * BR) {
            const int ng = (rs1 - j0 + 7) / 8;
            const int nr = ng < BR ? ng : BR;
            const uint64_t *wp = job->panel + (size_t)(j0 / 8) * gs;
            int b0 = bc0;
            if (nr == BR) {
                for (; b0 + BB <= bc1; b0 += BB) {
                    avx512_tile(job->x + (size_t)b0 * xs, xs, wp, gs, job->nq, BB, BR, job, b0,
                                j0);
                }
            }
            for (; b0 < bc1; b0 += BB) {
                const int nb = bc1 - b0 < BB ? bc1 - b0 : BB;
                avx512_tile_any(job->x + (size_t)b0 * xs, xs, wp, gs, job->nq, nb, nr, job, b0,
                                j0);
            }
        }
    }
}

/* out (int32 pre-activations) when t == NULL, else bits (packed signs of a < t). */
static int avx512_kernel(const uint32_t *x, const uint32_t *w, int32_t *out, const int32_t *t,
                         uint32_t *bits, int batch, int rows, int words, int n, int threads) {
    struct job job;
    memset(&job, 0, sizeof(job));
    const int nq = (words + 1) / 2;
    const int groups = (rows + 7) / 8;
    const size_t gs = (size_t)nq * 8;
    uint64_t *panel = NULL;
    uint32_t *xcopy = NULL;
    int64_t *thr = NULL;
    if (t != NULL) {
        /* one 32-row tile may read up to 4 groups past the last row */
        const size_t padded = (size_t)groups * 8 + 32;
        thr = (int64_t *)malloc(padded * sizeof(int64_t));
        if (thr == NULL) {
            return -2;
        }
        for (size_t j = 0; j < padded; ++j) {
            thr[j] = j < (size_t)rows ? (int64_t)t[j] : INT64_MIN;
        }
    }
    if (posix_memalign((void **)&panel, 64, (size_t)groups * gs * sizeof(uint64_t)) != 0) {
        free(thr);
        return -2;
    }
    pack_panels(w, panel, rows, words, nq, groups);

    /* Inputs are read as 64-bit words: with an odd word count, copy them into
     * a zero-padded buffer with an even stride. */
    job.x = x;
    job.xs = (size_t)nq * 2;
    if (words & 1) {
        xcopy = (uint32_t *)malloc((size_t)batch * job.xs * sizeof(uint32_t));
        if (xcopy == NULL) {
            free(thr);
            free(panel);
            return -2;
        }
        for (int b = 0; b < batch; ++b) {
            uint32_t *dst = xcopy + (size_t)b * job.xs;
            memcpy(dst, x + (size_t)b * words, (size_t)words * sizeof(uint32_t));
            dst[words] = 0;
        }
        job.x = xcopy;
    }
    job.panel = panel;
    job.gs = gs;
    job.out = out;
    job.thr = thr;
    job.bits = t != NULL ? bits : NULL;
    job.out_words = (rows + 31) / 32;
    job.batch = batch;
    job.rows = rows;
    job.words = words;
    job.n = n;
    job.nq = nq;
    job.bblock = BC;
    job.rblock = RS;
    job.nbb = (batch + BC - 1) / BC;
    job.nblocks = (long long)job.nbb * ((rows + RS - 1) / RS);
    run_threads(avx512_worker, &job, job.nblocks < threads ? (int)job.nblocks : threads);
    free(xcopy);
    free(panel);
    free(thr);
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
    if (words == 0) {
        for (size_t i = 0; i < (size_t)batch * rows; ++i) {
            out[i] = n;
        }
        return 0;
    }
    threads = popcount_threads(threads, batch, rows, words);
#if BDENSE_AVX512
    return avx512_kernel(x, w, out, NULL, NULL, batch, rows, words, n, threads);
#else
    struct job job;
    memset(&job, 0, sizeof(job));
    job.x = x;
    job.xs = (size_t)words;
    job.w = w;
    job.out = out;
    job.batch = batch;
    job.rows = rows;
    job.words = words;
    job.n = n;
    job.bblock = PBC;
    job.rblock = PRS;
    job.nbb = (batch + PBC - 1) / PBC;
    job.nblocks = (long long)job.nbb * ((rows + PRS - 1) / PRS);
    run_threads(portable_worker, &job, job.nblocks < threads ? (int)job.nblocks : threads);
    return 0;
#endif
}

int bdense_popcount(const uint32_t *x, const uint32_t *w, int32_t *out, int batch, int rows,
                    int words, int n) {
    return bdense_popcount_threads(x, w, out, batch, rows, words, n, 1);
}

/* ------------------------------------------------------------------------ */
/* Packed signs of thresholded pre-activations                               */
/* ------------------------------------------------------------------------ */

struct sign_job {
    const int32_t *a;
    const int32_t *t;
    uint32_t *bits;
    int batch, rows, words, threads;
};

static void sign_pack_worker(void *ctx, int tid) {
    const struct sign_job *job = (const struct sign_job *)ctx;
    const int chunk = (job->batch + job->threads - 1) / job->threads;
    const int b0 = tid * chunk;
    const int b1 = b0 + chunk < job->batch ? b0 + chunk : job->batch;
    const int32_t *t = job->t;
    for (int b = b0; b < b1; ++b) {
        const int32_t *ab = job->a + (size_t)b * job->rows;
        uint32_t *ob = job->bits + (size_t)b * job->words;
        for (int k = 0; k < job->words; ++k) {
            const int j0 = 32 * k;
            const int jn = job->rows - j0 < 32 ? job->rows - j0 : 32;
#if BDENSE_AVX512
            if (jn == 32) {
                const __mmask16 lo = _mm512_cmplt_epi32_mask(
                    _mm512_loadu_si512((const void *)(ab + j0)),
                    _mm512_loadu_si512((const void *)(t + j0)));
                const __mmask16 hi = _mm512_cmplt_epi32_mask(
                    _mm512_loadu_si512((const void *)(ab + j0 + 16)),
                    _mm512_loadu_si512((const void *)(t + j0 + 16)));
                ob[k] = (uint32_t)lo | ((uint32_t)hi << 16);
                continue;
            }
#endif
            uint32_t word = 0;
            for (int i = 0; i < jn; ++i) {
                word |= (uint32_t)(ab[j0 + i] < t[j0 + i]) << i;
            }
            ob[k] = word;
        }
    }
}

int bdense_sign_pack_threads(const int32_t *a, const int32_t *t, uint32_t *bits, int batch,
                             int rows, int threads) {
    if (batch < 0 || rows < 0 || (batch > 0 && rows > 0 && (a == NULL || bits == NULL)) ||
        (rows > 0 && t == NULL)) {
        return -1;
    }
    if (batch == 0 || rows == 0) {
        return 0;
    }
    struct sign_job job = {a, t, bits, batch, rows, (rows + 31) / 32, resolve_threads(threads)};
    if ((long long)batch * rows < (1LL << 18)) {
        job.threads = 1; /* a thread start costs more than this pass */
    }
    if (job.threads > batch) {
        job.threads = batch;
    }
    run_threads(sign_pack_worker, &job, job.threads);
    return 0;
}

int bdense_popcount_sign_threads(const uint32_t *x, const uint32_t *w, const int32_t *t,
                                 uint32_t *bits, int batch, int rows, int words, int n,
                                 int threads) {
    if (check_args(x, w, (const int32_t *)(const void *)bits, batch, rows, words, n) != 0 ||
        (rows > 0 && t == NULL)) {
        return -1;
    }
    if (batch == 0 || rows == 0) {
        return 0;
    }
#if BDENSE_AVX512
    if (words > 0) {
        return avx512_kernel(x, w, NULL, t, bits, batch, rows, words, n,
                             popcount_threads(threads, batch, rows, words));
    }
#endif
    int32_t *a = (int32_t *)malloc((size_t)batch * rows * sizeof(int32_t));
    if (a == NULL) {
        return -2;
    }
    int rc = bdense_popcount_threads(x, w, a, batch, rows, words, n, threads);
    if (rc == 0) {
        rc = bdense_sign_pack_threads(a, t, bits, batch, rows, threads);
    }
    free(a);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Bernoulli positions (fault maps)                                          */
/* ------------------------------------------------------------------------ */

#define BERN_GAMMA 0x9e3779b97f4a7c15ULL

/* SplitMix64's output function. */
BDENSE_INLINE uint64_t splitmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

struct bern_job {
    uint64_t seed;
    long long numel, segment;
    const uint64_t *t;
    int k;
    const uint32_t *guide;
    int shift;
    long long *out, slot, *counts;
    long long nseg;
    long long next; /* next segment to take (atomic) */
};

/* Positions of segment s: draw j = 1, 2, ... is x = splitmix64(key + j * gamma); its gap G
 * counts the thresholds above x (t[i] = t_{i+1}); G = k (all of them) skips k positions and
 * draws again. Writes at most job->slot positions, counts them all. */
static void bern_segment(const struct bern_job *job, long long s) {
    const uint64_t key = splitmix64(job->seed + (uint64_t)(s + 1) * BERN_GAMMA);
    const long long begin = s * job->segment;
    const long long end = begin + job->segment < job->numel ? begin + job->segment : job->numel;
    const uint64_t *t = job->t;
    const int k = job->k;
    long long *out = job->out + s * job->slot;
    long long pos = begin - 1, count = 0;
    uint64_t ctr = key;
    for (;;) {
        ctr += BERN_GAMMA;
        const uint64_t x = splitmix64(ctr);
        int g = (int)job->guide[x >> job->shift];
        while (g < k && x < t[g]) {
            ++g;
        }
        if (g == k) {
            pos += k;
            if (pos >= end - 1) {
                break;
            }
            continue;
        }
        pos += g + 1;
        if (pos >= end) {
            break;
        }
        if (count < job->slot) {
            out[count] = pos;
        }
        ++count;
    }
    job->counts[s] = count;
}

static void bern_worker(void *ctx, int tid) {
    (void)tid;
    struct bern_job *job = (struct bern_job *)ctx;
    for (;;) {
        const long long s = take_next(&job->next);
        if (s >= job->nseg) {
            return;
        }
        bern_segment(job, s);
    }
}

long long bdense_bernoulli_positions(uint64_t seed, long long numel, long long segment,
                                     const uint64_t *t, int k, const uint32_t *guide,
                                     int guide_bits, long long *out, long long slot,
                                     long long *counts, int threads) {
    if (numel < 0 || segment < 1 || t == NULL || k < 1 || guide == NULL || guide_bits < 1 ||
        guide_bits > 24 || slot < 0 || (numel > 0 && (out == NULL || counts == NULL))) {
        return -1;
    }
    const long long nseg = (numel + segment - 1) / segment;
    struct bern_job job = {seed, numel, segment, t, k, guide, 64 - guide_bits,
                           out, slot, counts, nseg, 0};
    int nthreads = resolve_threads(threads);
    if (numel < 4 * segment) {
        nthreads = 1; /* a thread start costs more than a few segments */
    }
    if (nthreads > nseg) {
        nthreads = (int)nseg;
    }
    run_threads(bern_worker, &job, nthreads < 1 ? 1 : nthreads);
    long long total = 0, largest = 0;
    for (long long s = 0; s < nseg; ++s) {
        total += counts[s];
        largest = counts[s] > largest ? counts[s] : largest;
    }
    if (largest > slot) {
        return -2 - largest; /* a slot overflowed: call again with slot >= largest */
    }
    long long at = 0; /* pack the slots to the front, in order */
    for (long long s = 0; s < nseg; ++s) {
        if (at != s * slot && counts[s] > 0) {
            memmove(out + at, out + s * slot, (size_t)counts[s] * sizeof(long long));
        }
        at += counts[s];
    }
    return total;
}

/* ------------------------------------------------------------------------ */
/* Popcount peak                                                             */
/* ------------------------------------------------------------------------ */

#define PEAK_UNROLL 16 /* independent popcount instructions per loop iteration */

#if BDENSE_AVX512
#define VPOP(D) "vpopcntq %1, %%zmm" #D "\n\t"
/* 16 independent VPOPCNTQ per iteration: no loads, no dependency chains. */
static void vector_loop(long long iters) {
    const __m512i src = _mm512_set1_epi64(0x0123456789abcdefLL);
    __asm__ __volatile__(".p2align 5\n"
                         "1:\n\t" VPOP(0) VPOP(1) VPOP(2) VPOP(3) VPOP(4) VPOP(5) VPOP(6)
                             VPOP(7) VPOP(8) VPOP(9) VPOP(10) VPOP(11) VPOP(12) VPOP(13)
                                 VPOP(14) VPOP(15) "sub $1, %0\n\t"
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
/* 16 POPCNT per iteration into 8 destinations (no dependency chains). */
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
/* Portable stand-in: 16 independent __builtin_popcountll per iteration. */
static void scalar_loop(long long iters) {
    uint64_t acc[PEAK_UNROLL] = {0};
    uint64_t v = 0x0123456789abcdefULL;
    for (long long it = 0; it < iters; ++it) {
        for (int i = 0; i < PEAK_UNROLL; ++i) {
            acc[i] += (uint64_t)__builtin_popcountll(v + (uint64_t)i);
        }
        __asm__ __volatile__("" : "+r"(v));
    }
    uint64_t s = 0;
    for (int i = 0; i < PEAK_UNROLL; ++i) {
        s += acc[i];
    }
    __asm__ __volatile__("" : : "r"(s));
}
#endif

struct peak_job {
    void (*loop)(long long);
    long long iters;
    int ready; /* threads waiting at the start line (atomic) */
    int go;    /* start flag (atomic) */
};

static void peak_worker(void *ctx, int tid) {
    struct peak_job *job = (struct peak_job *)ctx;
    if (tid != 0) {
        __atomic_fetch_add(&job->ready, 1, __ATOMIC_ACQ_REL);
        while (!__atomic_load_n(&job->go, __ATOMIC_ACQUIRE)) {
        }
        job->loop(job->iters);
    }
}

static double run_peak(void (*loop)(long long), int bits, int threads, long long iters) {
    threads = resolve_threads(threads);
    if (iters <= 0) {
        iters = 1;
    }
    struct peak_job job = {loop, iters, 0, 0};
    pthread_t handles[BDENSE_MAX_THREADS];
    struct thread_arg args[BDENSE_MAX_THREADS];
    int started = 1;
    for (int t = 1; t < threads; ++t) {
        args[t].fn = peak_worker;
        args[t].ctx = &job;
        args[t].tid = t;
        if (pthread_create(&handles[t], NULL, thread_main, &args[t]) != 0) {
            break;
        }
        ++started;
    }
    while (__atomic_load_n(&job.ready, __ATOMIC_ACQUIRE) < started - 1) {
    }
    const double t0 = now_seconds();
    __atomic_store_n(&job.go, 1, __ATOMIC_RELEASE);
    loop(iters);
    for (int t = 1; t < started; ++t) {
        pthread_join(handles[t], NULL);
    }
    const double dt = now_seconds() - t0;
    if (started != threads) {
        return -1.0;
    }
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

/* ------------------------------------------------------------------------ */
/* Thread runner shared with bconv.c                                         */
/* ------------------------------------------------------------------------ */

int bdense_run_threads(void (*fn)(void *ctx, int tid), void *ctx, int threads) {
    return run_threads(fn, ctx, resolve_threads(threads));
}
