/*
 * bet_host: host harness for the portable runtime (tests, fault-emulation sweeps, demos).
 *
 * Usage:
 *   bet_host info [--no-crc] MODEL.bet
 *       Validate MODEL.bet; print "status <code> <name>", then the model's shapes: per layer
 *       "layer <index> <out> <in> <binary_input> <is_output> <is_conv>".
 *   bet_host predict [--no-crc] MODEL.bet INPUT.u8 PREDS.i32 [LOGITS.i32]
 *       INPUT.u8 holds N samples of num_inputs uint8 pixels (row-major).  Writes N predicted
 *       classes and, optionally, N x num_classes integer logits as little-endian int32.
 *   bet_host accuracy [--no-crc] INPUT.u8 LABELS.u8 MODEL.bet [MODEL.bet ...]
 *       LABELS.u8 holds N uint8 class labels.  For each model prints one line
 *       "<status code> <correct> <N>" (correct = -1 when the model is rejected).
 *
 * --no-crc skips the CRC checks (bet_model_init_ex with BET_INIT_SKIP_CRC), for bitstreams
 * whose stored bits were faulted on purpose.  Exit status: 0 on success, 1 on a rejected model
 * (info/predict), 2 on usage or I/O errors.
 *
 * The harness itself uses malloc for file contents; the runtime does not.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bet_runtime.h"

static int usage(void)
{
    fputs("usage: bet_host info [--no-crc] MODEL.bet\n"
          "       bet_host predict [--no-crc] MODEL.bet INPUT.u8 PREDS.i32 [LOGITS.i32]\n"
          "       bet_host accuracy [--no-crc] INPUT.u8 LABELS.u8 MODEL.bet [MODEL.bet ...]\n",
          stderr);
    return 2;
}

/* Read a whole file; returns NULL (and prints why) on failure.  *len receives its size. */
static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *data;
    long size;
    if (f == NULL) {
        fprintf(stderr, "bet_host: cannot open %s\n", path);
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "bet_host: cannot size %s\n", path);
        fclose(f);
        return NULL;
    }
    data = (uint8_t *)malloc((size_t)size + 1u);
    if (data == NULL || fread(data, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "bet_host: cannot read %s\n", path);
        free(data);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *len = (size_t)size;
    return data;
}

static void put_le32(uint8_t *p, int32_t value)
{
    uint32_t v = (uint32_t)value;
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)((v >> 24) & 0xFFu);
}

static int write_i32(FILE *f, const int32_t *values, size_t count)
{
    uint8_t bytes[4];
    size_t i;
    for (i = 0; i < count; ++i) {
        put_le32(bytes, values[i]);
        if (fwrite(bytes, 1, 4, f) != 4) {
            return -1;
        }
    }
    return 0;
}

static int cmd_info(const char *model_path, uint32_t options)
{
    size_t len = 0;
    uint8_t *blob = read_file(model_path, &len);
    bet_model m;
    bet_status st;
    uint32_t l;
    if (blob == NULL) {
        return 2;
    }
    st = bet_model_init_ex(&m, blob, len, options);
    printf("status %d %s\n", (int)st, bet_status_str(st));
    if (st == BET_OK) {
        printf("version %lu\nflags %lu\nlayers %lu\ninputs %lu\nclasses %lu\n",
               (unsigned long)m.version, (unsigned long)m.flags, (unsigned long)m.num_layers,
               (unsigned long)m.num_inputs, (unsigned long)m.num_classes);
        printf("input_levels %lu\nscale %.9g\nscratch_words %lu\n",
               (unsigned long)m.input_levels, (double)m.scale,
               (unsigned long)bet_scratch_words(&m));
        for (l = 0; l < m.num_layers; ++l) {
            printf("layer %lu %lu %lu %d %d %d\n", (unsigned long)l,
                   (unsigned long)m.layers[l].out_features, (unsigned long)m.layers[l].in_features,
                   (int)m.layers[l].binary_input, (int)m.layers[l].is_output,
                   (int)m.layers[l].is_conv);
        }
    }
    free(blob);
    return st == BET_OK ? 0 : 1;
}

