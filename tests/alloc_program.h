/* A small training program that touches every part of the library that allocates: leaves and a
 * parameter collection, an MLP and an LSTM step with backward on a tape, an Adam step, a CNN step
 * (conv, batch norm with running statistics, max pooling, linear, cross entropy, AdamW), a schedule and
 * early stopping, a dataset split into shuffled batches, a vocabulary, IDX files (raw and gzip), a
 * checkpoint saved and loaded, and a safetensors file read. Every call is checked; on the first
 * failure the program stops, frees everything it made and reports which call failed. Shared by
 * test_alloc_contract (is every allocation the allocator's?) and test_alloc_faults (does every
 * allocation failure come back as NB_ERR_NOMEM, without a crash or a leak?). */
#ifndef NB_ALLOC_PROGRAM_H
#define NB_ALLOC_PROGRAM_H

#include <nabla.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

/* What a complete run computes: compared between runs. */
typedef struct prog_out {
    double loss[2];       /* the training steps' losses */
    double cnn_loss[2];   /* the CNN steps' losses */
    double running_mean;  /* an element of the batch norm's running mean after the steps */
    double loaded;        /* a parameter element after the checkpoint load */
    double read_back;     /* the same element from nb_safetensors_read */
    double idx_sum[2];    /* sums of the raw and gzip IDX tensors */
    int64_t step;         /* step read back from the checkpoint */
    int vocab;            /* vocabulary size */
} prog_out;

typedef struct prog_files {
    char ckpt[256], idx_raw[256], idx_gz[256];
} prog_files;

/* The IDX files the program reads: u8 [3, 4, 5], raw and gzip (made with stdio and zlib's gz*, outside
 * anything measured). Returns 0 on success. */
static int prog_setup(const char *dir, prog_files *f)
{
    snprintf(f->ckpt, sizeof f->ckpt, "%s/prog.safetensors", dir);
    snprintf(f->idx_raw, sizeof f->idx_raw, "%s/prog.idx", dir);
    snprintf(f->idx_gz, sizeof f->idx_gz, "%s/prog.idx.gz", dir);
    unsigned char buf[16 + 60] = {0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5};
    for (int i = 0; i < 60; i++) buf[16 + i] = (unsigned char)(i * 7);
    FILE *raw = fopen(f->idx_raw, "wb");
    if (!raw || fwrite(buf, 1, sizeof buf, raw) != sizeof buf) return -1;
    fclose(raw);
    gzFile gz = gzopen(f->idx_gz, "wb");
    if (!gz || gzwrite(gz, buf, (unsigned)sizeof buf) != (int)sizeof buf) return -1;
    gzclose(gz);
    return 0;
}

/* The failing call of the last run, for messages. */
static const char *prog_where = "";

#define PROG_CHECK(ok, what)                                                                           \
    do {                                                                                               \
        if (!(ok)) {                                                                                   \
            prog_where = (what);                                                                       \
            st = nb_error_code() != NB_OK ? nb_error_code() : NB_ERR_STATE;                            \
            goto done;                                                                                 \
        }                                                                                              \
    } while (0)

static double tensor_sum(const nb_tensor *t)
{
    double s = 0;
    for (int64_t i = 0; i < nb_tensor_numel(t); i++) s += nb_tensor_get(t, i);
    return s;
}

/* Run the program; NB_OK with *out filled, or the status of the first failing call (prog_where names
 * it). Leaves nothing allocated behind either way. */
