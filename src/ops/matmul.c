/* Matrix products through BLAS gemm. Transposes are passed to gemm as flags, never materialised;
 * batch dims broadcast as in NumPy, and a batch of inputs against one shared matrix is a single gemm. */
#include "ops.h"

#include <string.h>

/* Row-major matrix dims of operand t: rows, cols as stored. */
#define ROWS(t) ((t)->shape[(t)->ndim - 2])
#define COLS(t) ((t)->shape[(t)->ndim - 1])

static void gemm(nb_dtype dt, int ta, int tb, int64_t m, int64_t n, int64_t k, const void *a, int64_t lda,
                 const void *b, int64_t ldb, void *c, double beta)
{
    if (dt == NB_F32)
        nb_k_gemm_f32(ta, tb, m, n, k, a, lda, b, ldb, c, beta);
    else
        nb_k_gemm_f64(ta, tb, m, n, k, a, lda, b, ldb, c, beta);
}

/* out [..., m, n] = op(a) op(b); a [..., m, k] (or [..., k, m] with NB_TRANS_A), b [..., k, n] (or
 * [..., n, k] with NB_TRANS_B); batch dims of a and b broadcast to out's. */
/* out (+)= op(a) op(b): beta 0 overwrites out, beta 1 adds to what it holds */
static void matmul_into(nb_tensor *out, const nb_tensor *a, const nb_tensor *b, unsigned flags, double beta)
{
    int ta = (flags & NB_TRANS_A) != 0, tb = (flags & NB_TRANS_B) != 0;
    int64_t m = out->shape[out->ndim - 2], n = out->shape[out->ndim - 1];
    int64_t k = ta ? ROWS(a) : COLS(a);
    size_t es = nb_dtype_size(out->dtype);
    const char *pa = a->data, *pb = b->data;
    char *pc = out->data;
    if (b->ndim == 2 && !ta) {
        /* every batch of a against one matrix: fold the batch into the rows of a single gemm */
        if (n > 0) gemm(out->dtype, 0, tb, out->numel / n, n, k, pa, COLS(a), pb, COLS(b), pc, beta);
        return;
    }
    /* batch loop: the batch of out is broadcast from those of a and b (as matrices) */
    int bnd = out->ndim - 2;
    int64_t bshape[NB_MAX_DIMS], sa[NB_MAX_DIMS], sb[NB_MAX_DIMS], idx[NB_MAX_DIMS] = {0};
    for (int d = 0; d < bnd; d++) bshape[d] = out->shape[d];
    int64_t s_a = 1, s_b = 1;
    for (int d = bnd - 1; d >= 0; d--) {
        int da = d - (bnd - (a->ndim - 2)), db = d - (bnd - (b->ndim - 2));
        int64_t ea = da >= 0 ? a->shape[da] : 1, eb = db >= 0 ? b->shape[db] : 1;
        sa[d] = ea == 1 ? 0 : s_a;
        sb[d] = eb == 1 ? 0 : s_b;
        s_a *= ea;
        s_b *= eb;
    }
    int64_t batches = nb__numel(bnd, bshape), ma = ROWS(a) * COLS(a), mb = ROWS(b) * COLS(b);
    int64_t oa = 0, ob = 0;
    for (int64_t r = 0; r < batches; r++) {
        gemm(out->dtype, ta, tb, m, n, k, pa + (size_t)(oa * ma) * es, COLS(a), pb + (size_t)(ob * mb) * es,
             COLS(b), pc + (size_t)(r * m * n) * es, beta);
        for (int d = bnd - 1; d >= 0; d--) {
            oa += sa[d];
            ob += sb[d];
            if (++idx[d] < bshape[d]) break;
            oa -= sa[d] * bshape[d];
            ob -= sb[d] * bshape[d];
            idx[d] = 0;
        }
    }
}

NB_FW(matmul) { matmul_into(out, in[0], in[1], (unsigned)at->i[0], 0.0); }

