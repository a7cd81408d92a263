/* The backward_into fast paths (used when no graph is created) must give the same gradients as the
 * differentiable rules (used under NB_CREATE_GRAPH), in both dtypes, NaN where the rule has NaN, with
 * the gradient's shape; and views must share memory only where they may. slice, index_select and the
 * c term of addmm accumulate exactly as their rules do and must match bit for bit (up to the sign of
 * zero); matmul adds its product into the existing gradient inside gemm (beta 1), which may round
 * differently from the rule's separate add when gemm splits the inner dimension, so it gets a
 * tolerance of a few ulps. */
#include "nbtest.h"

#include <stdlib.h>

typedef nb_tensor *(*fn)(nb_tensor *const *in);

static nb_tensor *f_slice(nb_tensor *const *in) /* every step of a sequence, as a recurrent layer reads it */
{
    nb_tensor *acc = NULL;
    for (int t = 0; t < 4; t++) {
        nb_tensor *s = nb_square(nb_slice(in[0], 0, t, t + 1, 1));
        acc = acc ? nb_add(acc, nb_mul_scalar(s, t + 1)) : s;
    }
    nb_tensor *strided = nb_square(nb_slice(in[0], 2, 1, 5, 2)); /* and a strided one */
    return nb_add(nb_sum_all(acc), nb_sum_all(nb_mul_scalar(strided, 0.5)));
}
static nb_tensor *f_index(nb_tensor *const *in)
{
    nb_tensor *idx = nb_constant(NB_I64, NB_SHAPE(5), (const int64_t[]){3, 0, 3, 1, 3});
    nb_tensor *idx2 = nb_constant(NB_I64, NB_SHAPE(7), (const int64_t[]){4, 4, 0, 2, 4, 1, 4});
    /* repeated rows of the first axis and of the last, twice into one gradient */
    nb_tensor *y = nb_sum_all(nb_square(nb_index_select(in[0], 0, idx)));
    nb_tensor *z = nb_sum_all(nb_mul(nb_index_select(in[0], 2, idx2), nb_index_select(in[0], 2, idx2)));
    return nb_add(y, nb_mul_scalar(z, 0.37));
}
static nb_tensor *f_matmul(nb_tensor *const *in) /* batched against one matrix, and transposed */
{
    nb_tensor *y = nb_matmul_ex(in[0], in[1], NB_TRANS_B);           /* [4,3,5] x [6,5]^T */
    nb_tensor *z = nb_matmul_ex(nb_sum(y, NB_AXES(0), 0), in[1], 0); /* [3,6] x [6,5] */
    return nb_sum_all(nb_tanh(z));
}
static nb_tensor *f_addmm(nb_tensor *const *in)
{
    nb_tensor *y = nb_addmm(in[2], in[0], in[1], NB_TRANS_B); /* bias [6] + [4,3,5] x [6,5]^T */
    nb_tensor *w = nb_reshape(nb_slice(in[1], 0, 0, 3, 1), NB_SHAPE(3, 5));
    nb_tensor *z = nb_addmm(nb_sum(y, NB_AXES(0, 2), 0), nb_sum(in[0], NB_AXES(0), 0), w, NB_TRANS_B);
    return nb_sum_all(nb_square(nb_add(nb_sum_all(y), z)));
}

static nb_tensor *f_lstm(nb_tensor *const *in) /* two steps; h' and c' both used, c' twice */
{
    nb_tensor *c0 = nb_reshape(nb_slice(in[0], 0, 0, 1, 1), NB_SHAPE(3, 5));
    nb_tensor *hc = nb_lstm_gates(nb_reshape(nb_tanh(in[0]), NB_SHAPE(3, 20)), c0);
    nb_tensor *h1 = nb_reshape(nb_slice(hc, 0, 0, 1, 1), NB_SHAPE(3, 5));
    nb_tensor *c1 = nb_reshape(nb_slice(hc, 0, 1, 2, 1), NB_SHAPE(3, 5));
    nb_tensor *hc2 = nb_lstm_gates(nb_reshape(in[0], NB_SHAPE(3, 20)), c1);
    return nb_add(nb_add(nb_sum_all(nb_square(hc2)), nb_sum_all(nb_mul(c1, c1))), nb_sum_all(nb_mul_scalar(h1, 3)));
}
static nb_tensor *f_gru(nb_tensor *const *in) /* x and h projections from the same input, h reused */
{
    nb_tensor *x = nb_reshape(in[0], NB_SHAPE(4, 15)), *h = nb_slice(x, 1, 0, 5, 1);
    nb_tensor *h1 = nb_gru_gates(x, nb_sin(x), h);
    return nb_sum_all(nb_square(nb_gru_gates(x, x, h1)));
}

