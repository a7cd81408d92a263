/* Randomized stress test of the engine (issue 9). Each case draws a small random program over three
 * f64 leaves (X [2,3], W [3,3], B [3]) from a seeded generator and runs it in one of several modes:
 *
 *   backward      nb_backward, leaf gradients against central finite differences
 *   grad          nb_grad, the same comparison
 *   create-graph  nb_grad with NB_CREATE_GRAPH, then the gradient of <grad, v>: against differences of
 *                 the first-order gradient (a Hessian-vector product)
 *   hooks         a gradient hook on a leaf (doubling its gradient) and on an intermediate (counting),
 *                 post-accumulate hooks on every leaf (once per pass, .grad complete when called)
 *   stale         a result used after its tape was reset, in one of eight ways: NB_ERR_STATE every time
 *   freed leaf    a recorded leaf freed before the backward: NB_ERR_STATE
 *   no grad       the program run in a no-grad scope: the backward refuses its output
 *   threads       two threads run the program on their own tapes and nb_grad with respect to the shared
 *                 leaves: bit for bit the serial result
 *
 * Some instructions run in a no-grad scope inside the program (their value is a constant for the
 * gradient, and for the finite differences too). The program's output uses every value it computes.
 *
 *   test_stress [seed [case]]      (or NB_STRESS_SEED / NB_STRESS_CASE): the seed, and one case only
 *
 * It prints its seed and the number of cases; a failure names the case, so that
 * `test_stress SEED CASE` runs it alone. The run stops after 15 seconds. */
#include "nbtest.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

enum { MAX_INSTR = 12, MAX_VALUES = 1 + MAX_INSTR };
enum { OP_TANH, OP_SIGMOID, OP_SIN, OP_MUL, OP_ADD, OP_SUB, OP_SQUARE, OP_ADD_BIAS, OP_MATMUL, OP_ADDMM,
       OP_ROTATE, OP_INDEX, OP_VIEWS, OP_ROWSUM, OP_AFFINE, OP_WHERE, OP_NOGRAD, OP_CUSTOM, OP_LOGSOFTMAX,
       OP_COUNT };
enum { M_BACKWARD, M_GRAD, M_CREATE_GRAPH, M_HOOKS, M_STALE, M_FREED, M_NOGRAD, M_THREADS, M_COUNT };
static const char *const mode_names[M_COUNT] = {"backward", "grad", "create-graph", "hooks", "stale",
                                                "freed leaf", "no grad", "threads"};

typedef struct instr {
    int op, a, b; /* operands: indices of earlier values (0 is X) */
    double p, q;
} instr;

typedef struct program {
    int n;
    instr code[MAX_INSTR];
    double frozen[MAX_INSTR][6]; /* values of OP_NOGRAD instructions in the base evaluation */
    int use_frozen;              /* finite differences: no-grad values stay what they were */
    int uses_wb[2];              /* whether W, B are read */
} program;

typedef struct leaves {
    nb_tensor *x, *w, *b;
} leaves;

/* ---- the custom op: y = x^3 / 3, dy = x^2 dx ---------------------------------------------------- */

static nb_status cube_fw(void *user, int n_in, const nb_tensor *const *in, nb_tensor *out)
{
    (void)user, (void)n_in;
    const double *x = nb_tensor_cdata(in[0]);
    double *y = nb_tensor_data(out);
    for (int64_t i = 0; i < nb_tensor_numel(out); i++) y[i] = x[i] * x[i] * x[i] / 3;
    return NB_OK;
}
static nb_status cube_bw(void *user, int n_in, nb_tensor *const *in, nb_tensor *out, nb_tensor *gout, nb_tensor **gin)
{
    (void)user, (void)n_in, (void)out;
    gin[0] = nb_mul(gout, nb_square(in[0]));
    return gin[0] ? NB_OK : nb_error_code();
}
static const nb_custom_op k_cube = {"cube3", cube_fw, cube_bw, NULL, NULL};

/* ---- drawing and running a program ------------------------------------------------------------- */