/* The rows of t folded into a matrix of its last extent's columns: the product of the other extents
 * (not numel / cols, which is 0 / 0 for an empty last extent). */
static int64_t lead_rows(const nb_tensor *t) { return nb__numel(t->ndim - 1, t->shape); }

/* C = op(A) op(B), G = dL/dC:
 *   dL/dop(A) = G op(B)^T,  dL/dop(B) = op(A)^T G;  transposed back where op is a transpose, then
 *   summed over the batch dims that were broadcast. */
NB_BW(matmul)
{
    nb_tensor *a = n->in[0], *b = n->in[1];
    unsigned ta = (n->attrs.i[0] & NB_TRANS_A) != 0, tb = (n->attrs.i[0] & NB_TRANS_B) != 0;
    if (NB_NEED(0)) {
        nb_tensor *ga = !ta ? nb_matmul_ex(g, b, tb ? 0u : NB_TRANS_B)                   /* G op(B)^T */
                            : nb_matmul_ex(b, g, (tb ? NB_TRANS_A : 0u) | NB_TRANS_B);   /* op(B) G^T */
        gin[0] = nb__sum_to(ga, a->ndim, a->shape);
    }
    if (NB_NEED(1)) {
        if (b->ndim == 2 && a->ndim > 2 && !ta) {
            /* a batch against one matrix: fold the batch into the rows, one product (no per-batch
             * products summed afterwards) */
            a = nb_reshape(a, NB_SHAPE(lead_rows(a), a->shape[a->ndim - 1]));
            g = nb_reshape(g, NB_SHAPE(lead_rows(g), g->shape[g->ndim - 1]));
        }
        nb_tensor *gb = !tb ? nb_matmul_ex(a, g, ta ? 0u : NB_TRANS_A)                   /* op(A)^T G */
                            : nb_matmul_ex(g, a, NB_TRANS_A | (ta ? NB_TRANS_B : 0u));   /* G^T op(A) */
        gin[1] = nb__sum_to(gb, b->ndim, b->shape);
    }
}

/* A matrix as stored: row-major rows x cols (a batched tensor folded into its rows). */
typedef struct mat {
    void *data;
    int64_t rows, cols;
} mat;

static mat mat_of(const nb_tensor *t)
{
    return (mat){t->data, lead_rows(t), t->shape[t->ndim - 1]};
}

/* dst += op(x) op(y), or dst = op(x) op(y) when dst is fresh */
static void gemm_acc(nb_dtype dt, int tx, int ty, mat x, mat y, void *dst, bool fresh)
{
    int64_t m = tx ? x.cols : x.rows, k = tx ? x.rows : x.cols, n = ty ? y.rows : y.cols;
    if (dt == NB_F32)
        nb_k_gemm_f32(tx, ty, m, n, k, x.data, x.cols, y.data, y.cols, dst, fresh ? 0.0 : 1.0);
    else
        nb_k_gemm_f64(tx, ty, m, n, k, x.data, x.cols, y.data, y.cols, dst, fresh ? 0.0 : 1.0);
}

/* Without a graph: the same products as the rule below, accumulated into the gradient buffers by
 * gemm with beta = 1 (no temporary, no separate add; the per-step weight gradients of a recurrent
 * layer sum up in place); on nb_backward a weight used once goes straight into its leaf's .grad
 * (nb__sink_grad). Serves 2-D products and batches against one matrix (folded into rows). */
