/* Steady-state allocation: after the first training step, a step (forward, backward, update, zero_grad,
 * reset) makes no heap allocation at all. A counting allocator also checks that every free names the
 * size of the block it frees, and that nothing leaks once every object is freed. */
#include "nbtest.h"

#include <stdint.h>
#include <stdlib.h>

/* ---- the counting allocator ------------------------------------------------------------------- */

#define MAX_LIVE 4096

typedef struct counter {
    long allocs, reallocs, frees;
    long size_mismatches, unknown_frees;
    size_t live_bytes;
    void *ptr[MAX_LIVE];
    size_t size[MAX_LIVE];
    int n_live;
    int overflow;
} counter;

static counter g_count;

static void track(counter *c, void *p, size_t size)
{
    if (c->n_live == MAX_LIVE) {
        c->overflow = 1;
        return;
    }
    c->ptr[c->n_live] = p;
    c->size[c->n_live] = size;
    c->n_live++;
    c->live_bytes += size;
}

/* remove p; returns its recorded size, or SIZE_MAX if unknown */
static size_t untrack(counter *c, void *p)
{
    for (int i = c->n_live - 1; i >= 0; i--) {
        if (c->ptr[i] != p) continue;
        size_t s = c->size[i];
        c->ptr[i] = c->ptr[c->n_live - 1];
        c->size[i] = c->size[c->n_live - 1];
        c->n_live--;
        c->live_bytes -= s;
        return s;
    }
    return SIZE_MAX;
}

static void *count_alloc(size_t size, void *user)
{
    counter *c = user;
    c->allocs++;
    void *p = malloc(size);
    if (p) track(c, p, size);
    return p;
}

static void *count_realloc(void *ptr, size_t old_size, size_t new_size, void *user)
{
    counter *c = user;
    c->reallocs++;
    size_t s = untrack(c, ptr);
    if (s == SIZE_MAX)
        c->unknown_frees++;
    else if (s != old_size)
        c->size_mismatches++;
    void *p = realloc(ptr, new_size);
    if (p)
        track(c, p, new_size);
    else
        track(c, ptr, s == SIZE_MAX ? old_size : s);
    return p;
}

static void count_free(void *ptr, size_t size, void *user)
{
    counter *c = user;
    c->frees++;
    size_t s = untrack(c, ptr);
    if (s == SIZE_MAX)
        c->unknown_frees++;
    else if (s != size) {
        if (c->size_mismatches == 0)
            fprintf(stderr, "  free of %p: size %zu, allocated %zu\n", ptr, size, s);
        c->size_mismatches++;
    }
    free(ptr);
}

static long total_calls(const counter *c) { return c->allocs + c->reallocs + c->frees; }

/* ---- a small MLP ------------------------------------------------------------------------------ */

typedef struct model {
    nb_dtype dt;
    nb_tensor *x, *t;           /* x [batch,in], t [batch,out] */
    nb_tensor *w1, *b1, *w2, *b2; /* [in,hid], [hid], [hid,out], [out] */
} model;

static void model_init(model *m, nb_dtype dt, int64_t batch, int64_t in, int64_t hid, int64_t out, uint64_t seed)
{
    nb_rng rng;
    nb_rng_seed(&rng, seed);
    m->dt = dt;
    m->x = nb_tensor_uniform(dt, NB_SHAPE(batch, in), -1, 1, &rng);
    m->t = nb_tensor_uniform(dt, NB_SHAPE(batch, out), -1, 1, &rng);
    double s1 = 1.0 / sqrt((double)in), s2 = 1.0 / sqrt((double)hid);
    m->w1 = nb_tensor_uniform(dt, NB_SHAPE(in, hid), -s1, s1, &rng);
    m->b1 = nb_tensor_zeros(dt, NB_SHAPE(hid));
    m->w2 = nb_tensor_uniform(dt, NB_SHAPE(hid, out), -s2, s2, &rng);
    m->b2 = nb_tensor_zeros(dt, NB_SHAPE(out));
    nb_tensor *p[] = {m->w1, m->b1, m->w2, m->b2};
    for (int i = 0; i < 4; i++) nb_tensor_set_requires_grad(p[i], 1);
}

static void model_free(model *m)
{
    nb_tensor *all[] = {m->x, m->t, m->w1, m->b1, m->w2, m->b2};
    for (int i = 0; i < 6; i++) nb_tensor_free(all[i]);
}