/* a [1,5] x [6,5]^T product plus a c of shape [6]: c has fewer dims than the product (finding 6) */
static nb_tensor *f_addmm_row(nb_tensor *const *in)
{
    nb_tensor *x = nb_reshape(nb_slice(nb_slice(in[0], 0, 1, 2, 1), 1, 2, 3, 1), NB_SHAPE(1, 5));
    nb_tensor *y = nb_addmm(in[2], x, in[1], NB_TRANS_B);
    nb_tensor *c1 = nb_reshape(in[2], NB_SHAPE(1, 6)); /* and a c of the product's numel and dims */
    return nb_sum_all(nb_tanh(nb_add(y, nb_addmm(c1, x, in[1], NB_TRANS_B))));
}

/* NaN-aware equality: both NaN, or |a - b| <= tol * max(|a|, |b|) (tol 0: equal values). */
static int same_value(double a, double b, double tol)
{
    if (a != a || b != b) return a != a && b != b;
    return fabs(a - b) <= tol * fmax(fabs(a), fabs(b));
}

/* in: f64 leaves; each is converted to dtype, and element `nan_at` of input 0 is set to NaN when
 * nan_at >= 0 */
static void compare(const char *name, fn f, int n, nb_tensor **in64, nb_dtype dtype, double tol_in, int64_t nan_at)
{
    nb_tensor *in[3];
    for (int i = 0; i < n; i++) {
        nb_tape *tmp = nb_tape_new();
        nb_tape_begin(tmp);
        in[i] = nb_tensor_clone(nb_cast(in64[i], dtype));
        nb_tape_end(tmp);
        nb_tape_free(tmp);
        nb_tensor_set_requires_grad(in[i], 1);
    }
    if (nan_at >= 0) nb_tensor_set(in[0], nan_at, NAN);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *g1[3], *g2[3];
    nb_tensor *y = f(in);
    CHECK(nb_grad(y, NULL, n, in, g1, NB_RETAIN_GRAPH) == NB_OK, "%s: fast backward: %s", name, nb_error_message());
    CHECK(nb_grad(y, NULL, n, in, g2, NB_CREATE_GRAPH) == NB_OK, "%s: graph backward: %s", name, nb_error_message());
    for (int i = 0; i < n; i++) {
        double tol = i == 2 ? 0 : tol_in; /* addmm's c term (input 2) is summed exactly as the rule does */
        int ok_shape = nb_tensor_ndim(g1[i]) == nb_tensor_ndim(in[i]) && nb_tensor_dtype(g1[i]) == dtype;
        for (int d = 0; ok_shape && d < nb_tensor_ndim(in[i]); d++) ok_shape = nb_tensor_dim(g1[i], d) == nb_tensor_dim(in[i], d);
        CHECK(ok_shape, "%s %s: input %d: the fast gradient does not have the input's shape and dtype", name,
              nb_dtype_name(dtype), i);
        int64_t bad = -1, nans = 0;
        for (int64_t e = 0; e < nb_tensor_numel(in[i]) && bad < 0; e++) {
            double a = nb_tensor_get(g1[i], e), b = nb_tensor_get(g2[i], e);
            if (!same_value(a, b, tol)) bad = e;
            nans += b != b;
        }
        CHECK(bad < 0, "%s %s: input %d: fast and graph backward differ at %lld: %.17g vs %.17g", name,
              nb_dtype_name(dtype), i, (long long)bad, bad < 0 ? 0 : nb_tensor_get(g1[i], bad),
              bad < 0 ? 0 : nb_tensor_get(g2[i], bad));
        if (nan_at >= 0 && i == 0) CHECK(nans > 0, "%s: the NaN input gives NaN gradients", name);
        CHECK(nb_tensor_requires_grad(g2[i]), "%s: input %d: the graph backward is not differentiable", name, i);
    }
    nb_tape_end(t);
    nb_tape_free(t);
    for (int i = 0; i < n; i++) nb_tensor_free(in[i]);
}