static nb_status prog_run(const prog_files *f, prog_out *out)
{
    nb_status st = NB_OK;
    nb_rng rng;
    nb_rng_seed(&rng, 7);
    memset(out, 0, sizeof *out);
    prog_where = "";
    nb_params *model = NULL;
    nb_optim *opt = NULL, *cnn_opt = NULL;
    nb_params *cnn = NULL;
    nb_sched *sched = NULL;
    nb_early_stop *es = NULL;
    nb_dataset *data = NULL, *train = NULL, *val = NULL;
    nb_batches *batches = NULL;
    nb_vocab *vocab = NULL;
    nb_tape *tape = NULL;
    nb_safetensors *sf = NULL;
    nb_tensor *idx[2] = {NULL, NULL}, *x = NULL, *y = NULL, *cx = NULL, *cy = NULL;
    int begun = 0;

    /* the model: an MLP classifier and an LSTM cell with a linear head, float64 */
    nb_layer_opts lo = {.dtype = NB_F64};
    nb_mlp mlp;
    nb_rnn_cell cell;
    nb_rnn rnn;
    nb_linear head;
    PROG_CHECK((model = nb_params_new()) != NULL, "nb_params_new");
    PROG_CHECK(nb_mlp_init(&mlp, model, "mlp", 3, (const int64_t[]){6, 8, 3}, NB_ACT_RELU, 0.1, &lo, &rng) == NB_OK,
               "nb_mlp_init");
    PROG_CHECK(nb_rnn_cell_init(&cell, model, "lstm", NB_LSTM, 6, 5, &lo, &rng) == NB_OK, "nb_rnn_cell_init");
    PROG_CHECK(nb_linear_init(&head, model, "head", 5, 1, &lo, &rng) == NB_OK, "nb_linear_init");
    nb_rnn_opts ro = {.layer = lo, .batch_first = 1};
    PROG_CHECK(nb_rnn_init(&rnn, model, "rnn", NB_LSTM, 3, 4, 2, &ro, &rng) == NB_OK, "nb_rnn_init");
    PROG_CHECK((opt = nb_optim_new(NB_ADAM, model, NULL)) != NULL, "nb_optim_new");
    nb_sched_opts so = nb_sched_defaults(NB_SCHED_COSINE);
    so.t_max = 10;
    PROG_CHECK((sched = nb_sched_new(NB_SCHED_COSINE, opt, &so)) != NULL, "nb_sched_new");
    PROG_CHECK((es = nb_early_stop_new(model, 3, 0.0, 0)) != NULL, "nb_early_stop_new");

    /* a small CNN with its own AdamW: conv 2 -> 4 (3x3, padding 1), batch norm, relu, 2x2 max pooling,
     * linear 36 -> 3, on a fixed batch [4, 2, 6, 6] */
    nb_conv conv;
    nb_batch_norm bn;
    nb_linear fc;
    nb_conv_opts co = nb_conv_defaults();
    co.padding[0] = co.padding[1] = 1;
    PROG_CHECK((cnn = nb_params_new()) != NULL, "nb_params_new (cnn)");
    PROG_CHECK(nb_conv2d_init(&conv, cnn, "conv", 2, 4, 3, 3, &co, &lo, &rng) == NB_OK, "nb_conv2d_init");
    PROG_CHECK(nb_batch_norm2d_init(&bn, cnn, "bn", 4, &(nb_norm_opts){.dtype = NB_F64}) == NB_OK,
               "nb_batch_norm2d_init");
    PROG_CHECK(nb_linear_init(&fc, cnn, "fc", 36, 3, &lo, &rng) == NB_OK, "nb_linear_init (cnn)");
    PROG_CHECK((cnn_opt = nb_optim_new(NB_ADAMW, cnn, NULL)) != NULL, "nb_optim_new (AdamW)");
    PROG_CHECK((cx = nb_tensor_uniform(NB_F64, NB_SHAPE(4, 2, 6, 6), -1, 1, &rng)) != NULL, "cnn inputs");
    PROG_CHECK((cy = nb_tensor_zeros(NB_I64, NB_SHAPE(4))) != NULL, "cnn labels");
    for (int i = 0; i < 4; i++) nb_tensor_set(cy, i, i % 3);

    /* data: 20 samples of 6 features with a class label, split and batched */
    PROG_CHECK((x = nb_tensor_uniform(NB_F64, NB_SHAPE(20, 6), -1, 1, &rng)) != NULL, "inputs");
    PROG_CHECK((y = nb_tensor_zeros(NB_I64, NB_SHAPE(20))) != NULL, "labels");
    for (int i = 0; i < 20; i++) nb_tensor_set(y, i, i % 3);
    data = nb_dataset_new(x, y);
    x = y = NULL; /* the dataset's now, also on failure */
    PROG_CHECK(data != NULL, "nb_dataset_new");
    PROG_CHECK(nb_dataset_split(data, 0.25, 3, &train, &val) == NB_OK, "nb_dataset_split");
    PROG_CHECK((batches = nb_batches_new(train, 4, 1, 0, 5)) != NULL, "nb_batches_new");
    const char *text = "the quick brown fox";
    int64_t ids[19];
    PROG_CHECK((vocab = nb_vocab_build(text, strlen(text))) != NULL, "nb_vocab_build");
    PROG_CHECK(nb_vocab_encode(vocab, text, strlen(text), ids) == NB_OK, "nb_vocab_encode");
    out->vocab = nb_vocab_size(vocab);

    /* two training steps */
    PROG_CHECK((tape = nb_tape_new()) != NULL, "nb_tape_new");
    for (int s = 0; s < 2; s++) {
        PROG_CHECK(nb_tape_begin(tape) == NB_OK, "nb_tape_begin");
        begun = 1;
        nb_tensor *bx = NULL, *by = NULL, *h = NULL, *c = NULL;
        PROG_CHECK(nb_batches_next(batches, &bx, &by) == 1, "nb_batches_next");
        nb_tensor *logits = nb_mlp_forward(&mlp, bx);
        nb_tensor *ce = nb_cross_entropy(logits, by, NULL);
        nb_tensor *h0 = nb_zeros(NB_F64, NB_SHAPE(4, 5));
        PROG_CHECK(nb_lstm_cell(&cell, bx, h0, h0, &h, &c) == NB_OK, "nb_lstm_cell");
        nb_tensor *reg = nb_mean_all(nb_square(nb_linear_forward(&head, nb_add(h, c))));
        /* a two-layer LSTM over 3 steps of the batch's features seen as [B, 3, 2] ... as [B, 2, 3] */
        nb_tensor *seq = nb_reshape(bx, NB_SHAPE(4, 2, 3)), *seq_out = NULL;
        nb_rnn_state last = {0};
        PROG_CHECK(nb_rnn_forward(&rnn, seq, NULL, (const int64_t[]){2, 1, 2, 2}, &seq_out, &last) == NB_OK,
                   "nb_rnn_forward");
        nb_tensor *loss = nb_add(nb_add(ce, reg), nb_mean_all(nb_mul(seq_out, seq_out)));
        PROG_CHECK(loss != NULL, "forward");
        /* a gradient penalty through a create-graph gradient (second order), then the backward */
        nb_tensor *w = mlp.layer[0].weight, *gw = NULL;
        PROG_CHECK(nb_grad(loss, NULL, 1, &w, &gw, NB_CREATE_GRAPH) == NB_OK, "nb_grad");
        loss = nb_add(loss, nb_mul_scalar(nb_sum_all(nb_square(gw)), 0.01));
        PROG_CHECK(loss != NULL, "penalty");
        PROG_CHECK(nb_backward(loss, NULL, 0) == NB_OK, "nb_backward");
        out->loss[s] = nb_tensor_item(loss);
        PROG_CHECK(nb_clip_grad_norm(model, 5.0) >= 0, "nb_clip_grad_norm");
        PROG_CHECK(nb_optim_step(opt) == NB_OK, "nb_optim_step");
        nb_optim_zero_grad(opt);
        double lr = nb_sched_step(sched, 0.0);
        PROG_CHECK(lr == lr, "nb_sched_step");
        PROG_CHECK(nb_early_stop_update(es, out->loss[s]) >= 0, "nb_early_stop_update");
        /* the CNN step */
        nb_tensor *hc = nb_flatten(nb_batch_norm_relu_pool_forward(&bn, nb_conv_forward(&conv, cx), 2, 2), 1, -1);
        nb_tensor *cl = nb_cross_entropy(nb_linear_forward(&fc, hc), cy, NULL);
        PROG_CHECK(cl != NULL, "cnn forward");
        PROG_CHECK(nb_backward(cl, NULL, 0) == NB_OK, "nb_backward (cnn)");
        out->cnn_loss[s] = nb_tensor_item(cl);
        PROG_CHECK(nb_optim_step(cnn_opt) == NB_OK, "nb_optim_step (AdamW)");
        nb_optim_zero_grad(cnn_opt);
        PROG_CHECK(nb_tape_end(tape) == NB_OK, "nb_tape_end");
        begun = 0;
        nb_tape_reset(tape);
    }

    out->running_mean = nb_tensor_get(bn.running_mean, 1);

    /* files: a checkpoint saved and loaded back, read as plain safetensors, and IDX files */
    PROG_CHECK(nb_checkpoint_save(f->ckpt, model, opt, 2) == NB_OK, "nb_checkpoint_save");
    PROG_CHECK(nb_checkpoint_load(f->ckpt, model, opt, &out->step) == NB_OK, "nb_checkpoint_load");
    out->loaded = nb_tensor_get(nb_params_find(model, "head.weight"), 2);
    PROG_CHECK(nb_safetensors_read(f->ckpt, &sf) == NB_OK, "nb_safetensors_read");
    PROG_CHECK(nb_safetensors_find(sf, "head.weight") != NULL, "nb_safetensors_find");
    out->read_back = nb_tensor_get(nb_safetensors_find(sf, "head.weight"), 2);
    PROG_CHECK(nb_idx_read(f->idx_raw, NB_F32, 1.0 / 255, &idx[0]) == NB_OK, "nb_idx_read raw");
    PROG_CHECK(nb_idx_read(f->idx_gz, NB_I64, 1.0, &idx[1]) == NB_OK, "nb_idx_read gzip");
    out->idx_sum[0] = tensor_sum(idx[0]);
    out->idx_sum[1] = tensor_sum(idx[1]);

done:
    nb_tensor_free(x); /* only when the dataset was not made */
    nb_tensor_free(y);
    nb_tensor_free(cx);
    nb_tensor_free(cy);
    if (begun) nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(idx[0]);
    nb_tensor_free(idx[1]);
    nb_safetensors_free(sf);
    nb_vocab_free(vocab);
    nb_batches_free(batches);
    nb_dataset_free(val);
    nb_dataset_free(train);
    nb_dataset_free(data);
    nb_early_stop_free(es);
    nb_sched_free(sched);
    nb_optim_free(opt);
    nb_optim_free(cnn_opt);
    nb_params_free(model);
    nb_params_free(cnn);
    return st;
}

#endif