/* mean((tanh(x w1 + b1) w2 + b2 - t)^2), on the current tape (biases broadcast over the rows) */
static nb_tensor *model_loss(const model *m)
{
    nb_tensor *h = nb_tanh(nb_add(nb_matmul(m->x, m->w1), m->b1));
    nb_tensor *e = nb_sub(nb_add(nb_matmul(h, m->w2), m->b2), m->t);
    return nb_mean_all(nb_mul(e, e));
}

/* The end of a step: p -= lr grad(p) for the four parameters, gradients zeroed, the tape ended and
 * reset. Returns value, or NaN if any of it failed. */
static double sgd_update(nb_tape *tape, model *m, double lr, double value)
{
    nb_tensor *p[] = {m->w1, m->b1, m->w2, m->b2};
    for (int i = 0; i < 4; i++) {
        if (nb_tensor_axpy(p[i], -lr, nb_tensor_grad(p[i])) != NB_OK) value = NAN;
        nb_tensor_zero_grad(p[i]);
    }
    if (nb_tape_end(tape) != NB_OK) value = NAN;
    nb_tape_reset(tape);
    return value;
}

/* One training step on tape; returns the loss before the update, NaN on error. */
static double step(nb_tape *tape, model *m, double lr)
{
    if (nb_tape_begin(tape) != NB_OK) return NAN;
    nb_tensor *loss = model_loss(m);
    double value = loss ? nb_tensor_item(loss) : NAN;
    if (nb_backward(loss, NULL, 0) != NB_OK) value = NAN;
    return sgd_update(tape, m, lr, value);
}

/* A step with a gradient penalty: loss + 0.01 * sum over parameters of |d loss / d p|^2, differentiated
 * through the create-graph gradient (double backward) every step. */
static double step_penalty(nb_tape *tape, model *m, double lr)
{
    if (nb_tape_begin(tape) != NB_OK) return NAN;
    nb_tensor *loss = model_loss(m);
    double value = loss ? nb_tensor_item(loss) : NAN;
    nb_tensor *p[] = {m->w1, m->b1, m->w2, m->b2}, *g[4] = {0};
    if (nb_grad(loss, NULL, 4, p, g, NB_CREATE_GRAPH) != NB_OK) value = NAN;
    nb_tensor *total = loss;
    for (int i = 0; i < 4; i++) total = nb_add(total, nb_mul_scalar(nb_sum_all(nb_mul(g[i], g[i])), 0.01));
    if (nb_backward(total, NULL, 0) != NB_OK) value = NAN;
    return sgd_update(tape, m, lr, value);
}

typedef double (*step_fn)(nb_tape *tape, model *m, double lr);

static void train(const char *name, step_fn stepf, nb_dtype dt, int64_t batch, int64_t in, int64_t hid,
                  int64_t out, double lr, int expect_chunks)
{
    model m;
    model_init(&m, dt, batch, in, hid, out, 11);
    nb_tape *tape = nb_tape_new();
    CHECK_NO_ERROR();

    double loss[10];
    long calls[10];
    size_t reserved[10];
    for (int it = 0; it < 10; it++) {
        long before = total_calls(&g_count);
        loss[it] = stepf(tape, &m, lr);
        calls[it] = total_calls(&g_count) - before;
        reserved[it] = nb_tape_bytes_reserved(tape);
    }
    CHECK_NO_ERROR();
    CHECK(calls[0] > 0, "%s: the first step allocated nothing (%ld calls): the counter is not in use", name,
          calls[0]);
    for (int it = 1; it < 10; it++)
        CHECK(calls[it] == 0, "%s: step %d made %ld allocator calls, expected 0", name, it + 1, calls[it]);
    for (int it = 1; it < 10; it++)
        CHECK(reserved[it] == reserved[1], "%s: step %d reserved %zu bytes, step 2 %zu", name, it + 1,
              reserved[it], reserved[1]);
    if (expect_chunks)
        CHECK(reserved[1] > ((size_t)1 << 20), "%s: the tape needs more than one 1 MiB chunk (%zu bytes)", name,
              reserved[1]);
    int finite = 1, monotone = 1;
    for (int it = 0; it < 10; it++) finite &= isfinite(loss[it]);
    for (int it = 1; it < 10; it++) monotone &= loss[it] < loss[it - 1];
    CHECK(finite, "%s: losses are finite", name);
    CHECK(monotone, "%s: loss decreases at every step (%g ... %g)", name, loss[0], loss[9]);
    CHECK(loss[9] < 0.95 * loss[0], "%s: loss %g -> %g", name, loss[0], loss[9]);

    nb_tape_free(tape);
    model_free(&m);
}

