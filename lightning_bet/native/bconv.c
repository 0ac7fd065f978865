/*
 * Host binary convolution kernels.  See bconv.h for the contract.
 *
 * Each thread takes blocks of samples from a shared atomic counter and, per sample, walks
 * the pooled output positions; for every position of a pool window it sums the valid kernel
 * taps (taps over zero padding are skipped: they contribute 0) for all output channels at
 * once, keeps the running maximum per channel and finally compares it with the thresholds.
 * The per-channel loops run over contiguous arrays laid out [tap][word][cout] (binary inputs)
 * or [tap][cin][cout] (integer inputs, +-1 weights applied as sign masks), which the compiler
 * vectorises (VPOPCNTQ with -march=native on CPUs that have AVX512-VPOPCNTDQ).
 */
#define _POSIX_C_SOURCE 200809L

#include "bconv.h"
#include "bdense.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BCONV_BLOCK 8 /* samples per work item */

struct conv_job {
    const uint64_t *x;  /* binary input maps, or NULL */
    const int16_t *q;   /* integer input maps (batch, cin, h, w), or NULL */
    const uint64_t *wb; /* binary kernels [k*k][nq][cout] */
    const int32_t *wi;  /* integer kernels as masks (0: +1, -1: -1), [k*k][cin][cout] */
    const int32_t *t;
    const int8_t *d;
    const int64_t *dt; /* d * t per computed channel */
    const int32_t *cidx;  /* output channel of each computed channel, or NULL: c itself */
    const uint64_t *base; /* output bits of the channels not computed, or NULL: none */
    uint64_t *bits;
    int batch, cin, h, wd, cout, k, stride, pad, pool, nq, oq, ho, wo;
    void *scratch;  /* per thread: scratch_bytes of work space */
    size_t scratch_bytes;
    long long next; /* next sample block (atomic) */
};


static int check_geometry(int batch, int cin, int h, int wd, int cout, int k, int stride,
                          int pad, int pool) {
    if (batch < 0 || cin < 1 || h < 1 || wd < 1 || cout < 1 || k < 1 || stride < 1 ||
        pad < 0 || pool < 1) {
        return -1;
    }
    const int hc = (h + 2 * pad - k) / stride + 1;
    const int wc = (wd + 2 * pad - k) / stride + 1;
    if (h + 2 * pad < k || wd + 2 * pad < k || hc % pool != 0 || wc % pool != 0) {
        return -1;
    }
    return 0;
}

/* Pre-activations of all channels at conv output position (oy, ox) of one sample into a. */
static void conv_at(const struct conv_job *job, int n, int oy, int ox, int64_t *acc,
                    int32_t *a) {
    const int cout = job->cout, k = job->k;
    const int iy0 = oy * job->stride - job->pad, ix0 = ox * job->stride - job->pad;
    const int ky0 = iy0 < 0 ? -iy0 : 0, kx0 = ix0 < 0 ? -ix0 : 0;
    const int ky1 = iy0 + k > job->h ? job->h - iy0 : k;
    const int kx1 = ix0 + k > job->wd ? job->wd - ix0 : k;
    if (job->x != NULL) {
        const int nq = job->nq;
        for (int c = 0; c < cout; ++c) {
            acc[c] = 0;
        }
        for (int ky = ky0; ky < ky1; ++ky) {
            for (int kx = kx0; kx < kx1; ++kx) {
                const uint64_t *xp =
                    job->x + (((size_t)n * job->h + (iy0 + ky)) * job->wd + (ix0 + kx)) * nq;
                const uint64_t *wp = job->wb + (size_t)(ky * k + kx) * nq * cout;
                for (int j = 0; j < nq; ++j) {
                    const uint64_t xv = xp[j];
                    const uint64_t *wq = wp + (size_t)j * cout;
                    for (int c = 0; c < cout; ++c) {
                        acc[c] += (int64_t)__builtin_popcountll(xv ^ wq[c]);
                    }
                }
            }
        }
        const int32_t valid = (int32_t)((ky1 - ky0) * (kx1 - kx0) * job->cin);
        for (int c = 0; c < cout; ++c) {
            a[c] = valid - 2 * (int32_t)acc[c];
        }
        return;
    }
    const int cin = job->cin;
    const size_t plane = (size_t)job->h * job->wd;
    for (int c = 0; c < cout; ++c) {
        a[c] = 0;
    }
    for (int ky = ky0; ky < ky1; ++ky) {
        for (int kx = kx0; kx < kx1; ++kx) {
            const int16_t *qp = job->q + (size_t)n * cin * plane +
                                (size_t)(iy0 + ky) * job->wd + (size_t)(ix0 + kx);
            const int32_t *wp = job->wi + (size_t)(ky * k + kx) * cin * cout;
            for (int i = 0; i < cin; ++i) {
                /* +-1 weights as masks m = 0 / -1: w q = (q ^ m) - m, no multiply */
                const int32_t v = qp[(size_t)i * plane];
                const int32_t *wq = wp + (size_t)i * cout;
                for (int c = 0; c < cout; ++c) {
                    a[c] += (v ^ wq[c]) - wq[c];
                }
            }
        }
    }
}