/* ---- products straight into .grad (nb_backward without a graph) ----------------------------------
 * A matmul or addmm whose weight is a leaf used once in the pass writes its gradient into the leaf's
 * .grad by gemm with beta 1 (engine: nb__sink_grad). What .grad holds after nb_backward, over several
 * backwards, zero_grad, retain_graph and post-accumulate hooks, must be what the rule (NB_CREATE_GRAPH,
 * via nb_grad) gives, summed. in: X [4,3,5], W [6,5], b [6], Y [6,7], S [5,5]. */
static nb_tensor *d_mm_b(nb_tensor *const *in) /* a batch against W^T: W is operand b, transposed */
{
    return nb_sum_all(nb_tanh(nb_matmul_ex(in[0], in[1], NB_TRANS_B)));
}
static nb_tensor *d_mm_b_plain(nb_tensor *const *in) /* [3,6] x W [6,5]: W is operand b as stored */
{
    nb_tensor *x = nb_reshape(nb_slice(in[0], 0, 0, 1, 1), NB_SHAPE(3, 5));
    return nb_sum_all(nb_square(nb_matmul_ex(nb_matmul_ex(x, in[1], NB_TRANS_B), in[1], 0)));
}
static nb_tensor *d_mm_a(nb_tensor *const *in) /* W^T [5,6] x Y [6,7]: W is operand a, transposed */
{
    return nb_sum_all(nb_sin(nb_matmul_ex(in[1], in[3], NB_TRANS_A)));
}
static nb_tensor *d_mm_a_tt(nb_tensor *const *in) /* W^T [5,6] x (Y^T)^T ...: both transposed */
{
    nb_tensor *yt = nb_transpose(in[3], 0, 1); /* [7,6] */
    return nb_sum_all(nb_square(nb_matmul_ex(in[1], yt, NB_TRANS_A | NB_TRANS_B)));
}
static nb_tensor *d_mm_a_plain(nb_tensor *const *in) /* W [6,5] x S [5,5] */
{
    return nb_sum_all(nb_tanh(nb_matmul(in[1], in[4])));
}
static nb_tensor *d_addmm(nb_tensor *const *in) /* the linear layer: b + X W^T, relu, then a loss */
{
    nb_tensor *h = nb_relu(nb_addmm(in[2], in[0], in[1], NB_TRANS_B));
    return nb_sum_all(nb_square(h));
}
static nb_tensor *d_two_uses(nb_tensor *const *in) /* W in two products of one graph */
{
    nb_tensor *y = nb_matmul_ex(in[0], in[1], NB_TRANS_B);                 /* [4,3,6] */
    nb_tensor *z = nb_matmul(nb_sum(y, NB_AXES(0), 0), in[1]);              /* [3,6] x [6,5] */
    return nb_sum_all(nb_tanh(z));
}
static nb_tensor *d_self(nb_tensor *const *in) /* W twice in one product */
{
    return nb_sum_all(nb_tanh(nb_matmul_ex(in[1], in[1], NB_TRANS_B)));
}
static nb_tensor *d_view(nb_tensor *const *in) /* a view of W on the tape is the product's operand */
{
    nb_tensor *w = nb_reshape(nb_reshape(in[1], NB_SHAPE(30)), NB_SHAPE(6, 5));
    return nb_sum_all(nb_tanh(nb_matmul_ex(in[0], w, NB_TRANS_B)));
}