static void draw_program(program *pg, nb_rng *rng)
{
    memset(pg, 0, sizeof *pg);
    pg->n = 2 + (int)nb_rng_below(rng, MAX_INSTR - 1);
    for (int i = 0; i < pg->n; i++) {
        instr *in = &pg->code[i];
        in->op = (int)nb_rng_below(rng, OP_COUNT);
        in->a = (int)nb_rng_below(rng, (uint64_t)i + 1);
        in->b = (int)nb_rng_below(rng, (uint64_t)i + 1);
        in->p = 0.3 + 0.7 * nb_rng_uniform(rng);
        in->q = nb_rng_uniform(rng) - 0.5;
        if (in->op == OP_MATMUL || in->op == OP_ADDMM) pg->uses_wb[0] = 1;
        if (in->op == OP_ADD_BIAS || in->op == OP_ADDMM) pg->uses_wb[1] = 1;
    }
}

/* The program's output on the current tape: sum_k (k + 1) / 10 * sum(v_k * V), every value v_k [2,3]
 * (NULL on error). values[] receives the values (for stale uses and hooks). */
static nb_tensor *run_program(program *pg, const leaves *lv, nb_tensor **values)
{
    static const double mask[6] = {1, 0, 0, 1, 1, 0};
    static const double vw[6] = {0.7, -1.1, 0.4, 0.9, -0.3, 1.3};
    static const int64_t idx3[3] = {2, 0, 2};
    nb_tensor *v[MAX_VALUES];
    v[0] = lv->x;
    for (int i = 0; i < pg->n; i++) {
        const instr *in = &pg->code[i];
        nb_tensor *a = v[in->a], *b = v[in->b], *r = NULL;
        switch (in->op) {
        case OP_TANH: r = nb_tanh(a); break;
        case OP_SIGMOID: r = nb_sigmoid(a); break;
        case OP_SIN: r = nb_sin(a); break;
        case OP_MUL: r = nb_mul(a, b); break;
        case OP_ADD: r = nb_add(a, b); break;
        case OP_SUB: r = nb_sub(a, b); break;
        case OP_SQUARE: r = nb_mul_scalar(nb_square(a), 0.5); break;
        case OP_ADD_BIAS: r = nb_add(a, lv->b); break;
        case OP_MATMUL: r = nb_mul_scalar(nb_matmul(a, lv->w), 0.5); break;
        case OP_ADDMM: r = nb_addmm(lv->b, a, lv->w, NB_TRANS_B); break;
        case OP_ROTATE: {
            nb_tensor *p2[2] = {nb_slice(a, 1, 1, 3, 1), nb_slice(a, 1, 0, 1, 1)};
            r = nb_concat(2, p2, 1);
            break;
        }
        case OP_INDEX: r = nb_index_select(a, 1, nb_constant(NB_I64, NB_SHAPE(3), idx3)); break;
        case OP_VIEWS: r = nb_reshape(nb_tanh(nb_transpose(nb_reshape(a, NB_SHAPE(3, 2)), 0, 1)), NB_SHAPE(2, 3)); break;
        case OP_ROWSUM: r = nb_mul_scalar(nb_add(a, nb_sum(b, NB_AXES(1), 1)), 0.5); break;
        case OP_AFFINE: r = nb_affine(a, in->p, in->q); break;
        case OP_WHERE: r = nb_where(nb_constant(NB_F64, NB_SHAPE(2, 3), mask), a, nb_mul_scalar(b, in->p)); break;
        case OP_NOGRAD: {
            nb_tensor *c;
            if (pg->use_frozen) {
                c = nb_constant(NB_F64, NB_SHAPE(2, 3), pg->frozen[i]);
            } else {
                nb_no_grad_begin();
                c = nb_tanh(nb_mul(a, b));
                nb_no_grad_end();
                if (c) memcpy(pg->frozen[i], nb_tensor_cdata(c), sizeof pg->frozen[i]);
            }
            r = nb_add(a, c);
            break;
        }
        case OP_CUSTOM: r = nb_custom(&k_cube, 1, &a, NB_F64, NB_SHAPE(2, 3)); break;
        case OP_LOGSOFTMAX: r = nb_log_softmax(a, 1); break;
        default: break;
        }
        if (!r) return NULL;
        v[i + 1] = r;
    }
    nb_tensor *vt = nb_constant(NB_F64, NB_SHAPE(2, 3), vw), *out = NULL;
    for (int k = 0; k <= pg->n; k++) {
        nb_tensor *term = nb_mul_scalar(nb_sum_all(nb_mul(v[k], vt)), (k + 1) * 0.1);
        out = out ? nb_add(out, term) : term;
    }
    if (values)
        for (int k = 0; k <= pg->n; k++) values[k] = v[k];
    return out;
}