/* Output words of sample n at pooled position (py, px) from the pooled pre-activations. */
static void put_bits(const struct conv_job *job, int n, int py, int px, const int32_t *best) {
    const size_t at = (((size_t)n * job->ho + py) * job->wo + px) * job->oq;
    uint64_t *out = job->bits + at;
    const int8_t *d = job->d;
    const int64_t *dt = job->dt;
    if (job->cidx == NULL) { /* every channel: whole words, the compare loop vectorises */
        for (int w0 = 0; w0 < job->cout; w0 += 64) {
            const int m = job->cout - w0 < 64 ? job->cout - w0 : 64;
            uint64_t word = 0;
            for (int c = 0; c < m; ++c) { /* negative iff d best < d t */
                word |= (uint64_t)((int64_t)d[w0 + c] * best[w0 + c] < dt[w0 + c]) << c;
            }
            out[w0 >> 6] = word;
        }
        return;
    }
    memcpy(out, job->base + at, (size_t)job->oq * sizeof(uint64_t));
    for (int c = 0; c < job->cout; ++c) {
        const uint64_t negative = (int64_t)d[c] * best[c] < dt[c];
        const int o = job->cidx[c];
        const uint64_t bit = (uint64_t)1 << (o & 63);
        out[o >> 6] = (out[o >> 6] & ~bit) | (negative << (o & 63));
    }
}

static void conv_worker(void *ctx, int tid) {
    struct conv_job *job = (struct conv_job *)ctx;
    const int cout = job->cout, pool = job->pool;
    char *scratch = (char *)job->scratch + (size_t)tid * job->scratch_bytes;
    int64_t *acc = (int64_t *)(void *)scratch;
    int32_t *a = (int32_t *)(acc + cout);
    int32_t *best = a + cout;
    for (;;) {
        const long long blk = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        const long long n0 = blk * BCONV_BLOCK;
        if (n0 >= job->batch) {
            break;
        }
        const int n1 = n0 + BCONV_BLOCK < job->batch ? (int)n0 + BCONV_BLOCK : job->batch;
        for (int n = (int)n0; n < n1; ++n) {
            for (int py = 0; py < job->ho; ++py) {
                for (int px = 0; px < job->wo; ++px) {
                    for (int c = 0; c < cout; ++c) {
                        best[c] = INT32_MIN;
                    }
                    for (int dy = 0; dy < pool; ++dy) {
                        for (int dx = 0; dx < pool; ++dx) {
                            conv_at(job, n, py * pool + dy, px * pool + dx, acc, a);
                            for (int c = 0; c < cout; ++c) {
                                best[c] = a[c] > best[c] ? a[c] : best[c];
                            }
                        }
                    }
                    put_bits(job, n, py, px, best);
                }
            }
        }
    }
}

static int run_conv(struct conv_job *job, int cout_total, int threads) {
    const int hc = (job->h + 2 * job->pad - job->k) / job->stride + 1;
    const int wc = (job->wd + 2 * job->pad - job->k) / job->stride + 1;
    job->ho = hc / job->pool;
    job->wo = wc / job->pool;
    job->oq = (cout_total + 63) / 64;
    job->next = 0;
    if (job->batch == 0) {
        return 0;
    }
    const long long blocks = (job->batch + BCONV_BLOCK - 1) / BCONV_BLOCK;
    /* a thread start costs tens of microseconds: small calls stay on the calling thread */
    const long long work = (long long)job->batch * hc * wc * job->k * job->k * job->cout *
                           (job->x != NULL ? job->nq : job->cin);
    if (threads <= 0) {
        threads = bdense_online_cpus();
    }
    if (work < (1LL << 20)) {
        threads = 1;
    }
    if (threads > blocks) {
        threads = (int)blocks;
    }
    job->scratch_bytes = (size_t)job->cout * (sizeof(int64_t) + 2 * sizeof(int32_t));
    job->scratch_bytes = (job->scratch_bytes + 63) / 64 * 64;
    job->scratch = malloc((size_t)threads * job->scratch_bytes);
    int64_t *dt = (int64_t *)malloc((size_t)job->cout * sizeof(int64_t));
    if (job->scratch == NULL || dt == NULL) {
        free(job->scratch);
        free(dt);
        return -2;
    }
    for (int c = 0; c < job->cout; ++c) {
        dt[c] = (int64_t)job->d[c] * job->t[c];
    }
    job->dt = dt;
    bdense_run_threads(conv_worker, job, threads);
    free(job->scratch);
    free(dt);
    return 0;
}