/* post-accumulate hook: counts its calls and the sum of .grad when called (must be the pass's total) */
typedef struct post_seen {
    int calls;
    double sum;
} post_seen;
static double grad_sum(const nb_tensor *leaf)
{
    nb_tensor *g = nb_tensor_grad(leaf);
    double s = 0;
    for (int64_t e = 0; g && e < nb_tensor_numel(g); e++) s += nb_tensor_get(g, e);
    return s;
}
static nb_status post_record(nb_tensor *leaf, void *user)
{
    post_seen *ps = user;
    ps->calls++;
    ps->sum = grad_sum(leaf);
    return NB_OK;
}

#define D_IN 5
/* .grad of each leaf in `in` that requires grad == k * ref[i] (NaN-aware) */
static void check_grads(const char *name, const char *when, nb_tensor **in, double **ref, double k, double tol)
{
    for (int i = 0; i < D_IN; i++) {
        if (!nb_tensor_requires_grad(in[i])) continue;
        nb_tensor *g = nb_tensor_grad(in[i]);
        CHECK(g && nb_tensor_numel(g) == nb_tensor_numel(in[i]) && nb_tensor_dtype(g) == nb_tensor_dtype(in[i]),
              "%s: %s: input %d: no .grad of its shape", name, when, i);
        if (!g) continue;
        int64_t bad = -1;
        for (int64_t e = 0; e < nb_tensor_numel(g) && bad < 0; e++)
            if (!same_value(nb_tensor_get(g, e), k * ref[i][e], tol)) bad = e;
        CHECK(bad < 0, "%s %s: %s: input %d: .grad differs from %g x the rule's at %lld: %.17g vs %.17g", name,
              nb_dtype_name(nb_tensor_dtype(in[i])), when, i, k, (long long)bad,
              bad < 0 ? 0 : nb_tensor_get(g, bad), bad < 0 ? 0 : k * ref[i][bad]);
    }
}