/* The output's value on a scratch tape (no gradient recorded). */
static double value_of(program *pg, const leaves *lv, nb_tape *t)
{
    nb_tape_reset(t);
    nb_tape_begin(t);
    nb_no_grad_begin();
    nb_tensor *y = run_program(pg, lv, NULL);
    double v = y ? nb_tensor_item(y) : NAN;
    nb_no_grad_end();
    nb_tape_end(t);
    return v;
}

/* Central differences of the output with respect to leaf l's elements into fd. */
static void finite_diff(program *pg, const leaves *lv, nb_tensor *l, nb_tape *t, double *fd)
{
    pg->use_frozen = 1;
    double *x = nb_tensor_data(l);
    const double h = 1e-6;
    for (int64_t i = 0; i < nb_tensor_numel(l); i++) {
        double orig = x[i];
        x[i] = orig + h;
        double fp = value_of(pg, lv, t);
        x[i] = orig - h;
        double fm = value_of(pg, lv, t);
        x[i] = orig;
        fd[i] = (fp - fm) / (2 * h);
    }
    pg->use_frozen = 0;
}

/* ---- checking ----------------------------------------------------------------------------------- */

static uint64_t g_seed;
static long g_case;

#define CASE_CHECK(cond, ...)                                                                          \
    do {                                                                                               \
        nbt_checks++;                                                                                  \
        if (!(cond)) {                                                                                 \
            nbt_failures++;                                                                            \
            fprintf(stderr, "%s:%d: FAIL (seed %llu case %ld, mode %s): ", __FILE__, __LINE__,          \
                    (unsigned long long)g_seed, g_case, g_mode);                                       \
            fprintf(stderr, __VA_ARGS__);                                                              \
            fprintf(stderr, "\n");                                                                     \
        }                                                                                              \
    } while (0)

static const char *g_mode = "";

static int close_enough(double a, double b, double rtol, double atol)
{
    return fabs(a - b) <= atol + rtol * fabs(b);
}

/* grads[3] (X, W, B; NULL where unused) against finite differences, scaled by scale[l] */
static void compare_fd(program *pg, leaves *lv, nb_tensor *const *grads, const double *scale, nb_tape *scratch)
{
    nb_tensor *ls[3] = {lv->x, lv->w, lv->b};
    double fd[9];
    for (int l = 0; l < 3; l++) {
        if (!grads[l]) continue;
        finite_diff(pg, lv, ls[l], scratch, fd);
        for (int64_t i = 0; i < nb_tensor_numel(ls[l]); i++) {
            double g = nb_tensor_get(grads[l], i), want = scale[l] * fd[i];
            CASE_CHECK(close_enough(g, want, 1e-5, 1e-6), "leaf %d element %lld: gradient %.12g, finite differences "
                       "%.12g", l, (long long)i, g, want);
        }
    }
}

typedef struct hook_log {
    int calls;
    double grad_sum_at_call;
} hook_log;

static nb_tensor *double_hook(nb_tensor *g, void *user)
{
    (void)user;
    return nb_mul_scalar(g, 2.0);
}
static nb_tensor *count_hook(nb_tensor *g, void *user)
{
    ((hook_log *)user)->calls++;
    return g;
}
static nb_status post_hook(nb_tensor *leaf, void *user)
{
    hook_log *lg = user;
    lg->calls++;
    nb_tensor *g = nb_tensor_grad(leaf);
    lg->grad_sum_at_call = 0;
    for (int64_t i = 0; i < nb_tensor_numel(g); i++) lg->grad_sum_at_call += nb_tensor_get(g, i);
    return NB_OK;
}

typedef struct thread_job {
    program *pg;
    const leaves *lv;
    double grads[3][9];
    nb_status st;
} thread_job;

static void grads_of(program *pg, const leaves *lv, nb_tape *t, double out[3][9], nb_status *st)
{
    memset(out, 0, 3 * sizeof out[0]);
    nb_tape_reset(t);
    nb_tape_begin(t);
    nb_tensor *y = run_program(pg, lv, NULL);
    nb_tensor *wrt[3] = {lv->x, lv->w, lv->b}, *g[3];
    *st = y ? nb_grad(y, NULL, 3, wrt, g, 0) : nb_error_code();
    for (int l = 0; l < 3 && *st == NB_OK; l++)
        for (int64_t i = 0; i < nb_tensor_numel(wrt[l]); i++) out[l][i] = nb_tensor_get(g[l], i);
    nb_tape_end(t);
}