/* The matmul part: a is input ia of the node, b input ib. */
static bool product_into(const nb_node *n, int ia, int ib, nb_tensor *g, nb_grad_sink *sink)
{
    const nb_tensor *a = n->in[ia], *b = n->in[ib];
    int ta = (n->attrs.i[0] & NB_TRANS_A) != 0, tb = (n->attrs.i[0] & NB_TRANS_B) != 0;
    if (b->ndim != 2 || (a->ndim != 2 && ta)) return false;
    mat A = mat_of(a), B = mat_of(b), G = mat_of(g);
    bool fresh;
    if (NB_NEED(ia)) {
        nb_tensor *d = nb__sink_grad(sink, ia, &fresh);
        if (!d) return true;
        if (!ta)
            gemm_acc(g->dtype, 0, !tb, G, B, d->data, fresh); /* G op(B)^T */
        else
            gemm_acc(g->dtype, tb, 1, B, G, d->data, fresh); /* op(B) G^T */
    }
    if (NB_NEED(ib)) {
        nb_tensor *d = nb__sink_grad(sink, ib, &fresh);
        if (!d) return true;
        if (!tb)
            gemm_acc(g->dtype, !ta, 0, A, G, d->data, fresh); /* op(A)^T G */
        else
            gemm_acc(g->dtype, 1, ta, G, A, d->data, fresh); /* G^T op(A) */
    }
    return true;
}

bool nb__into_matmul(const nb_node *n, nb_tensor *g, nb_grad_sink *sink) { return product_into(n, 0, 1, g, sink); }

/* c's gradient, as the rule computes it (nb_sum_to: the sum kernel over c's broadcast dims, float32 in
 * double), added into c's buffer: g itself when c has g's shape, else the sum over the broadcast dims
 * (a bias vector: the rows; c [3] for a [1,3] product: nothing summed, only the shape differs). */
bool nb__into_addmm(const nb_node *n, nb_tensor *g, nb_grad_sink *sink)
{
    const nb_tensor *c = n->in[0], *b = n->in[2];
    int ta = (n->attrs.i[0] & NB_TRANS_A) != 0;
    if (b->ndim != 2 || (n->in[1]->ndim != 2 && ta)) return false;
    if (NB_NEED(0) && nb__same_shape(c, g)) {
        if (!nb__sink_add(sink, 0, g)) return true; /* dc = g, handed over as it is */
    } else if (NB_NEED(0)) {
        /* the axes of g that c does not have or has with extent 1 */
        uint32_t mask = 0;
        int lead = g->ndim - c->ndim;
        for (int d = 0; d < g->ndim; d++)
            if (d < lead || (c->shape[d - lead] == 1 && g->shape[d] != 1)) mask |= 1u << d;
        nb_tensor *d = nb__sink_slot(sink, 0, NULL);
        if (!d) return true;
        nb_reduce_plan p;
        nb__reduce_plan(&p, g, mask);
        nb_tape *tape = nb__current_tape(); /* the backward's tape */
        void *sum = nb__tape_alloc(tape, (size_t)c->numel * sizeof(double));
        double *acc = g->dtype == NB_F32 ? nb__tape_alloc(tape, (size_t)c->numel * sizeof(double)) : NULL;
        if (!sum || (g->dtype == NB_F32 && !acc)) {
            nb__fail(NB_ERR_NOMEM, "nb_addmm (backward): out of memory");
            return true;
        }
        if (g->dtype == NB_F32) {
            nb_k_sum_f32(&p, g->data, sum, acc, 1.0);
            nb_k_axpy_f32(c->numel, 1.0, sum, d->data);
        } else {
            nb_k_sum_f64(&p, g->data, sum, sum, 1.0);
            nb_k_axpy_f64(c->numel, 1.0, sum, d->data);
        }
    }
    return product_into(n, 1, 2, g, sink);
}