/* One function f on leaves converted to dtype, those in `needs` (bit i: input i) requiring grad. */
static void direct(const char *name, fn f, nb_tensor **in64, unsigned needs, nb_dtype dtype, double tol, int64_t nan_at)
{
    nb_tensor *in[D_IN];
    double *ref[D_IN] = {NULL};
    post_seen seen[D_IN];
    for (int i = 0; i < D_IN; i++) {
        nb_tape *tmp = nb_tape_new();
        nb_tape_begin(tmp);
        in[i] = nb_tensor_clone(nb_cast(in64[i], dtype));
        nb_tape_end(tmp);
        nb_tape_free(tmp);
        if (needs >> i & 1) {
            nb_tensor_set_requires_grad(in[i], 1);
            nb_tensor_set_post_accumulate_hook(in[i], post_record, &seen[i]);
        }
    }
    if (nan_at >= 0) nb_tensor_set(in[0], nan_at, NAN);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    /* the rule's gradients */
    nb_tensor *wrt[D_IN], *gr[D_IN];
    int n = 0;
    for (int i = 0; i < D_IN; i++)
        if (needs >> i & 1) wrt[n++] = in[i];
    CHECK(nb_grad(f(in), NULL, n, wrt, gr, NB_CREATE_GRAPH) == NB_OK, "%s: rule: %s", name, nb_error_message());
    for (int i = 0, j = 0; i < D_IN; i++) {
        if (!(needs >> i & 1)) continue;
        ref[i] = calloc((size_t)nb_tensor_numel(in[i]), sizeof(double));
        for (int64_t e = 0; gr[j] && e < nb_tensor_numel(in[i]); e++) ref[i][e] = nb_tensor_get(gr[j], e);
        j++;
        CHECK(nb_tensor_grad(in[i]) == NULL, "%s: nb_grad wrote .grad", name);
    }
    nb_tape_reset(t);

    /* 1. first backward: .grad made, the rule's values; the post hook saw the total */
    for (int i = 0; i < D_IN; i++) seen[i] = (post_seen){0, 0};
    CHECK(nb_backward(f(in), NULL, 0) == NB_OK, "%s: backward: %s", name, nb_error_message());
    check_grads(name, "first backward", in, ref, 1, tol);
    for (int i = 0; i < D_IN; i++) {
        if (!(needs >> i & 1)) continue;
        CHECK(seen[i].calls == 1 && same_value(seen[i].sum, grad_sum(in[i]), 0),
              "%s: input %d: post-accumulate hook called %d times, saw sum %.17g, .grad sums to %.17g", name, i,
              seen[i].calls, seen[i].sum, grad_sum(in[i]));
        CHECK(nb_tensor_has_grad(in[i]), "%s: input %d: has_grad after a backward", name, i);
    }
    nb_tape_reset(t);
    /* 2. a second backward without zero_grad accumulates */
    CHECK(nb_backward(f(in), NULL, 0) == NB_OK, "%s: backward 2: %s", name, nb_error_message());
    check_grads(name, "second backward", in, ref, 2, 2 * tol);
    nb_tape_reset(t);
    /* 3. one graph, two backwards (retain_graph): two more contributions */
    nb_tensor *y = f(in);
    CHECK(nb_backward(y, NULL, NB_RETAIN_GRAPH) == NB_OK, "%s: retained backward: %s", name, nb_error_message());
    CHECK(nb_backward(y, NULL, 0) == NB_OK, "%s: backward of a retained graph: %s", name, nb_error_message());
    check_grads(name, "retain_graph", in, ref, 4, 4 * tol);
    /* 4. nb_grad (functional) on a new graph never writes .grad */
    nb_tape_reset(t);
    nb_tensor *gf[D_IN];
    CHECK(nb_grad(f(in), NULL, n, wrt, gf, 0) == NB_OK, "%s: nb_grad: %s", name, nb_error_message());
    check_grads(name, "after nb_grad", in, ref, 4, 4 * tol);
    nb_tape_reset(t);
    /* 5. zero_grad: zeros, no gradient; then a backward gives the rule's values again */
    for (int i = 0; i < D_IN; i++) {
        if (!(needs >> i & 1)) continue;
        nb_tensor_zero_grad(in[i]);
        nb_tensor *g = nb_tensor_grad(in[i]);
        int64_t nz = 0;
        for (int64_t e = 0; e < nb_tensor_numel(g); e++) nz += nb_tensor_get(g, e) != 0 || signbit(nb_tensor_get(g, e));
        CHECK(nz == 0 && !nb_tensor_has_grad(in[i]), "%s: input %d: %lld elements not +0 after zero_grad (has_grad %d)",
              name, i, (long long)nz, nb_tensor_has_grad(in[i]));
        seen[i] = (post_seen){0, 0};
    }
    CHECK(nb_backward(f(in), NULL, 0) == NB_OK, "%s: backward after zero_grad: %s", name, nb_error_message());
    check_grads(name, "zero_grad then backward", in, ref, 1, tol);
    for (int i = 0; i < D_IN; i++)
        if (needs >> i & 1)
            CHECK(seen[i].calls == 1 && same_value(seen[i].sum, grad_sum(in[i]), 0),
                  "%s: input %d: post-accumulate hook after zero_grad: %d calls", name, i, seen[i].calls);
    /* 6. frozen inputs never get a .grad */
    for (int i = 0; i < D_IN; i++)
        if (!(needs >> i & 1)) CHECK(nb_tensor_grad(in[i]) == NULL, "%s: frozen input %d got a .grad", name, i);
    nb_tape_end(t);
    nb_tape_free(t);
    for (int i = 0; i < D_IN; i++) {
        free(ref[i]);
        nb_tensor_free(in[i]);
    }
}

static nb_tensor *double_grad(nb_tensor *g, void *user)
{
    (void)user;
    return nb_mul_scalar(g, 2.0);
}

/* A tensor hook on the weight sees its gradient (and doubles it), so .grad is twice the rule's; after a
 * create-graph backward, a graph-less one moves the values on (the differentiable gradient is dropped). */