/* ---- a small CNN, as examples/fashion_mnist --model cnn trains it -------------------------------- */

typedef struct cnn {
    nb_params *p;
    nb_conv c1, c2;
    nb_batch_norm b1, b2;
    nb_linear fc;
    nb_rng rng; /* dropout */
} cnn;

/* conv-bn-relu-maxpool twice (the first fused, the second composed), channel dropout, flatten, dropout,
 * linear; x [B, 1, 12, 12] */
static nb_tensor *cnn_logits(cnn *m, nb_tensor *x)
{
    nb_tensor *h = nb_batch_norm_relu_pool_forward(&m->b1, nb_conv_forward(&m->c1, x), 2, 2);
    h = nb_train_dropout2d(m->p, h, 0.1, &m->rng);
    h = nb_max_pool2d(nb_relu(nb_batch_norm_forward(&m->b2, nb_conv_forward(&m->c2, h))), 2, 2, NULL);
    return nb_linear_forward(&m->fc, nb_train_dropout(m->p, nb_flatten(h, 1, -1), 0.2, &m->rng));
}

/* Ten AdamW steps on one batch: the steps after the first make no allocator call (the convolutions'
 * workspaces come from the tape's arena, the running statistics are updated in place), and the loss
 * goes down. */
static void train_cnn(const char *name, nb_dtype dt)
{
    cnn m;
    nb_rng_seed(&m.rng, 3);
    m.p = nb_params_new();
    nb_layer_opts lo = {.dtype = dt, .no_bias = 1};
    nb_norm_opts no = {.dtype = dt};
    nb_conv_opts co = nb_conv_defaults();
    co.padding[0] = co.padding[1] = 1;
    nb_conv2d_init(&m.c1, m.p, "conv1", 1, 4, 3, 3, &co, &lo, &m.rng);
    nb_batch_norm2d_init(&m.b1, m.p, "bn1", 4, &no);
    nb_conv2d_init(&m.c2, m.p, "conv2", 4, 8, 3, 3, &co, &lo, &m.rng);
    nb_batch_norm2d_init(&m.b2, m.p, "bn2", 8, &no);
    nb_linear_init(&m.fc, m.p, "fc", 8 * 3 * 3, 5, &(nb_layer_opts){.dtype = dt}, &m.rng);
    nb_tensor *x = nb_tensor_uniform(dt, NB_SHAPE(16, 1, 12, 12), 0, 1, &m.rng);
    nb_tensor *y = nb_tensor_zeros(NB_I64, NB_SHAPE(16));
    for (int i = 0; i < 16; i++) nb_tensor_set(y, i, i % 5);
    nb_optim_opts oo = nb_optim_defaults(NB_ADAMW);
    oo.lr = 0.01;
    nb_optim *opt = nb_optim_new(NB_ADAMW, m.p, &oo);
    nb_tape *tape = nb_tape_new();
    CHECK_NO_ERROR();
    double loss[10];
    long calls[10];
    for (int it = 0; it < 10; it++) {
        long before = total_calls(&g_count);
        nb_tape_begin(tape);
        nb_tensor *l = nb_cross_entropy(cnn_logits(&m, x), y, NULL);
        loss[it] = l ? nb_tensor_item(l) : NAN;
        if (!l || nb_backward(l, NULL, 0) != NB_OK || nb_optim_step(opt) != NB_OK) loss[it] = NAN;
        nb_optim_zero_grad(opt);
        nb_tape_end(tape);
        nb_tape_reset(tape);
        calls[it] = total_calls(&g_count) - before;
    }
    CHECK_NO_ERROR();
    CHECK(calls[0] > 0, "%s: the first step allocated nothing", name);
    for (int it = 1; it < 10; it++)
        CHECK(calls[it] == 0, "%s: step %d made %ld allocator calls, expected 0", name, it + 1, calls[it]);
    CHECK(isfinite(loss[9]) && loss[9] < 0.75 * loss[0], "%s: loss %g -> %g", name, loss[0], loss[9]);
    CHECK(nb_tensor_get(m.b1.num_batches_tracked, 0) == 10, "%s: 10 batches tracked", name);
    nb_tape_free(tape);
    nb_optim_free(opt);
    nb_tensor_free(x);
    nb_tensor_free(y);
    nb_params_free(m.p);
}