/* Validate a product op(a) op(b) and compute its shape. */
static bool matmul_shape(const char *who, const nb_tensor *a, const nb_tensor *b, unsigned flags, int *nd,
                         int64_t *shape)
{
    if (!a || !b) return nb__fail(NB_ERR_ARG, "%s: input %s is NULL", who, !a ? "a" : "b"), false;
    if (!nb__live(who, a) || !nb__live(who, b)) return false;
    if (flags & ~(unsigned)(NB_TRANS_A | NB_TRANS_B))
        return nb__fail(NB_ERR_ARG, "%s: unknown flags 0x%x", who, flags), false;
    if (a->dtype != b->dtype)
        return nb__fail(NB_ERR_DTYPE, "%s: %s %s and %s %s: dtypes differ (use nb_cast)", who,
                        nb_dtype_name(a->dtype), NB_SHP(a), nb_dtype_name(b->dtype), NB_SHP(b)), false;
    if (!nb__check_float(who, a)) return false;
    if (a->ndim < 2 || b->ndim < 2)
        return nb__fail(NB_ERR_SHAPE, "%s: %s x %s: nb_matmul_ex needs at least 2 dims (nb_matmul takes "
                        "vectors)", who, NB_SHP(a), NB_SHP(b)), false;
    int ta = (flags & NB_TRANS_A) != 0, tb = (flags & NB_TRANS_B) != 0;
    int64_t m = ta ? COLS(a) : ROWS(a), ka = ta ? ROWS(a) : COLS(a);
    int64_t kb = tb ? COLS(b) : ROWS(b), n = tb ? ROWS(b) : COLS(b);
    if (ka != kb)
        return nb__fail(NB_ERR_SHAPE, "%s: %s%s x %s%s: inner dimensions %lld and %lld differ", who, NB_SHP(a),
                        ta ? "^T" : "", NB_SHP(b), tb ? "^T" : "", (long long)ka, (long long)kb), false;
    if (m > INT32_MAX || n > INT32_MAX || ka > INT32_MAX || (ka && a->numel / ka > INT32_MAX))
        return nb__fail(NB_ERR_SHAPE, "%s: %s x %s: dimensions exceed the BLAS integer range", who,
                        NB_SHP(a), NB_SHP(b)), false;
    if (!nb__broadcast_shapes(a->ndim - 2, a->shape, b->ndim - 2, b->shape, nd, shape))
        return nb__fail(NB_ERR_SHAPE, "%s: %s x %s: batch dimensions do not broadcast", who, NB_SHP(a),
                        NB_SHP(b)), false;
    shape[(*nd)++] = m;
    shape[(*nd)++] = n;
    return true;
}

nb_tensor *nb_matmul_ex(nb_tensor *a, nb_tensor *b, unsigned flags)
{
    int nd;
    int64_t shape[NB_MAX_DIMS];
    if (!matmul_shape("nb_matmul", a, b, flags, &nd, shape)) return NULL;
    nb_tensor *in[2] = {a, b};
    nb_attrs at = {.i = {(int64_t)flags}};
    return nb__apply("nb_matmul", NB_OP_MATMUL, 2, in, &at, a->dtype, nd, shape);
}

nb_tensor *nb_matmul(nb_tensor *a, nb_tensor *b)
{
    if (!a || !b) return nb__fail(NB_ERR_ARG, "nb_matmul: input %s is NULL", !a ? "a" : "b");
    if (!nb__live("nb_matmul", a) || !nb__live("nb_matmul", b)) return NULL;
    if (a->ndim == 0 || b->ndim == 0)
        return nb__fail(NB_ERR_SHAPE, "nb_matmul: %s x %s: scalars have no matrix product (use nb_mul)",
                        NB_SHP(a), NB_SHP(b));
    if (a->ndim >= 2 && b->ndim >= 2) return nb_matmul_ex(a, b, 0);
    /* vectors: a [k] is [1, k], b [k] is [k, 1]; the added dim is removed from the result */
    if (a->ndim == 1 && b->ndim >= 2 && a->shape[0] != ROWS(b))
        return nb__fail(NB_ERR_SHAPE, "nb_matmul: %s x %s: inner dimensions %lld and %lld differ", NB_SHP(a),
                        NB_SHP(b), (long long)a->shape[0], (long long)ROWS(b));
    int64_t ka = a->shape[a->ndim > 0 ? a->ndim - 1 : 0];
    if (b->ndim == 1 && ka != b->shape[0])
        return nb__fail(NB_ERR_SHAPE, "nb_matmul: %s x %s: inner dimensions %lld and %lld differ", NB_SHP(a),
                        NB_SHP(b), (long long)ka, (long long)b->shape[0]);
    nb_tensor *a2 = a->ndim == 1 ? nb_reshape(a, 2, (const int64_t[]){1, a->shape[0]}) : a;
    nb_tensor *b2 = b->ndim == 1 ? nb_reshape(b, 2, (const int64_t[]){b->shape[0], 1}) : b;
    nb_tensor *c = nb_matmul_ex(a2, b2, 0);
    if (!c) return NULL;
    int64_t shape[NB_MAX_DIMS];
    int nd = 0;
    for (int d = 0; d < c->ndim; d++) {
        if (a->ndim == 1 && d == c->ndim - 2) continue;
        if (b->ndim == 1 && d == c->ndim - 1) continue;
        shape[nd++] = c->shape[d];
    }
    return nb_reshape(c, nd, shape);
}