static void direct_hooks_and_graphs(nb_tensor **in64, nb_dtype dtype, double tol)
{
    nb_tensor *in[D_IN];
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    for (int i = 0; i < D_IN; i++) in[i] = nb_tensor_clone(nb_cast(in64[i], dtype));
    nb_tensor_set_requires_grad(in[1], 1);
    nb_tensor *w = in[1], *gr;
    CHECK(nb_grad(d_addmm(in), NULL, 1, &w, &gr, NB_CREATE_GRAPH) == NB_OK, "rule: %s", nb_error_message());
    double *ref[D_IN] = {NULL};
    ref[1] = calloc(30, sizeof(double));
    for (int e = 0; e < 30; e++) ref[1][e] = nb_tensor_get(gr, e);
    nb_tape_reset(t);
    nb_tensor_set_hook(w, double_grad, NULL);
    CHECK(nb_backward(d_addmm(in), NULL, 0) == NB_OK, "hooked backward: %s", nb_error_message());
    check_grads("tensor hook on the weight", "backward", in, ref, 2, tol);
    nb_tensor_set_hook(w, NULL, NULL);
    nb_tensor_zero_grad(w);
    nb_tape_reset(t);
    /* create-graph backward, then a graph-less one on another tape while the graph is alive */
    CHECK(nb_backward(d_addmm(in), NULL, NB_CREATE_GRAPH) == NB_OK, "create-graph backward: %s", nb_error_message());
    CHECK(nb_tensor_requires_grad(nb_tensor_grad(w)), "create-graph: .grad is differentiable");
    nb_tape *t2 = nb_tape_new();
    nb_tape_begin(t2);
    CHECK(nb_backward(d_addmm(in), NULL, 0) == NB_OK, "graph-less after create-graph: %s", nb_error_message());
    check_grads("graph-less after create-graph", "backward", in, ref, 2, 2 * tol);
    CHECK(!nb_tensor_requires_grad(nb_tensor_grad(w)), "graph-less after create-graph: .grad is the buffer again");
    nb_tape_end(t2);
    nb_tape_free(t2);
    nb_tape_end(t);
    nb_tape_free(t);
    free(ref[1]);
    for (int i = 0; i < D_IN; i++) nb_tensor_free(in[i]);
}

/* A node that reads W's .grad (recorded before the product, so its rule runs after the product's): the
 * product's gradient must not be written into that buffer before the node reads it; the backward
 * reports the buffer changed under it (as when the total is stored at the leaf's last use), and nothing
 * else. */
static void direct_node_reads_grad(nb_tensor **in64, nb_dtype dtype)
{
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *x = nb_tensor_clone(nb_cast(in64[4], dtype)); /* [5,5] */
    nb_tensor *w = nb_tensor_clone(nb_cast(in64[1], dtype)); /* [6,5] */
    nb_tensor *u = nb_tensor_clone(nb_cast(in64[3], dtype)); /* [6,7] */
    nb_tensor_set_requires_grad(x, 1);
    nb_tensor_set_requires_grad(w, 1);
    nb_tensor_set_requires_grad(u, 1);
    CHECK(nb_backward(nb_sum_all(nb_matmul(w, x)), NULL, 0) == NB_OK, "reads grad: first backward: %s",
          nb_error_message());
    nb_tape_reset(t);
    for (int view = 0; view < 2; view++) {
        nb_tensor *gw = nb_tensor_grad(w); /* [6,5], the buffer */
        if (view) gw = nb_reshape(gw, NB_SHAPE(30));
        nb_tensor *r = nb_sum_all(nb_mul(nb_reshape(gw, NB_SHAPE(6, 5)), nb_sin(nb_slice(u, 1, 0, 5, 1))));
        nb_tensor *y = nb_add(r, nb_sum_all(nb_tanh(nb_matmul_ex(w, u, NB_TRANS_A)))); /* w's one use */
        nb_status st = nb_backward(y, NULL, 0);
        CHECK(st == NB_ERR_STATE && strstr(nb_error_message(), "modified in place"),
              "reads grad%s: the backward that writes the .grad a node reads gave %s: %s", view ? " (view)" : "",
              nb_status_name(st), nb_error_message());
        nb_error_clear();
        nb_tape_reset(t);
    }
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
    nb_tensor_free(w);
    nb_tensor_free(u);
}