static void *thread_main(void *arg)
{
    thread_job *j = arg;
    nb_tape *t = nb_tape_new();
    grads_of(j->pg, j->lv, t, j->grads, &j->st);
    nb_tape_free(t);
    return NULL;
}

/* ---- one case ----------------------------------------------------------------------------------- */

static void run_case(uint64_t seed, long c, nb_tape *t, nb_tape *scratch, int *mode_counts)
{
    nb_rng rng;
    nb_rng_seed(&rng, seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(c + 1)));
    g_case = c;
    program pg;
    draw_program(&pg, &rng);
    int mode = (int)nb_rng_below(&rng, M_COUNT);
    g_mode = mode_names[mode];
    mode_counts[mode]++;
    leaves lv = {nb_tensor_uniform(NB_F64, NB_SHAPE(2, 3), -1, 1, &rng),
                 nb_tensor_uniform(NB_F64, NB_SHAPE(3, 3), -1, 1, &rng),
                 nb_tensor_uniform(NB_F64, NB_SHAPE(3), -1, 1, &rng)};
    nb_tensor_set_requires_grad(lv.x, 1);
    nb_tensor_set_requires_grad(lv.w, 1);
    nb_tensor_set_requires_grad(lv.b, 1);
    const double one[3] = {1, 1, 1};
    nb_tensor *values[MAX_VALUES];
    nb_error_clear();

    nb_tape_reset(t);
    nb_tape_begin(t);
    if (mode == M_NOGRAD) nb_no_grad_begin();
    nb_tensor *y = run_program(&pg, &lv, values);
    if (mode == M_NOGRAD) nb_no_grad_end();
    CASE_CHECK(y != NULL, "the program failed: %s", nb_error_message());
    if (!y) goto out;
    /* the leaves W and B are read only by some instructions: their gradient is zero otherwise */
    int used[3] = {1, pg.uses_wb[0], pg.uses_wb[1]};
    nb_tensor *wrt[3] = {lv.x, lv.w, lv.b}, *g[3] = {0};

    switch (mode) {
    case M_BACKWARD:
    case M_HOOKS: {
        hook_log inter = {0}, post[3] = {{0}};
        if (mode == M_HOOKS) {
            nb_tensor_set_hook(lv.x, double_hook, NULL);
            nb_tensor_set_hook(values[1 + (int)nb_rng_below(&rng, (uint64_t)pg.n)], count_hook, &inter);
            for (int l = 0; l < 3; l++) nb_tensor_set_post_accumulate_hook(wrt[l], post_hook, &post[l]);
        }
        nb_status st = nb_backward(y, NULL, 0);
        CASE_CHECK(st == NB_OK, "backward: %s", nb_error_message());
        if (st != NB_OK) break;
        nb_tensor *grads[3];
        for (int l = 0; l < 3; l++) grads[l] = nb_tensor_grad(wrt[l]);
        for (int l = 0; l < 3; l++) {
            if (used[l]) CASE_CHECK(grads[l] != NULL, "leaf %d has no gradient", l);
            if (!used[l]) grads[l] = NULL;
        }
        double scale[3] = {mode == M_HOOKS ? 2.0 : 1.0, 1, 1};
        compare_fd(&pg, &lv, grads, scale, scratch);
        if (mode == M_HOOKS) {
            CASE_CHECK(inter.calls == 1, "the hook on an intermediate ran %d times", inter.calls);
            for (int l = 0; l < 3; l++) {
                if (!used[l]) continue;
                CASE_CHECK(post[l].calls == 1, "leaf %d: post-accumulate hook ran %d times", l, post[l].calls);
                double sum = 0;
                for (int64_t i = 0; i < nb_tensor_numel(grads[l]); i++) sum += nb_tensor_get(grads[l], i);
                CASE_CHECK(post[l].grad_sum_at_call == sum, "leaf %d: .grad was not complete when its hook ran", l);
            }
        }
        break;
    }
    case M_GRAD: {
        nb_status st = nb_grad(y, NULL, 3, wrt, g, 0);
        CASE_CHECK(st == NB_OK, "nb_grad: %s", nb_error_message());
        if (st != NB_OK) break;
        compare_fd(&pg, &lv, g, one, scratch);
        for (int l = 0; l < 3; l++) CASE_CHECK(nb_tensor_grad(wrt[l]) == NULL, "nb_grad wrote into leaf %d", l);
        break;
    }
    case M_CREATE_GRAPH: {
        nb_status st = nb_grad(y, NULL, 3, wrt, g, NB_CREATE_GRAPH);
        CASE_CHECK(st == NB_OK, "create-graph nb_grad: %s", nb_error_message());
        if (st != NB_OK) break;
        /* z = sum_l <g_l, v_l>; dz/dx_k against differences of the first-order gradient */
        double v[3][9];
        nb_tensor *z = NULL;
        for (int l = 0; l < 3; l++) {
            int64_t n = nb_tensor_numel(wrt[l]);
            for (int64_t i = 0; i < n; i++) v[l][i] = nb_rng_uniform(&rng) - 0.5;
            nb_tensor *term = nb_sum_all(nb_mul(g[l], nb_constant(NB_F64, nb_tensor_ndim(wrt[l]), nb_tensor_shape(wrt[l]), v[l])));
            z = z ? nb_add(z, term) : term;
        }
        nb_tensor *h[3];
        st = nb_grad(z, NULL, 3, wrt, h, 0);
        CASE_CHECK(st == NB_OK, "second-order nb_grad: %s", nb_error_message());
        if (st != NB_OK) break;
        const double eps = 1e-5;
        pg.use_frozen = 1;
        for (int l = 0; l < 3; l++) {
            double *x = nb_tensor_data(wrt[l]);
            for (int64_t i = 0; i < nb_tensor_numel(wrt[l]); i++) {
                double orig = x[i], gp[3][9], gm[3][9];
                nb_status s1, s2;
                x[i] = orig + eps;
                grads_of(&pg, &lv, scratch, gp, &s1);
                x[i] = orig - eps;
                grads_of(&pg, &lv, scratch, gm, &s2);
                x[i] = orig;
                double fd = 0;
                for (int m = 0; m < 3; m++)
                    for (int64_t k = 0; k < nb_tensor_numel(wrt[m]); k++) fd += v[m][k] * (gp[m][k] - gm[m][k]) / (2 * eps);
                CASE_CHECK(s1 == NB_OK && s2 == NB_OK && close_enough(nb_tensor_get(h[l], i), fd, 1e-4, 1e-6),
                           "second order, leaf %d element %lld: %.10g vs differences %.10g", l, (long long)i,
                           nb_tensor_get(h[l], i), fd);
            }
        }
        pg.use_frozen = 0;
        break;
    }
    case M_STALE: {
        nb_tensor *stale = nb_rng_below(&rng, 2) ? y : values[1 + (int)nb_rng_below(&rng, (uint64_t)pg.n)];
        nb_tape_reset(t);
        nb_tensor *fresh = run_program(&pg, &lv, NULL); /* the next step reuses the arena */
        CASE_CHECK(fresh != NULL, "the next step failed: %s", nb_error_message());
        nb_error_clear();
        int how = (int)nb_rng_below(&rng, 8);
        nb_status st = NB_OK;
        FILE *devnull;
        switch (how) {
        case 0: st = nb_tensor_item(stale) == nb_tensor_item(stale) ? NB_OK : nb_error_code(); break;
        case 1: st = nb_add(stale, lv.x) ? NB_OK : nb_error_code(); break;
        case 2: st = nb_backward(stale, NULL, 0); break;
        case 3: st = nb_grad(fresh, NULL, 1, &stale, g, 0); break;
        case 4: st = nb_tensor_set_hook(stale, count_hook, NULL); break;
        case 5:
            devnull = fopen("/dev/null", "w");
            st = nb_tape_write_dot(t, stale, devnull);
            fclose(devnull);
            break;
        case 6: st = nb_sum_all(stale) ? NB_OK : nb_error_code(); break;
        default: st = nb_tensor_numel(stale) ? NB_OK : nb_error_code(); break;
        }
        CASE_CHECK(st == NB_ERR_STATE && strstr(nb_error_message(), "tensor belongs to a tape that was reset"),
                   "stale use %d: %s (%s)", how, nb_status_name(st), nb_error_message());
        nb_error_clear();
        /* the current step is intact */
        st = fresh ? nb_grad(fresh, NULL, 3, wrt, g, 0) : NB_ERR_STATE;
        CASE_CHECK(st == NB_OK, "the step after the stale use: %s", nb_error_message());
        if (st == NB_OK) compare_fd(&pg, &lv, g, one, scratch);
        break;
    }
    case M_FREED: {
        /* free a leaf the program read (X always is), then differentiate */
        int l = pg.uses_wb[0] && nb_rng_below(&rng, 2) ? 1 : 0;
        nb_tensor *copy = nb_tensor_clone(wrt[l]);
        nb_tensor_free(wrt[l]);
        nb_status st = nb_rng_below(&rng, 2) ? nb_backward(y, NULL, 0) : nb_grad(y, NULL, 1, &wrt[1 - l], g, 0);
        CASE_CHECK(st == NB_ERR_STATE && strstr(nb_error_message(), "was freed after it was recorded"),
                   "backward after freeing leaf %d: %s (%s)", l, nb_status_name(st), nb_error_message());
        nb_error_clear();
        nb_tensor_set_requires_grad(copy, 1);
        if (l == 0) lv.x = copy; else lv.w = copy;
        break;
    }
    case M_NOGRAD: {
        nb_status st = nb_backward(y, NULL, 0);
        CASE_CHECK(st == NB_ERR_STATE && strstr(nb_error_message(), "does not require grad"), "backward of a "
                   "no-grad output: %s (%s)", nb_status_name(st), nb_error_message());
        nb_error_clear();
        break;
    }
    case M_THREADS: {
        double serial[3][9] = {{0}};
        nb_status st;
        nb_tape_end(t);
        pg.use_frozen = 1; /* the threads only read the program */
        grads_of(&pg, &lv, t, serial, &st);
        CASE_CHECK(st == NB_OK, "serial nb_grad: %s", nb_error_message());
        thread_job jobs[2] = {{&pg, &lv, {{0}}, NB_ERR_ARG}, {&pg, &lv, {{0}}, NB_ERR_ARG}};
        pthread_t th[2];
        for (int k = 0; k < 2; k++) pthread_create(&th[k], NULL, thread_main, &jobs[k]);
        for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
        pg.use_frozen = 0;
        for (int k = 0; k < 2; k++)
            CASE_CHECK(jobs[k].st == NB_OK && memcmp(jobs[k].grads, serial, sizeof serial) == 0,
                       "thread %d: %s, gradients %s the serial run's", k, nb_status_name(jobs[k].st),
                       memcmp(jobs[k].grads, serial, sizeof serial) ? "differ from" : "equal");
        nb_tape_begin(t);
        break;
    }
    default: break;
    }
