// llama.cpp's greedy decoding with its logit margins, for tools/make_llamacpp_fixtures.sh: reads
// prompt token ids (one line, space-separated) from stdin, runs them through the GGUF file named
// by argv[1] with llama.cpp's defaults (its own KV cache, kernels and 8-bit activations), and
// prints, for each of argv[2] greedy steps, "id top1_logit top2_logit".
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.gguf STEPS < prompt-ids\n", argv[0]);
        return 2;
    }
    int steps = atoi(argv[2]);
    llama_token prompt[4096];
    int n = 0;
    while (n < 4096 && scanf("%d", &prompt[n]) == 1) n++;
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n + steps + 8;
    cp.n_batch = n + steps + 8;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_batch batch = llama_batch_get_one(prompt, n);
    llama_token next;
    for (int s = 0; s < steps; s++) {
        if (llama_decode(ctx, batch)) return 1;
        const float *logits = llama_get_logits_ith(ctx, -1);
        int best = 0, second = 1;
        if (logits[second] > logits[best]) { best = 1; second = 0; }
        for (int v = 2; v < vocab; v++) {
            if (logits[v] > logits[best]) { second = best; best = v; }
            else if (logits[v] > logits[second]) second = v;
        }
        printf("%d %.6f %.6f\n", best, logits[best], logits[second]);
        next = best;
        batch = llama_batch_get_one(&next, 1);
    }
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