static int cmd_predict(const char *model_path, const char *input_path, const char *preds_path,
                       const char *logits_path, uint32_t options)
{
    size_t model_len = 0, input_len = 0, n, i;
    uint8_t *blob = NULL, *input = NULL;
    uint32_t *scratch = NULL;
    int32_t *preds = NULL, *logits = NULL;
    FILE *fp = NULL, *fl = NULL;
    bet_model m;
    bet_status st;
    int rc = 2;

    blob = read_file(model_path, &model_len);
    if (blob == NULL) {
        goto done;
    }
    st = bet_model_init_ex(&m, blob, model_len, options);
    if (st != BET_OK) {
        fprintf(stderr, "bet_host: %s rejected: %d %s\n", model_path, (int)st,
                bet_status_str(st));
        rc = 1;
        goto done;
    }
    input = read_file(input_path, &input_len);
    if (input == NULL) {
        goto done;
    }
    if (input_len % m.num_inputs != 0u) {
        fprintf(stderr, "bet_host: %s has %lu bytes, not a multiple of %lu inputs\n",
                input_path, (unsigned long)input_len, (unsigned long)m.num_inputs);
        goto done;
    }
    n = input_len / m.num_inputs;
    scratch = (uint32_t *)malloc(sizeof(uint32_t) * bet_scratch_words(&m));
    preds = (int32_t *)malloc(sizeof(int32_t) * (n + 1u));
    logits = (int32_t *)malloc(sizeof(int32_t) * (n * m.num_classes + 1u));
    if (scratch == NULL || preds == NULL || logits == NULL) {
        fputs("bet_host: out of memory\n", stderr);
        goto done;
    }
    for (i = 0; i < n; ++i) {
        preds[i] = bet_predict(&m, input + i * m.num_inputs, logits + i * m.num_classes, scratch);
    }
    fp = fopen(preds_path, "wb");
    if (fp == NULL || write_i32(fp, preds, n) != 0) {
        fprintf(stderr, "bet_host: cannot write %s\n", preds_path);
        goto done;
    }
    if (logits_path != NULL) {
        fl = fopen(logits_path, "wb");
        if (fl == NULL || write_i32(fl, logits, n * m.num_classes) != 0) {
            fprintf(stderr, "bet_host: cannot write %s\n", logits_path);
            goto done;
        }
    }
    rc = 0;
done:
    if (fp != NULL && fclose(fp) != 0) {
        rc = 2;
    }
    if (fl != NULL && fclose(fl) != 0) {
        rc = 2;
    }
    free(blob);
    free(input);
    free(scratch);
    free(preds);
    free(logits);
    return rc;
}

static int cmd_accuracy(const char *input_path, const char *labels_path, char **models,
                        int num_models, uint32_t options)
{
    size_t input_len = 0, labels_len = 0;
    uint8_t *input = read_file(input_path, &input_len);
    uint8_t *labels = input != NULL ? read_file(labels_path, &labels_len) : NULL;
    int k, rc = 0;
    if (input == NULL || labels == NULL) {
        free(input);
        free(labels);
        return 2;
    }
    for (k = 0; k < num_models && rc == 0; ++k) {
        size_t model_len = 0, i;
        long correct = 0;
        uint8_t *blob = read_file(models[k], &model_len);
        uint32_t *scratch = NULL;
        bet_model m;
        bet_status st;
        if (blob == NULL) {
            rc = 2;
            break;
        }
        st = bet_model_init_ex(&m, blob, model_len, options);
        if (st != BET_OK) {
            printf("%d -1 %lu\n", (int)st, (unsigned long)labels_len);
        } else if (input_len != labels_len * m.num_inputs) {
            fprintf(stderr, "bet_host: %s has %lu bytes, expected %lu labels x %lu inputs\n",
                    input_path, (unsigned long)input_len, (unsigned long)labels_len,
                    (unsigned long)m.num_inputs);
            rc = 2;
        } else if ((scratch = (uint32_t *)malloc(sizeof(uint32_t) * bet_scratch_words(&m))) ==
                   NULL) {
            fputs("bet_host: out of memory\n", stderr);
            rc = 2;
        } else {
            for (i = 0; i < labels_len; ++i) {
                int32_t pred = bet_predict(&m, input + i * m.num_inputs, NULL, scratch);
                correct += pred == (int32_t)labels[i];
            }
            printf("%d %ld %lu\n", (int)st, correct, (unsigned long)labels_len);
        }
        free(scratch);
        free(blob);
    }
    free(input);
    free(labels);
    return rc;
}

int main(int argc, char **argv)
{
    uint32_t options = BET_INIT_DEFAULT;
    char **args;
    int nargs, i, j;
    if (argc < 2) {
        return usage();
    }
    /* drop options, keep positional arguments in order */
    args = argv + 2;
    nargs = 0;
    for (i = 2, j = 0; i < argc; ++i) {
        if (strcmp(argv[i], "--no-crc") == 0) {
            options |= BET_INIT_SKIP_CRC;
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            return usage();
        } else {
            args[j++] = argv[i];
        }
    }
    nargs = j;
    if (strcmp(argv[1], "info") == 0 && nargs == 1) {
        return cmd_info(args[0], options);
    }
    if (strcmp(argv[1], "predict") == 0 && (nargs == 3 || nargs == 4)) {
        return cmd_predict(args[0], args[1], args[2], nargs == 4 ? args[3] : NULL, options);
    }
    if (strcmp(argv[1], "accuracy") == 0 && nargs >= 3) {
        return cmd_accuracy(args[0], args[1], args + 2, nargs - 2, options);
    }
    return usage();
}