/* zero_grad then an optimizer step with no backward in between: nothing moves (no stale gradient, even
 * with momentum or Adam's moments); a backward after it steps again from the rule's gradient. */
static void direct_zero_grad_optim(nb_tensor **in64, nb_optim_kind kind)
{
    nb_params *ps = nb_params_new();
    nb_tensor *x = nb_tensor_clone(in64[0]);
    nb_tensor *w = nb_params_add(ps, "w", nb_tensor_clone(in64[1]));
    nb_tensor *b = nb_params_add(ps, "b", nb_tensor_clone(in64[2]));
    nb_optim_opts o = nb_optim_defaults(kind);
    o.momentum = kind == NB_SGD ? 0.9 : o.momentum;
    nb_optim *opt = nb_optim_new(kind, ps, &o);
    nb_tensor *in[D_IN] = {x, w, b, NULL, NULL};
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    CHECK(nb_backward(d_addmm(in), NULL, 0) == NB_OK, "optim: backward: %s", nb_error_message());
    CHECK(nb_optim_step(opt) == NB_OK, "optim: step: %s", nb_error_message());
    nb_tape_reset(t);
    double before[30], after[30];
    for (int e = 0; e < 30; e++) before[e] = nb_tensor_get(w, e);
    nb_optim_zero_grad(opt);
    CHECK(nb_optim_step(opt) == NB_OK, "optim: step after zero_grad: %s", nb_error_message());
    for (int e = 0; e < 30; e++) after[e] = nb_tensor_get(w, e);
    CHECK(memcmp(before, after, sizeof before) == 0, "%d: a step after zero_grad with no backward moved w",
          (int)kind);
    CHECK(nb_backward(d_addmm(in), NULL, 0) == NB_OK, "optim: backward 2: %s", nb_error_message());
    CHECK(nb_optim_step(opt) == NB_OK, "optim: step 2: %s", nb_error_message());
    int moved = 0;
    for (int e = 0; e < 30; e++) moved |= nb_tensor_get(w, e) != after[e];
    CHECK(moved, "%d: a step after a backward did not move w", (int)kind);
    nb_tape_end(t);
    nb_tape_free(t);
    nb_optim_free(opt);
    nb_params_free(ps);
    nb_tensor_free(x);
}

