/*
 * Test driver: classify every sample of PIXELS with bet_predict (portable, per sample) and with
 * bet_predict_batch (host batch path) in batches of BATCH, and print "<samples> <mismatches>
 * <simd>" where a mismatch is any differing logit or class.  Built for other targets (e.g.
 * aarch64 NEON under qemu-user) by tests/test_c_batch.py.
 *
 *   batch_agree MODEL.bet PIXELS.u8 BATCH
 */
#include <stdio.h>
#include <stdlib.h>

#include "bet_batch.h"

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *data;
    long size;
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0) {
        return NULL;
    }
    data = (unsigned char *)malloc((size_t)size + 1u);
    if (data == NULL || fread(data, 1, (size_t)size, f) != (size_t)size) {
        return NULL;
    }
    fclose(f);
    *len = (size_t)size;
    return data;
}

int main(int argc, char **argv)
{
    size_t model_len = 0, pixels_len = 0, n, i, bad = 0;
    unsigned char *blob, *pixels;
    uint32_t batch, j;
    bet_model m;
    bet_batch b;
    void *workspace, *scratch;
    uint32_t *words;
    int32_t *logits, *classes, *one;
    if (argc != 4) {
        fputs("usage: batch_agree MODEL.bet PIXELS.u8 BATCH\n", stderr);
        return 2;
    }
    blob = slurp(argv[1], &model_len);
    pixels = slurp(argv[2], &pixels_len);
    batch = (uint32_t)strtoul(argv[3], NULL, 10);
    if (blob == NULL || pixels == NULL || batch == 0u ||
        bet_model_init(&m, blob, model_len) != BET_OK || pixels_len % m.num_inputs != 0u) {
        fputs("batch_agree: bad arguments or model\n", stderr);
        return 2;
    }
    n = pixels_len / m.num_inputs;
    workspace = malloc(bet_batch_workspace_bytes(&m));
    if (workspace == NULL || bet_batch_init(&b, &m, workspace, bet_batch_workspace_bytes(&m)) !=
                                 BET_OK) {
        fputs("batch_agree: bet_batch_init failed\n", stderr);
        return 2;
    }
    scratch = malloc(bet_batch_scratch_bytes(&b, batch));
    words = (uint32_t *)malloc(4u * bet_scratch_words(&m));
    logits = (int32_t *)malloc(4u * (n * m.num_classes + 1u));
    classes = (int32_t *)malloc(4u * (n + 1u));
    one = (int32_t *)malloc(4u * (m.num_classes + 1u));
    if (scratch == NULL || words == NULL || logits == NULL || classes == NULL || one == NULL) {
        return 2;
    }
    for (i = 0; i < n; i += batch) {
        uint32_t count = (uint32_t)(n - i < batch ? n - i : batch);
        bet_predict_batch(&b, pixels + i * m.num_inputs, count, logits + i * m.num_classes,
                          classes + i, scratch);
    }
    for (i = 0; i < n; ++i) {
        int32_t cls = bet_predict(&m, pixels + i * m.num_inputs, one, words);
        int differs = cls != classes[i];
        for (j = 0; j < m.num_classes; ++j) {
            differs |= one[j] != logits[i * m.num_classes + j];
        }
        bad += (size_t)differs;
    }
    printf("%lu %lu %s\n", (unsigned long)n, (unsigned long)bad, bet_batch_simd());
    return 0;
}