out:
    nb_tape_end(t);
    nb_tape_reset(t);
    nb_tensor_free(lv.x);
    nb_tensor_free(lv.w);
    nb_tensor_free(lv.b);
    CASE_CHECK(nb_error_code() == NB_OK, "error left over: %s", nb_error_message());
    nb_error_clear();
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *s = argc > 1 ? argv[1] : getenv("NB_STRESS_SEED");
    const char *one = argc > 2 ? argv[2] : getenv("NB_STRESS_CASE");
    g_seed = s ? strtoull(s, NULL, 0) : 20261206u;
    long first = one ? strtol(one, NULL, 0) : 0, last = one ? first : 1000000;
    printf("stress: seed %llu%s\n", (unsigned long long)g_seed, one ? " (one case)" : "");
    fflush(stdout);
    nb_tape *t = nb_tape_new(), *scratch = nb_tape_new();
    int mode_counts[M_COUNT] = {0};
    double t0 = now();
    long c = first;
    for (; c <= last && now() - t0 < 15.0; c++) run_case(g_seed, c, t, scratch, mode_counts);
    nb_tape_free(t);
    nb_tape_free(scratch);
    printf("stress: seed %llu: %ld cases in %.1f s (", (unsigned long long)g_seed, c - first, now() - t0);
    for (int m = 0; m < M_COUNT; m++) printf("%s%s %d", m ? ", " : "", mode_names[m], mode_counts[m]);
    printf("); rerun one with: test_stress %llu CASE\n", (unsigned long long)g_seed);
    return nbt_report("stress");
}
