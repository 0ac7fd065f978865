/*
 * Bare-metal demo: classify the samples of samples.h with the model of model.h and print
 * "status <code>", then one line "<class> <logit 0> ... <logit C-1>" per sample, through
 * semihosting.  Both headers come from lightning_bet.deploy.c_runner.run_mcu_emulated (model.h
 * from write_c_package); static buffers only, as on a real device.
 */
#include <stdint.h>

#include "model.h"
#include "samples.h"
#include "semihost.h"

static bet_model net;
static uint32_t scratch[MODEL_SCRATCH_WORDS];
static int32_t logits[MODEL_NUM_CLASSES];
static char line[16 * (MODEL_NUM_CLASSES + 2)];

/* Append the decimal text of v at p; returns the new end. */
static char *put_int(char *p, int32_t v)
{
    char digits[12];
    int n = 0;
    uint32_t u = v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
    if (v < 0) {
        *p++ = '-';
    }
    do {
        digits[n++] = (char)('0' + (int)(u % 10u));
        u /= 10u;
    } while (u != 0u);
    while (n > 0) {
        *p++ = digits[--n];
    }
    return p;
}

int main(void)
{
    uint32_t i, j;
    char *p = line;
    bet_status st = bet_model_init(&net, model_bet, model_bet_len);
    if (st == BET_OK && bet_scratch_words(&net) > MODEL_SCRATCH_WORDS) {
        semihost_write("scratch: model.h reserves fewer words than the runtime needs\n");
        return 1;
    }
    p = put_int(p, (int32_t)st);
    semihost_write("status ");
    *p++ = '\n';
    *p = '\0';
    semihost_write(line);
    if (st != BET_OK) {
        return 1;
    }
    for (i = 0; i != SAMPLES_COUNT; ++i) { /* != : SAMPLES_COUNT may be 0 */
        int32_t label = bet_predict(&net, samples + i * MODEL_NUM_INPUTS, logits, scratch);
        p = put_int(line, label);
        for (j = 0; j < MODEL_NUM_CLASSES; ++j) {
            *p++ = ' ';
            p = put_int(p, logits[j]);
        }
        *p++ = '\n';
        *p = '\0';
        semihost_write(line);
    }
    return 0;
}
