/* A small Transformer block built from the public layers: pre-norm, causal multi-head self-attention
 * and a GELU MLP, each with a residual connection. Gradchecked (first and second order, float64,
 * with respect to the input and every parameter), then trained on a toy task it can only solve by
 * attending to earlier positions. */
#include "nbtest.h"

enum { B = 2, T = 4, E = 8, HEADS = 2, FF = 16 };

typedef struct block {
    nb_params *p;
    nb_layer_norm ln1, ln2;
    nb_mha attn;
    nb_linear ff1, ff2;
} block;

static nb_status block_init(block *b, nb_dtype dt, nb_rng *rng)
{
    nb_layer_opts o = {.dtype = dt};
    b->p = nb_params_new();
    nb_status st = nb_layer_norm_init(&b->ln1, b->p, "ln1", E, 1e-5, &o);
    if (!st) st = nb_mha_init(&b->attn, b->p, "attn", E, HEADS, &o, rng);
    if (!st) st = nb_layer_norm_init(&b->ln2, b->p, "ln2", E, 1e-5, &o);
    if (!st) st = nb_linear_init(&b->ff1, b->p, "ff1", E, FF, &o, rng);
    if (!st) st = nb_linear_init(&b->ff2, b->p, "ff2", FF, E, &o, rng);
    return st;
}

/* x [B, T, E] -> x + attn(ln1(x)) -> h + mlp(ln2(h)) */
static nb_tensor *block_forward(const block *b, nb_tensor *x)
{
    nb_tensor *a = nb_layer_norm_forward(&b->ln1, x);
    nb_tensor *h = nb_add(x, nb_mha_forward(&b->attn, a, a, a, NULL, 1));
    nb_tensor *m = nb_linear_forward(&b->ff2, nb_gelu(nb_linear_forward(&b->ff1, nb_layer_norm_forward(&b->ln2, h))));
    return nb_add(h, m);
}

static block g_block;

/* inputs: x, then every parameter (so their gradients are checked too) */
static nb_tensor *f(void *user, nb_tensor *const *in)
{
    (void)user;
    nb_tensor *y = block_forward(&g_block, in[0]);
    return nb_sum_all(nb_mul(nb_tanh(y), y));
}

int main(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 21);
    CHECK(block_init(&g_block, NB_F64, &rng) == NB_OK, "init: %s", nb_error_message());
    int n = nb_params_count(g_block.p);
    CHECK(n == 16 && n + 1 <= NB_GRADCHECK_MAX_INPUTS, "%d parameters", n);
    nb_tensor *in[NB_GRADCHECK_MAX_INPUTS];
    in[0] = nb_tensor_normal(NB_F64, NB_SHAPE(B, T, E), 0, 1, &rng);
    nb_tensor_set_requires_grad(in[0], 1);
    for (int i = 0; i < n; i++) in[i + 1] = nb_params_tensor(g_block.p, i);
    nb_gradcheck_report rep;
    nb_status st = nb_gradcheck(f, NULL, n + 1, in, NULL, &rep);
    CHECK(st == NB_OK, "gradcheck: %s", rep.message);
    if (st != NB_OK) nb_gradcheck_report_print(&rep, stderr);
    /* second order, with respect to the input and a few parameters (fewer inputs keep it quick) */
    nb_tensor *in2[4] = {in[0], nb_params_find(g_block.p, "attn.q_proj.weight"),
                         nb_params_find(g_block.p, "ln2.weight"), nb_params_find(g_block.p, "ff1.weight")};
    st = nb_gradgradcheck(f, NULL, 4, in2, NULL, &rep);
    CHECK(st == NB_OK, "gradgradcheck: %s", rep.message);
    if (st != NB_OK) nb_gradcheck_report_print(&rep, stderr);
    /* the summary names every tensor and counts the parameters */
    FILE *tf = tmpfile();
    char text[4096] = "";
    if (tf) {
        nb_params_print(g_block.p, tf);
        rewind(tf);
        text[fread(text, 1, sizeof text - 1, tf)] = 0;
        fclose(tf);
    }
    const char *line = strstr(text, "attn.q_proj.weight");
    CHECK(line && strstr(line, "f64 [8,8]") && strstr(line, "f64 [8,8]") < strchr(line, '\n'),
          "summary lacks attn.q_proj.weight f64 [8,8]: %s", text);
    char total[64];
    snprintf(total, sizeof total, "16 tensors, %lld trainable parameters", (long long)nb_params_numel(g_block.p));
    CHECK(strstr(text, total) && nb_params_numel(g_block.p) == 2 * E + 4 * (E * E + E) + 2 * E + (E * FF + FF) + (FF * E + E),
          "summary total: %s", text);
    nb_tensor_free(in[0]);
    nb_params_free(g_block.p);

    /* training: at each position t, x_t + x_{t-1} (position 0: x_0). The residual path carries x_t;
     * only attention to the previous position can add x_{t-1}, and causal masking forbids looking
     * ahead. */
    block b;
    nb_rng_seed(&rng, 22);
    CHECK(block_init(&b, NB_F32, &rng) == NB_OK, "init: %s", nb_error_message());
    /* attention compares contents, so the positions need an embedding of their own (learned) */
    nb_tensor *pos = nb_params_add(b.p, "pos", nb_tensor_normal(NB_F32, NB_SHAPE(T, E), 0, 0.5, &rng));
    CHECK(pos != NULL, "positional embedding: %s", nb_error_message());
    nb_optim_opts oo = nb_optim_defaults(NB_ADAM);
    oo.lr = 5e-3;
    nb_optim *opt = nb_optim_new(NB_ADAM, b.p, &oo);
    nb_tape *tape = nb_tape_new();
    double first = 0, last = 0;
    float x[16 * T * E], y[16 * T * E];
    for (int step = 0; step < 2000; step++) {
        for (int i = 0; i < 16 * T * E; i++) x[i] = (float)(2 * nb_rng_uniform(&rng) - 1);
        for (int s = 0; s < 16; s++)
            for (int t = 0; t < T; t++)
                for (int e = 0; e < E; e++)
                    y[(s * T + t) * E + e] = x[(s * T + t) * E + e] + (t ? x[(s * T + t - 1) * E + e] : 0.0f);
        nb_tape_begin(tape);
        nb_tensor *xt = nb_constant(NB_F32, NB_SHAPE(16, T, E), x), *yt = nb_constant(NB_F32, NB_SHAPE(16, T, E), y);
        nb_tensor *loss = nb_mse_loss(nb_sub(block_forward(&b, nb_add(xt, pos)), pos), yt, NB_REDUCE_MEAN);
        if (!loss || nb_backward(loss, NULL, 0) != NB_OK || nb_optim_step(opt) != NB_OK) {
            CHECK(0, "training step %d: %s", step, nb_error_message());
            break;
        }
        if (step == 0) first = nb_tensor_item(loss);
        if (step >= 1900) last += nb_tensor_item(loss) / 100; /* the mean over the last 100 steps */
        nb_optim_zero_grad(opt);
        nb_tape_end(tape);
        nb_tape_reset(tape);
    }
    /* without attention to the previous position, x_{t-1} (variance 1/3 per element) is missing at 3
     * of the 4 positions: no such model gets below 0.25 */
    printf("add-the-previous-position task: mse %.4f -> %.4f (0.25 without attention)\n", first, last);
    CHECK(last < 0.1, "the block did not learn to attend to the previous position: mse %g -> %g", first, last);
    nb_tape_free(tape);
    nb_optim_free(opt);
    nb_params_free(b.p);
    return nbt_report("transformer");
}