int main(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 11);
    nb_tensor *a = nb_tensor_uniform(NB_F64, NB_SHAPE(4, 3, 5), -1, 1, &rng);
    nb_tensor *w = nb_tensor_uniform(NB_F64, NB_SHAPE(6, 5), -1, 1, &rng);
    nb_tensor *b = nb_tensor_uniform(NB_F64, NB_SHAPE(6), -1, 1, &rng);
    nb_tensor *in[3] = {a, w, b};
    for (int i = 0; i < 3; i++) nb_tensor_set_requires_grad(in[i], 1);
    for (int dt = 0; dt < 2; dt++) {
        nb_dtype dtype = dt ? NB_F32 : NB_F64;
        double mm_tol = dt ? 4e-7 : 1e-15;
        for (int64_t nan_at = -1; nan_at <= 25; nan_at += 26) { /* element 25 is used by every function */
            compare("slice", f_slice, 1, in, dtype, 0, nan_at);
            compare("index_select", f_index, 1, in, dtype, 0, nan_at);
            compare("matmul", f_matmul, 2, in, dtype, mm_tol, nan_at);
            compare("addmm", f_addmm, 3, in, dtype, mm_tol, nan_at);
            compare("addmm c [6] + [1,5] x [5,6]", f_addmm_row, 3, in, dtype, mm_tol, nan_at);
            /* the fused recurrent steps: one kernel against the rule's ops, in another order */
            compare("lstm_gates", f_lstm, 1, in, dtype, dt ? 1e-5 : 1e-13, nan_at);
            compare("gru_gates", f_gru, 1, in, dtype, dt ? 1e-5 : 1e-13, nan_at);
        }
    }


    /* a time step of [T, B, F] is a view; a column slice or a strided one is a copy */
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    const double *base = nb_tensor_cdata(a);
    CHECK(nb_tensor_cdata(nb_slice(a, 0, 2, 3, 1)) == base + 2 * 15, "a leading-axis slice is not a view");
    CHECK(nb_tensor_cdata(nb_slice(a, 1, 1, 2, 1)) != base + 5, "an inner-axis slice shares memory");
    CHECK(nb_tensor_cdata(nb_slice(a, 0, 0, 4, 2)) != base, "a strided slice shares memory");
    /* a view of a leaf guards against in-place changes like the leaf itself */
    nb_tensor *y = nb_sum_all(nb_mul(nb_slice(a, 0, 1, 2, 1), nb_slice(a, 0, 1, 2, 1)));
    nb_tensor_fill(a, 0.5);
    CHECK_ERROR(nb_backward(y, NULL, 0) != NB_OK, NB_ERR_STATE, "modified in place");
    nb_tape_end(t);
    nb_tape_free(t);

    /* products straight into .grad */
    nb_tensor *d_in[D_IN] = {a, w, b, nb_tensor_uniform(NB_F64, NB_SHAPE(6, 7), -1, 1, &rng),
                             nb_tensor_uniform(NB_F64, NB_SHAPE(5, 5), -1, 1, &rng)};
    for (int i = 0; i < 3; i++) nb_tensor_set_requires_grad(in[i], 0);
    const struct {
        const char *name;
        fn f;
        unsigned needs[3]; /* which inputs require grad, in three variants (0: none) */
    } dcases[] = {
        {"W^T operand b of a batch", d_mm_b, {1u << 1, 1u << 0 | 1u << 1, 0}},
        {"W operand b, used twice", d_mm_b_plain, {1u << 1, 1u << 0 | 1u << 1, 0}},
        {"W^T operand a", d_mm_a, {1u << 1, 1u << 1 | 1u << 3, 1u << 3}},
        {"W^T operand a, Y^T operand b", d_mm_a_tt, {1u << 1, 1u << 1 | 1u << 3, 0}},
        {"W operand a", d_mm_a_plain, {1u << 1, 1u << 1 | 1u << 4, 1u << 4}},
        {"addmm (linear layer)", d_addmm, {1u << 1 | 1u << 2, 1u << 0 | 1u << 1 | 1u << 2, 1u << 0 | 1u << 2}},
        {"W in two products", d_two_uses, {1u << 1, 1u << 0 | 1u << 1, 0}},
        {"W x W^T", d_self, {1u << 1, 0, 0}},
        {"a view of W", d_view, {1u << 1, 1u << 0 | 1u << 1, 0}},
    };
    for (int dt = 0; dt < 2; dt++) {
        nb_dtype dtype = dt ? NB_F32 : NB_F64;
        double tol = dt ? 2e-6 : 1e-13;
        for (size_t c = 0; c < sizeof dcases / sizeof dcases[0]; c++)
            for (int v = 0; v < 3 && dcases[c].needs[v]; v++)
                for (int64_t nan_at = -1; nan_at <= 25; nan_at += 26)
                    direct(dcases[c].name, dcases[c].f, d_in, dcases[c].needs[v], dtype, tol, nan_at);
        direct_hooks_and_graphs(d_in, dtype, tol);
        direct_node_reads_grad(d_in, dtype);
    }
    direct_zero_grad_optim(d_in, NB_SGD);
    direct_zero_grad_optim(d_in, NB_ADAM);
    for (int i = 0; i < D_IN; i++) nb_tensor_free(d_in[i]);
    return nbt_report("fast_paths");
}
