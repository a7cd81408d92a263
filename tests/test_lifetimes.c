/* Lifetimes, misuse and threads (issue 9): what nabla detects, and what it documents as undetected.
 *
 *   create-graph backward recording onto the tape it walks (finding 1)
 *   results used after their tape was reset: accessors, ops, backward, grad, hooks, DOT (finding 2)
 *   a result of another tape, reset between recording and backward (finding 2)
 *   backward after a recorded leaf was freed (finding 5); reset or free of a tape from a hook
 *   a backward on one thread after one on another; N threads sharing read-only parameters (finding 3)
 *
 * Each case asserts the documented outcome: NB_ERR_STATE with a message naming the call, or (for the
 * limits nabla.h states) the documented behaviour, never a crash. */
#include "nbtest.h"

#include <pthread.h>
#include <stdlib.h>

static nb_tensor *scalar_leaf(double v, int requires_grad)
{
    nb_tensor *t = nb_tensor_full(NB_F64, 0, NULL, v);
    if (requires_grad) nb_tensor_set_requires_grad(t, 1);
    return t;
}

/* ---- finding 1: rules that record onto the tape being walked ---------------------------------- */

/* About 180 ops recorded first, so that the node array is close to growing, then nb_grad with
 * NB_CREATE_GRAPH over a 20-step tanh/sigmoid chain: every rule records onto the same tape, the node
 * array moves, and the sweep must not read the old one. The value is checked against the chain rule
 * written out by hand, and the second derivative against central differences of the first. */
static double chain_value(double x, double *d1)
{
    double y = x, d = 1;
    for (int i = 0; i < 180; i++) {
        y = 0.5 * y + 0.1;
        d *= 0.5;
    }
    for (int i = 0; i < 20; i++) {
        if (i % 2) {
            y = tanh(y);
            d *= 1 - y * y;
        } else {
            y = 1 / (1 + exp(-y));
            d *= y * (1 - y);
        }
    }
    if (d1) *d1 = d;
    return y;
}

static void test_create_graph_growth(void)
{
    nb_tensor *x = scalar_leaf(0.3, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *y = x;
    for (int i = 0; i < 180; i++) y = nb_affine(y, 0.5, 0.1);
    nb_tensor *z = y;
    for (int i = 0; i < 20; i++) z = i % 2 ? nb_tanh(z) : nb_sigmoid(z);
    nb_tensor *g = NULL, *gg = NULL;
    size_t before = nb_tape_node_count(t);
    CHECK(nb_grad(z, NULL, 1, &x, &g, NB_CREATE_GRAPH) == NB_OK, "create-graph grad: %s", nb_error_message());
    CHECK(nb_tape_node_count(t) > 256 && before < 256, "the backward grew the node array past 256 (%zu -> %zu)",
          before, nb_tape_node_count(t));
    double d1;
    chain_value(0.3, &d1);
    CHECK_CLOSE(nb_tensor_item(g), d1, 1e-12, 0);
    /* and once more through the recorded backward (the array grows again) */
    CHECK(nb_grad(g, NULL, 1, &x, &gg, NB_CREATE_GRAPH) == NB_OK, "second order: %s", nb_error_message());
    double h = 1e-5, dp, dm;
    chain_value(0.3 + h, &dp);
    chain_value(0.3 - h, &dm);
    CHECK_CLOSE(nb_tensor_item(gg), (dp - dm) / (2 * h), 1e-5, 1e-12);
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
}

/* Two recurrent cells over one input, every parameter an input of the check: the gradgradcheck's
 * create-graph backward records hundreds of nodes while it walks the tape. */
typedef struct two_cells {
    nb_rnn_cell a, b;
} two_cells;

static nb_tensor *two_cells_f(void *user, nb_tensor *const *in)
{
    two_cells *c = user;
    nb_rnn_cell a = c->a, b = c->b;
    a.w_ih = in[1], a.w_hh = in[2], a.b_ih = in[3], a.b_hh = in[4];
    b.w_ih = in[5], b.w_hh = in[6], b.b_ih = in[7], b.b_hh = in[8];
    /* four steps of each cell over the same input: the forward records about 150 nodes, and the
     * create-graph backward grows the node array past 256 while it walks it */
    nb_tensor *ha = nb_full(NB_F64, NB_SHAPE(2, a.hidden), 0.1), *hb = ha, *ca = ha, *cb = ha;
    for (int step = 0; step < 4; step++) {
        if (a.kind == NB_GRU) {
            ha = nb_gru_cell(&a, in[0], ha);
            hb = nb_gru_cell(&b, in[0], hb);
        } else if (nb_lstm_cell(&a, in[0], ha, ca, &ha, &ca) != NB_OK ||
                   nb_lstm_cell(&b, in[0], hb, cb, &hb, &cb) != NB_OK) {
            return NULL;
        }
    }
    nb_tensor *y = nb_sum_all(nb_mul(ha, hb));
    return a.kind == NB_GRU ? y : nb_add(y, nb_sum_all(nb_mul(ca, cb)));
}

static void test_two_cells_gradgradcheck(nb_rnn_kind kind, int64_t hidden)
{
    nb_params *p = nb_params_new();
    nb_rng rng;
    nb_rng_seed(&rng, 7);
    nb_layer_opts o = {.dtype = NB_F64};
    two_cells c;
    nb_rnn_cell_init(&c.a, p, "a", kind, 3, hidden, &o, &rng);
    nb_rnn_cell_init(&c.b, p, "b", kind, 3, hidden, &o, &rng);
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(2, 3), -1, 1, &rng);
    nb_tensor_set_requires_grad(x, 1);
    nb_tensor *in[9] = {x, c.a.w_ih, c.a.w_hh, c.a.b_ih, c.a.b_hh, c.b.w_ih, c.b.w_hh, c.b.b_ih, c.b.b_hh};
    CHECK_NO_ERROR();
    nb_gradcheck_report rep;
    nb_status st = nb_gradgradcheck(two_cells_f, &c, 9, in, NULL, &rep);
    CHECK(st == NB_OK && rep.ok, "gradgradcheck of two %s cells (hidden %lld): %s", kind == NB_GRU ? "GRU" : "LSTM",
          (long long)hidden, rep.message);
    nb_error_clear();
    nb_tensor_free(x);
    nb_params_free(p);
}