/* The parts of a job both entry points share. */
static void set_block(struct conv_job *job, const int32_t *t, const int8_t *d,
                      const int32_t *cidx, const uint64_t *base, uint64_t *bits, int batch,
                      int cin, int h, int wd, int cout, int k, int stride, int pad, int pool) {
    job->t = t;
    job->d = d;
    job->cidx = cidx;
    job->base = base;
    job->bits = bits;
    job->batch = batch;
    job->cin = cin;
    job->h = h;
    job->wd = wd;
    job->cout = cout;
    job->k = k;
    job->stride = stride;
    job->pad = pad;
    job->pool = pool;
}

/* The computed channels fit the output: every cidx in [0, cout_total), or cout == cout_total. */
static int check_channels(int cout, const int32_t *cidx, const uint64_t *base, int cout_total) {
    if (cidx == NULL) {
        return cout == cout_total && base == NULL ? 0 : -1;
    }
    for (int c = 0; c < cout; ++c) {
        if (cidx[c] < 0 || cidx[c] >= cout_total) {
            return -1;
        }
    }
    return 0;
}

int bconv_binary_sign_threads(const uint64_t *x, const uint64_t *w, const int32_t *t,
                              const int8_t *d, const int32_t *cidx, const uint64_t *base,
                              uint64_t *bits, int batch, int cin, int h, int wd, int cout,
                              int cout_total, int k, int stride, int pad, int pool,
                              int threads) {
    if (check_geometry(batch, cin, h, wd, cout, k, stride, pad, pool) != 0 || w == NULL ||
        t == NULL || d == NULL || (batch > 0 && (x == NULL || bits == NULL)) ||
        check_channels(cout, cidx, base, cout_total) != 0) {
        return -1;
    }
    const int nq = (cin + 63) / 64;
    const size_t taps = (size_t)k * k;
    /* kernels (cout, k, k, nq) -> [tap][word][cout]: the channel loop reads contiguously */
    uint64_t *wt = (uint64_t *)malloc(taps * nq * cout * sizeof(uint64_t));
    if (wt == NULL) {
        return -2;
    }
    for (int c = 0; c < cout; ++c) {
        for (size_t tap = 0; tap < taps; ++tap) {
            for (int j = 0; j < nq; ++j) {
                wt[(tap * nq + j) * cout + c] = w[((size_t)c * taps + tap) * nq + j];
            }
        }
    }
    struct conv_job job = {.x = x, .wb = wt, .nq = nq};
    set_block(&job, t, d, cidx, base, bits, batch, cin, h, wd, cout, k, stride, pad, pool);
    const int rc = run_conv(&job, cout_total, threads);
    free(wt);
    return rc;
}

int bconv_int_sign_threads(const int16_t *q, const int8_t *w, const int32_t *t, const int8_t *d,
                           const int32_t *cidx, const uint64_t *base, uint64_t *bits, int batch,
                           int cin, int h, int wd, int cout, int cout_total, int k, int stride,
                           int pad, int pool, int threads) {
    if (check_geometry(batch, cin, h, wd, cout, k, stride, pad, pool) != 0 || w == NULL ||
        t == NULL || d == NULL || (batch > 0 && (q == NULL || bits == NULL)) ||
        check_channels(cout, cidx, base, cout_total) != 0) {
        return -1;
    }
    const size_t taps = (size_t)k * k;
    /* kernels (cout, cin, k, k) -> masks [tap][cin][cout] */
    int32_t *wt = (int32_t *)malloc(taps * cin * cout * sizeof(int32_t));
    if (wt == NULL) {
        return -2;
    }
    for (int c = 0; c < cout; ++c) {
        for (int i = 0; i < cin; ++i) {
            for (size_t tap = 0; tap < taps; ++tap) {
                wt[(tap * cin + i) * cout + c] = w[((size_t)c * cin + i) * taps + tap] < 0 ? -1 : 0;
            }
        }
    }
    struct conv_job job = {.q = q, .wi = wt};
    set_block(&job, t, d, cidx, base, bits, batch, cin, h, wd, cout, k, stride, pad, pool);
    const int rc = run_conv(&job, cout_total, threads);
    free(wt);
    return rc;
}