/* ---- optimizers: every kind, with two parameter groups and a schedule stepped every step ---------- */

typedef struct optim_run {
    nb_params *ps;
    nb_tensor *x, *t, *w1, *b1, *w2, *b2;
    nb_tape *tape;
} optim_run;

static nb_tensor *run_loss(const optim_run *r)
{
    nb_tensor *h = nb_tanh(nb_add(nb_matmul(r->x, r->w1), r->b1));
    nb_tensor *e = nb_sub(nb_add(nb_matmul(h, r->w2), r->b2), r->t);
    return nb_mean_all(nb_mul(e, e));
}

static nb_status run_closure(void *user, double *loss)
{
    optim_run *r = user;
    nb_params_zero_grad(r->ps);
    nb_tensor *l = run_loss(r);
    nb_status st = l ? nb_backward(l, NULL, 0) : nb_error_code();
    if (st == NB_OK) *loss = nb_tensor_item(l);
    nb_tape_reset(r->tape);
    return st;
}

static void train_optim(nb_optim_kind kind, nb_sched_kind sk)
{
    optim_run r = {0};
    nb_rng rng;
    nb_rng_seed(&rng, 5);
    r.ps = nb_params_new();
    r.x = nb_tensor_uniform(NB_F64, NB_SHAPE(16, 8), -1, 1, &rng);
    r.t = nb_tensor_uniform(NB_F64, NB_SHAPE(16, 2), -1, 1, &rng);
    r.w1 = nb_params_add(r.ps, "l1.w", nb_tensor_uniform(NB_F64, NB_SHAPE(8, 16), -0.3, 0.3, &rng));
    r.b1 = nb_params_add(r.ps, "l1.b", nb_tensor_zeros(NB_F64, NB_SHAPE(16)));
    r.w2 = nb_params_add(r.ps, "l2.w", nb_tensor_uniform(NB_F64, NB_SHAPE(16, 2), -0.25, 0.25, &rng));
    r.b2 = nb_params_add(r.ps, "l2.b", nb_tensor_zeros(NB_F64, NB_SHAPE(2)));
    r.tape = nb_tape_new();
    nb_tape_begin(r.tape);
    nb_optim_opts o = nb_optim_defaults(kind);
    o.lr = kind == NB_LBFGS ? 1.0 : kind == NB_ADADELTA ? 1.0 : 0.01;
    if (kind == NB_SGD || kind == NB_RMSPROP) o.momentum = 0.9;
    if (kind == NB_LBFGS) o.line_search = NB_LINE_SEARCH_STRONG_WOLFE;
    nb_optim_group g = {.prefix = "l2.", .opts = o};
    g.opts.lr = o.lr / 2;
    nb_optim *opt = nb_optim_new_groups(kind, r.ps, &o, kind == NB_LBFGS ? 0 : 1, &g);
    nb_sched_opts so = nb_sched_defaults(sk);
    so.total_steps = 20;
    so.t_0 = 3;
    so.t_mult = 2;
    so.t_max = 12;
    nb_sched *s = kind == NB_LBFGS ? NULL : nb_sched_new(sk, opt, &so);
    CHECK(opt && (s || kind == NB_LBFGS), "%s: %s", nb_optim_kind_name(kind), nb_error_message());
    double first = NAN, last = NAN;
    for (int it = 0; opt && it < 10; it++) {
        long before = total_calls(&g_count);
        double loss = NAN;
        if (kind == NB_LBFGS) {
            CHECK(nb_optim_step_closure(opt, run_closure, &r, &loss) == NB_OK, "lbfgs: %s", nb_error_message());
        } else {
            nb_optim_zero_grad(opt);
            nb_tensor *l = run_loss(&r);
            loss = l ? nb_tensor_item(l) : NAN;
            CHECK(l && nb_backward(l, NULL, 0) == NB_OK && nb_optim_step(opt) == NB_OK, "%s: %s",
                  nb_optim_kind_name(kind), nb_error_message());
            nb_tape_reset(r.tape);
            nb_sched_step(s, loss);
        }
        long calls = total_calls(&g_count) - before;
        if (it > 0)
            CHECK(calls == 0, "%s: step %d made %ld allocator calls, expected 0", nb_optim_kind_name(kind), it + 1, calls);
        if (it == 0) first = loss;
        last = loss;
    }
    CHECK(last < first, "%s: loss %g -> %g", nb_optim_kind_name(kind), first, last);
    nb_sched_free(s);
    nb_optim_free(opt);
    nb_tape_end(r.tape);
    nb_tape_free(r.tape);
    nb_tensor_free(r.x);
    nb_tensor_free(r.t);
    nb_params_free(r.ps);
    CHECK_NO_ERROR();
}