static void test_two_grus(void) { test_two_cells_gradgradcheck(NB_GRU, 9); }
static void test_two_lstms(void) { test_two_cells_gradgradcheck(NB_LSTM, 6); }

/* ---- finding 2: results used after their tape was reset --------------------------------------- */

static nb_tensor *identity_hook(nb_tensor *g, void *user)
{
    (void)user;
    return g;
}

static void test_stale_results(void)
{
    nb_tensor *w = scalar_leaf(2.0, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *y = nb_mul_scalar(w, 3.0);  /* recorded in generation 1 */
    nb_tensor *c = nb_full(NB_F64, 0, NULL, 7.0); /* a tape constant */
    CHECK(nb_tape_generation(t) == 1, "a new tape is at generation 1");
    nb_tape_reset(t);
    CHECK(nb_tape_generation(t) == 2, "a reset bumps the generation");
    /* the next step records as many results again: without the check, y and c would read them */
    nb_tensor *y2 = nb_mul_scalar(w, 5.0);
    nb_tensor *c2 = nb_full(NB_F64, 0, NULL, 11.0);
    CHECK(y2 && c2 && y2 != y && c2 != c, "the next step runs, its results elsewhere");

    double v;
    nb_error_clear();
    v = nb_tensor_item(y);
    CHECK(v != v, "nb_tensor_item of a stale result is NaN (%g)", v);
    CHECK(nb_error_code() == NB_ERR_STATE &&
          strstr(nb_error_message(), "nb_tensor_item: tensor belongs to a tape that was reset (recorded in generation 1, "
                                     "tape is at 2)"), "message: %s", nb_error_message());
    nb_error_clear();
    CHECK_ERROR(nb_backward(y, NULL, 0) != NB_OK, NB_ERR_STATE, "nb_backward: tensor belongs to a tape that was reset");
    nb_tensor *g;
    CHECK_ERROR(nb_grad(y, NULL, 1, &w, &g, 0) != NB_OK, NB_ERR_STATE, "nb_grad: tensor belongs to a tape that was reset");
    CHECK_ERROR(nb_add(y, w) == NULL, NB_ERR_STATE, "nb_add: tensor belongs to a tape that was reset");
    CHECK_ERROR(nb_tanh(c) == NULL, NB_ERR_STATE, "nb_tanh: tensor belongs");
    CHECK_ERROR(nb_matmul(c, c) == NULL, NB_ERR_STATE, "nb_matmul: tensor belongs to a tape that was reset");
    CHECK_ERROR(nb_mul(y2, y) == NULL, NB_ERR_STATE, "nb_mul: tensor belongs to a tape that was reset");
    CHECK_ERROR(nb_reshape(y, 1, (const int64_t[]){1}) == NULL, NB_ERR_STATE, "nb_reshape: tensor belongs");
    CHECK_ERROR(nb_zeros_like(y) == NULL, NB_ERR_STATE, "nb_zeros_like: tensor belongs");
    CHECK_ERROR(nb_tensor_set_hook(y, identity_hook, NULL) != NB_OK, NB_ERR_STATE, "nb_tensor_set_hook: tensor");
    CHECK_ERROR(nb_tensor_numel(y) == 0, NB_ERR_STATE, "nb_tensor_numel: tensor belongs");
    CHECK_ERROR(nb_tensor_shape(c) == NULL, NB_ERR_STATE, "nb_tensor_shape: tensor belongs");
    CHECK_ERROR(nb_tensor_data(c) == NULL, NB_ERR_STATE, "nb_tensor_data: tensor belongs");
    CHECK_ERROR(nb_tensor_clone(c) == NULL, NB_ERR_STATE, "nb_tensor_clone: tensor belongs");
    CHECK_ERROR(nb_tensor_grad(y) == NULL, NB_ERR_STATE, "nb_tensor_grad: tensor belongs");
    nb_tensor *wrt[1] = {y};
    nb_tensor *z = nb_mul_scalar(w, 2.0);
    CHECK_ERROR(nb_grad(z, NULL, 1, wrt, &g, 0) != NB_OK, NB_ERR_STATE, "nb_grad: tensor belongs");
    FILE *devnull = fopen("/dev/null", "w");
    CHECK_ERROR(nb_tape_write_dot(t, y, devnull) != NB_OK, NB_ERR_STATE, "nb_tape_write_dot: tensor belongs");
    fclose(devnull);
    /* the current step is unaffected */
    CHECK(nb_backward(nb_add(z, y2), NULL, 0) == NB_OK && nb_tensor_item(nb_tensor_grad(w)) == 7.0,
          "the current step works: %s", nb_error_message());
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(w);
}

/* A result kept across two resets whose header slot a later result took: nabla.h documents that such
 * a pointer then reads that later result (it cannot tell them apart); it never reads other bytes. A
 * result kept across two resets whose slot was not reused is still reported. */
static void test_stale_limits(void)
{
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *a = nb_full(NB_F64, 0, NULL, 1.0);
    nb_tensor *b = nb_full(NB_F64, 0, NULL, 2.0); /* the second slot of generation 1's region */
    nb_tape_reset(t);
    nb_tape_reset(t); /* generation 3 uses generation 1's region again */
    nb_tensor *a3 = nb_full(NB_F64, 0, NULL, 3.0); /* takes a's slot */
    CHECK(a3 == a, "the region is reused from its first slot (a3 %p, a %p)", (void *)a3, (void *)a);
    nb_error_clear();
    CHECK(nb_tensor_item(a) == 3.0 && nb_error_code() == NB_OK, "documented: a pointer whose slot was reused reads "
          "the new result");
    CHECK_ERROR(nb_tensor_item(b) != nb_tensor_item(b), NB_ERR_STATE, "recorded in generation 1, tape is at 3");
    nb_tape_end(t);
    nb_tape_free(t);
}

/* An op whose input is a result of another tape (held constant), that tape reset before the
 * backward: the backward reads the input's values (d(w c)/dw = c), so it must refuse. */
static void test_reset_other_tape(void)
{
    nb_tensor *x = scalar_leaf(3.33, 0);
    nb_tensor *w = scalar_leaf(1.5, 1);
    nb_tape *ta = nb_tape_new(), *tb = nb_tape_new();
    nb_tape_begin(ta);
    nb_tensor *c = nb_mul_scalar(x, 1.0); /* a constant of tape a */
    nb_tape_end(ta);
    nb_tape_begin(tb);
    nb_tensor *y = nb_mul(w, c);
    nb_tape_end(tb);
    nb_tape_reset(ta);
    nb_tape_begin(ta);
    nb_tensor *junk = nb_full(NB_F64, 0, NULL, 1001.2); /* what now lies where c's data was */
    nb_tape_end(ta);
    CHECK(junk != NULL, "tape a records again");
    nb_tape_begin(tb);
    CHECK_ERROR(nb_backward(y, NULL, NB_RETAIN_GRAPH) != NB_OK, NB_ERR_STATE,
                "input 1 of node 0 (mul) belongs to a tape that was reset after it was recorded");
    CHECK(nb_tensor_grad(w) == NULL, "no gradient was stored");
    nb_tape_end(tb);
    nb_tape_free(ta);
    nb_tape_free(tb);
    nb_tensor_free(x);
    nb_tensor_free(w);
}

/* ---- finding 5 (engine part): a leaf freed while a live tape records it ----------------------- */

static void test_freed_leaf(void)
{
    nb_tensor *a = scalar_leaf(2.0, 1), *b = scalar_leaf(3.0, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *y = nb_mul(a, b);
    nb_tensor_free(b);
    CHECK_ERROR(nb_backward(y, NULL, 0) != NB_OK, NB_ERR_STATE, "input 1 of node 0 (mul) was freed after it was recorded");
    CHECK(nb_tensor_grad(a) == NULL, "nothing stored");
    /* the freed pointer itself (its header stays in the pool while a tape lives) */
    CHECK_ERROR(nb_add(b, a) == NULL, NB_ERR_STATE, "nb_add: tensor is a leaf that was freed");
    CHECK_ERROR(nb_tensor_item(b) != nb_tensor_item(b), NB_ERR_STATE, "nb_tensor_item: tensor is a leaf that was freed");
    /* a new leaf may take the freed header: a node that recorded the old one still refuses */
    nb_tensor *c = scalar_leaf(4.0, 1);
    CHECK_ERROR(nb_backward(y, NULL, 0) != NB_OK, NB_ERR_STATE, "was freed after it was recorded");
    nb_tensor *g[1];
    CHECK_ERROR(nb_grad(y, NULL, 1, &a, g, 0) != NB_OK, NB_ERR_STATE, "was freed after it was recorded");
    FILE *devnull = fopen("/dev/null", "w");
    CHECK_ERROR(nb_tape_write_dot(t, y, devnull) != NB_OK, NB_ERR_STATE, "was freed after it was recorded");
    fclose(devnull);
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(a);
    nb_tensor_free(c);
}

/* A gradient hook that resets (or frees) the tape the backward walks: refused, the backward goes on. */
static nb_tensor *resetting_hook(nb_tensor *g, void *user)
{
    nb_tape *t = user;
    nb_tape_reset(t);
    nb_tape_end(t);
    nb_tape_free(t);
    return g;
}

static void test_reset_from_hook(void)
{
    nb_tensor *w = scalar_leaf(2.0, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *y = nb_mul_scalar(w, 3.0);
    nb_tensor_set_hook(w, resetting_hook, t);
    nb_error_clear();
    nb_status st = nb_backward(y, NULL, 0);
    CHECK(st == NB_OK, "the backward itself completes (%s)", nb_status_name(st));
    CHECK(nb_error_code() == NB_ERR_STATE && strstr(nb_error_message(), "nb_tape_reset: a backward is running"),
          "the reset from the hook was refused: %s", nb_error_message());
    nb_error_clear();
    CHECK(nb_tensor_item(nb_tensor_grad(w)) == 3.0, "gradient stored");
    nb_tensor_set_hook(w, NULL, NULL);
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(w);
}

/* ---- finding 3: threads ------------------------------------------------------------------------ */

typedef struct handoff {
    nb_tensor *w;
    double scale;
    nb_status st;
} handoff;

static void *backward_on_own_tape(void *arg)
{
    handoff *h = arg;
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    h->st = nb_backward(nb_mul_scalar(h->w, h->scale), NULL, 0);
    nb_tape_end(t);
    nb_tape_free(t);
    return NULL;
}

/* A backward on thread A, then one on thread B (one after the other): both contributions arrive. */
static void test_thread_handoff(void)
{
    nb_tensor *w = scalar_leaf(1.0, 1);
    handoff a = {w, 2.0, NB_ERR_ARG}, b = {w, 3.0, NB_ERR_ARG};
    pthread_t th;
    pthread_create(&th, NULL, backward_on_own_tape, &a);
    pthread_join(th, NULL);
    pthread_create(&th, NULL, backward_on_own_tape, &b);
    pthread_join(th, NULL);
    CHECK(a.st == NB_OK && b.st == NB_OK, "both backwards succeed");
    CHECK(nb_tensor_item(nb_tensor_grad(w)) == 5.0, "w.grad = 2 + 3, got %g", nb_tensor_item(nb_tensor_grad(w)));
    /* and on this thread too */
    backward_on_own_tape(&(handoff){w, 4.0, NB_OK});
    CHECK(nb_tensor_item(nb_tensor_grad(w)) == 9.0, "w.grad = 9, got %g", nb_tensor_item(nb_tensor_grad(w)));
    nb_tensor_free(w);
}

/* N threads, each with its own tape, differentiate a small network with respect to parameters they
 * all share (read-only: nb_grad writes nothing into a leaf) over many steps; the gradients must equal
 * the serial run's bit for bit. */
#define N_THREADS 4
#define N_STEPS 200

typedef struct shared_net {
    nb_tensor *w1, *b1, *w2;
} shared_net;

typedef struct worker {
    const shared_net *net;
    int id;
    double out[N_STEPS][3]; /* per step: sum of each parameter's gradient, weighted by position */
    nb_status st;
} worker;

static double weighted(const nb_tensor *g)
{
    double s = 0;
    for (int64_t i = 0; i < nb_tensor_numel(g); i++) s += (1.0 + (double)i / 7) * nb_tensor_get(g, i);
    return s;
}

static void *worker_run(void *arg)
{
    worker *wk = arg;
    const shared_net *n = wk->net;
    nb_tape *t = nb_tape_new();
    nb_rng rng;
    nb_rng_seed(&rng, 100 + (uint64_t)wk->id);
    wk->st = NB_OK;
    for (int s = 0; s < N_STEPS && wk->st == NB_OK; s++) {
        nb_tape_begin(t);
        nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(5, 4), -1, 1, &rng);
        nb_tensor *h = nb_tanh(nb_add(nb_matmul(x, n->w1), n->b1));
        nb_tensor *loss = nb_sum_all(nb_square(nb_matmul(h, n->w2)));
        /* odd threads reach the leaves in another order (b1 first), so their slot numbers differ */
        if (wk->id % 2) loss = nb_add(loss, nb_mul_scalar(nb_sum_all(n->b1), 0.5));
        nb_tensor *params[3] = {n->w1, n->b1, n->w2}, *g[3];
        wk->st = nb_grad(loss, NULL, 3, params, g, s % 3 == 2 ? NB_CREATE_GRAPH : 0);
        for (int i = 0; i < 3 && wk->st == NB_OK; i++) wk->out[s][i] = weighted(g[i]);
        nb_tape_end(t);
        nb_tape_reset(t);
        nb_tensor_free(x);
    }
    nb_tape_free(t);
    return NULL;
}

static void test_threads_shared_params(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 5);
    shared_net n = {nb_tensor_uniform(NB_F64, NB_SHAPE(4, 6), -1, 1, &rng),
                    nb_tensor_uniform(NB_F64, NB_SHAPE(6), -1, 1, &rng),
                    nb_tensor_uniform(NB_F64, NB_SHAPE(6, 2), -1, 1, &rng)};
    nb_tensor_set_requires_grad(n.w1, 1);
    nb_tensor_set_requires_grad(n.b1, 1);
    nb_tensor_set_requires_grad(n.w2, 1);
    static worker serial[N_THREADS], par[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        serial[i] = (worker){.net = &n, .id = i};
        worker_run(&serial[i]);
    }
    pthread_t th[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        par[i] = (worker){.net = &n, .id = i};
        pthread_create(&th[i], NULL, worker_run, &par[i]);
    }
    for (int i = 0; i < N_THREADS; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N_THREADS; i++) {
        CHECK(serial[i].st == NB_OK && par[i].st == NB_OK, "thread %d: %s / %s", i, nb_status_name(serial[i].st),
              nb_status_name(par[i].st));
        CHECK(memcmp(serial[i].out, par[i].out, sizeof serial[i].out) == 0,
              "thread %d: gradients differ from the serial run", i);
    }
    CHECK(nb_tensor_grad(n.w1) == NULL, "nb_grad wrote nothing into the shared leaves");
    nb_tensor_free(n.w1);
    nb_tensor_free(n.b1);
    nb_tensor_free(n.w2);
}

/* Every case, or only those named on the command line (to run one at a time). */
int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        void (*run)(void);
    } cases[] = {
        {"create_graph_growth", test_create_graph_growth},
        {"two_grus", test_two_grus},
        {"two_lstms", test_two_lstms},
        {"stale_results", test_stale_results},
        {"stale_limits", test_stale_limits},
        {"reset_other_tape", test_reset_other_tape},
        {"freed_leaf", test_freed_leaf},
        {"reset_from_hook", test_reset_from_hook},
        {"thread_handoff", test_thread_handoff},
        {"threads_shared_params", test_threads_shared_params},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int run = argc < 2;
        for (int a = 1; a < argc; a++) run |= !strcmp(argv[a], cases[c].name);
        if (run) cases[c].run();
    }
    return nbt_report("lifetimes");
}