/* ---- addmm: c + op(a) op(b) ------------------------------------------------------------------- */

/* out [..., m, n] = c (broadcast) + op(a) op(b): c is copied into out, then gemm adds with beta = 1
 * (no temporary for the product, no separate pass for the sum) */
NB_FW(addmm)
{
    const nb_tensor *c = in[0];
    if (c->numel == out->numel) {
        memcpy(out->data, c->data, (size_t)out->numel * nb_dtype_size(out->dtype));
    } else {
        int64_t st[NB_MAX_DIMS];
        nb__bcast_strides(c, out->ndim, out->shape, st);
        nb__strided_copy(nb_dtype_size(out->dtype), out->ndim, out->shape, st, c->data, out->data);
    }
    matmul_into(out, in[1], in[2], (unsigned)at->i[0], 1.0);
}

/* d(c + op(A) op(B)) = dc (summed over c's broadcast dims) + the matmul terms */
NB_BW(addmm)
{
    if (NB_NEED(0)) gin[0] = nb__sum_to(g, n->in[0]->ndim, n->in[0]->shape);
    if (!NB_NEED(1) && !NB_NEED(2)) return;
    /* the product's rule, on a node view holding a and b */
    nb_node prod = *n;
    nb_tensor *ab[2] = {n->in[1], n->in[2]};
    prod.in = ab;
    prod.n_in = 2;
    nb__bw_matmul(&prod, g, gin + 1);
}

nb_tensor *nb_addmm(nb_tensor *c, nb_tensor *a, nb_tensor *b, unsigned flags)
{
    const char *who = "nb_addmm";
    if (!c) return nb__fail(NB_ERR_ARG, "%s: c is NULL", who);
    if (!nb__live(who, c)) return NULL;
    if (!a || !b) return nb__fail(NB_ERR_ARG, "%s: input %s is NULL", who, !a ? "a" : "b");
    if (c->dtype != a->dtype)
        return nb__fail(NB_ERR_DTYPE, "%s: c %s %s and a %s %s: dtypes differ (use nb_cast)", who,
                        nb_dtype_name(c->dtype), NB_SHP(c), nb_dtype_name(a->dtype), NB_SHP(a));
    int nd;
    int64_t shape[NB_MAX_DIMS];
    if (!matmul_shape(who, a, b, flags, &nd, shape)) return NULL;
    int cn;
    int64_t cs[NB_MAX_DIMS];
    if (!nb__broadcast_shapes(c->ndim, c->shape, nd, shape, &cn, cs) || cn != nd ||
        nb__numel(cn, cs) != nb__numel(nd, shape))
        return nb__fail(NB_ERR_SHAPE, "%s: c %s does not broadcast to the product's shape %s", who, NB_SHP(c),
                        nb__shape_str(nd, shape));
    nb_tensor *in[3] = {c, a, b};
    nb_attrs at = {.i = {(int64_t)flags}};
    return nb__apply(who, NB_OP_ADDMM, 3, in, &at, a->dtype, nd, shape);
}