int main(void)
{
    nb_allocator a = {count_alloc, count_realloc, count_free, &g_count};
    nb_set_allocator(&a);

    train("f64 small", step, NB_F64, 16, 8, 16, 2, 0.2, 0);
    train("f32 small", step, NB_F32, 16, 8, 16, 2, 0.2, 0);
    /* activations of [512,256] f64 (1 MiB each): the first step spreads over several arena chunks, the
     * reset coalesces them, and the later steps fit in one */
    train("f64 multi-chunk", step, NB_F64, 512, 32, 256, 4, 0.2, 1);
    /* double backward every step: create-graph gradients live on the tape too */
    train("f64 gradient penalty", step_penalty, NB_F64, 16, 8, 16, 2, 0.2, 0);
    /* a CNN (conv, batch norm, pooling, dropout) trained by AdamW */
    train_cnn("cnn f32", NB_F32);
    train_cnn("cnn f64", NB_F64);
    /* every optimizer, with groups and each kind of schedule in turn (L-BFGS: after its first step) */
    for (int k = 0; k < NB_OPTIM_KIND_COUNT; k++)
        train_optim((nb_optim_kind)k, (nb_sched_kind)(k % NB_SCHED_KIND_COUNT == NB_SCHED_LAMBDA
                                                          ? NB_SCHED_ONECYCLE
                                                          : k % NB_SCHED_KIND_COUNT));
    train_optim(NB_ADAM, NB_SCHED_WARM_RESTARTS);
    train_optim(NB_SGD, NB_SCHED_ONECYCLE);

    /* every object freed: nothing live, and every free named the right size */
    CHECK(!g_count.overflow, "tracking table overflowed");
    CHECK(g_count.n_live == 0 && g_count.live_bytes == 0, "%d blocks (%zu bytes) still live after freeing all",
          g_count.n_live, g_count.live_bytes);
    CHECK(g_count.size_mismatches == 0, "%ld frees named the wrong size", g_count.size_mismatches);
    CHECK(g_count.unknown_frees == 0, "%ld frees of blocks the allocator never gave out", g_count.unknown_frees);
    CHECK(g_count.allocs > 0 && g_count.frees > 0, "the allocator was used");

    /* names and gradients of a leaf are freed with it; leaf headers come from a pool (released once no
     * leaf and no tape is live), so with another leaf alive a leaf costs its data and its name */
    nb_tensor *keep = nb_tensor_zeros(NB_F64, NB_SHAPE(1));
    long before = g_count.allocs;
    nb_tensor *t = nb_tensor_zeros(NB_F64, NB_SHAPE(3));
    nb_tensor_set_name(t, "weights");
    CHECK(g_count.allocs == before + 2, "a leaf and its name: two allocations (%ld)", g_count.allocs - before);
    nb_tensor_free(t);
    nb_tensor_free(keep);
    CHECK(g_count.n_live == 0, "leaf and name freed, and the header pool released");

    nb_set_allocator(NULL);
    /* with the default allocator restored, the counter sees nothing */
    long calls = total_calls(&g_count);
    nb_tensor *u = nb_tensor_ones(NB_F32, NB_SHAPE(4));
    nb_tape *tp = nb_tape_new();
    nb_tape_free(tp);
    nb_tensor_free(u);
    CHECK(total_calls(&g_count) == calls, "default allocator restored");
    CHECK_NO_ERROR();
    return nbt_report("alloc");
}
