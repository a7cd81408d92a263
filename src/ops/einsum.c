/* einsum for one or two operands, reduced to existing differentiable ops: labels that only one operand
 * has and the output lacks are summed away in that operand, the rest is arranged (permute + reshape)
 * into one batched matrix product [batch, free a, contracted] x [batch, contracted, free b] (a
 * broadcast multiply when nothing is contracted, a multiply and a sum for one dot product per batch
 * element), and the product is reshaped and permuted into the output's order. No backward rule of its
 * own: gradients and second derivatives come from sum, mul, permute, reshape and matmul. Operands
 * already in a product's layout, or in its transpose ("ij,kj->ik"), are not copied. */
#include "ops.h"

#include <string.h>

#define WHO "nb_einsum"
#define N_LETTERS 52               /* A-Z, a-z */
#define N_LABELS (N_LETTERS + NB_MAX_DIMS) /* then the dims of "...", aligned to the right */

/* One operand's (or the output's) subscripts, as label ids per dim. */
typedef struct term {
    int ndim;
    int label[NB_MAX_DIMS];
} term;

typedef struct parsed {
    int n;             /* operands */
    term in[2], out;
} parsed;

static int letter_id(char c) { return c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? 26 + c - 'a' : -1; }
static char label_char(int id) { return id < 26 ? (char)('A' + id) : id < N_LETTERS ? (char)('a' + id - 26) : '.'; }

/* The subscripts of one term, s[0..len): letters and at most one "..."; whitespace ignored. Fills
 * letters (ids), the number of letters before the ellipsis (or -1 without one). */
static bool scan_term(const char *eq, const char *s, size_t len, const char *what, int *ids, int *nletters,
                      int *ell_at)
{
    *nletters = 0;
    *ell_at = -1;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == ' ' || c == '\t') continue;
        if (c == '.') {
            if (!(i + 2 < len && s[i + 1] == '.' && s[i + 2] == '.'))
                return nb__fail(NB_ERR_ARG, "%s: \"%s\": a '.' that is not part of \"...\" in %s", WHO, eq, what),
                       false;
            if (*ell_at >= 0)
                return nb__fail(NB_ERR_ARG, "%s: \"%s\": %s has more than one \"...\"", WHO, eq, what), false;
            *ell_at = *nletters;
            i += 2;
            continue;
        }
        int id = letter_id(c);
        if (id < 0)
            return nb__fail(NB_ERR_ARG, "%s: \"%s\": bad character '%c' in %s (subscripts are letters, \"...\", "
                            "',' and \"->\")", WHO, eq, c, what), false;
        if (*nletters >= NB_MAX_DIMS)
            return nb__fail(NB_ERR_ARG, "%s: \"%s\": %s has more than %d subscripts", WHO, eq, what, NB_MAX_DIMS),
                   false;
        ids[(*nletters)++] = id;
    }
    return true;
}

/* Parse eq for the operands xs[0..n) into label ids; "..." becomes ids N_LETTERS + e for the e-th of
 * the E broadcast dims (E: the most any operand's "..." covers), aligned to the right. */
static bool parse(const char *eq, int n, nb_tensor *const *xs, parsed *p, int *ell_dims)
{
    const char *arrow = strstr(eq, "->");
    if (arrow && strstr(arrow + 2, "->"))
        return nb__fail(NB_ERR_ARG, "%s: \"%s\": more than one \"->\"", WHO, eq), false;
    size_t lhs_len = arrow ? (size_t)(arrow - eq) : strlen(eq);
    if (memchr(eq, '-', lhs_len) || (arrow && strchr(arrow + 2, '-')) || (arrow && strchr(arrow + 2, '>')) ||
        memchr(eq, '>', lhs_len))
        return nb__fail(NB_ERR_ARG, "%s: \"%s\": a '-' or '>' that is not part of \"->\"", WHO, eq), false;
    int commas = 0;
    for (size_t i = 0; i < lhs_len; i++) commas += eq[i] == ',';
    if (commas + 1 != n)
        return nb__fail(NB_ERR_ARG, "%s: \"%s\": %d operand subscripts for %d operands", WHO, eq, commas + 1, n),
               false;
    if (arrow && memchr(arrow + 2, ',', strlen(arrow + 2)))
        return nb__fail(NB_ERR_ARG, "%s: \"%s\": one output only (a ',' after \"->\")", WHO, eq), false;
    int letters[2][NB_MAX_DIMS], nl[2], ell[2], E = 0;
    const char *s = eq;
    for (int i = 0; i < n; i++) {
        const char *end = i + 1 < n ? strchr(s, ',') : eq + lhs_len;
        char what[32];
        snprintf(what, sizeof what, "operand %d", i);
        if (!scan_term(eq, s, (size_t)(end - s), what, letters[i], &nl[i], &ell[i])) return false;
        const nb_tensor *x = xs[i];
        if (ell[i] < 0 ? nl[i] != x->ndim : nl[i] > x->ndim)
            return nb__fail(NB_ERR_SHAPE, "%s: \"%s\": operand %d %s has %d dims, its subscripts name %d%s", WHO, eq, i,
                            NB_SHP(x), x->ndim, nl[i], ell[i] < 0 ? "" : " and \"...\""), false;
        int e = ell[i] < 0 ? 0 : x->ndim - nl[i];
        if (e > E) E = e;
        term *t = &p->in[i];
        t->ndim = x->ndim;
        for (int d = 0, k = 0; d < x->ndim; d++) /* "..." dims: N_LETTERS until E is known */
            t->label[d] = ell[i] >= 0 && d >= ell[i] && d < ell[i] + e ? N_LETTERS : letters[i][k++];
        for (int a = 0; a < x->ndim; a++)
            for (int b = a + 1; b < x->ndim; b++)
                if (t->label[a] == t->label[b] && t->label[a] < N_LETTERS)
                    return nb__fail(NB_ERR_ARG, "%s: \"%s\": subscript '%c' repeated in operand %d (diagonals and "
                                    "traces are not supported)", WHO, eq, label_char(t->label[a]), i), false;
        s = end + 1;
    }
    /* align every operand's "..." dims to the right of the E broadcast dims */
    for (int i = 0; i < n; i++) {
        if (ell[i] < 0) continue;
        int e = xs[i]->ndim - nl[i];
        for (int d = 0; d < e; d++) p->in[i].label[ell[i] + d] = N_LETTERS + (E - e) + d;
    }
    *ell_dims = E;
    /* the output */
    int count[N_LABELS] = {0};
    for (int i = 0; i < n; i++)
        for (int d = 0; d < p->in[i].ndim; d++) count[p->in[i].label[d]]++;
    term *o = &p->out;
    o->ndim = 0;
    if (arrow) {
        int ol[NB_MAX_DIMS], onl, oell;
        if (!scan_term(eq, arrow + 2, strlen(arrow + 2), "the output", ol, &onl, &oell)) return false;
        if (onl + (oell >= 0 ? E : 0) > NB_MAX_DIMS)
            return nb__fail(NB_ERR_SHAPE, "%s: \"%s\": the output would have %d dims (at most %d)", WHO, eq,
                            onl + (oell >= 0 ? E : 0), NB_MAX_DIMS), false;
        for (int k = 0; k <= onl; k++) {
            if (k == oell)
                for (int d = 0; d < E; d++) o->label[o->ndim++] = N_LETTERS + d;
            if (k == onl) break;
            if (!count[ol[k]])
                return nb__fail(NB_ERR_ARG, "%s: \"%s\": output subscript '%c' is not in any operand", WHO, eq,
                                label_char(ol[k])), false;
            for (int j = 0; j < k; j++)
                if (ol[j] == ol[k])
                    return nb__fail(NB_ERR_ARG, "%s: \"%s\": output subscript '%c' repeated", WHO, eq,
                                    label_char(ol[k])), false;
            o->label[o->ndim++] = ol[k];
        }
    } else {
        /* implicit: the "..." dims, then the letters that occur once, in alphabetical order */
        for (int d = 0; d < E; d++) o->label[o->ndim++] = N_LETTERS + d;
        for (int id = 0; id < N_LETTERS; id++)
            if (count[id] == 1) {
                if (o->ndim >= NB_MAX_DIMS)
                    return nb__fail(NB_ERR_SHAPE, "%s: \"%s\": the output would have more than %d dims", WHO, eq,
                                    NB_MAX_DIMS), false;
                o->label[o->ndim++] = id;
            }
    }
    p->n = n;
    return true;
}

static int find(const term *t, int label)
{
    for (int d = 0; d < t->ndim; d++)
        if (t->label[d] == label) return d;
    return -1;
}

/* Remove dims of x (and of its term) whose bit is set in drop: summed when sum, else (extent 1)
 * reshaped away. */
static nb_tensor *drop_dims(nb_tensor *x, term *t, uint32_t drop, int sum)
{
    if (!drop || !x) return x;
    int64_t shape[NB_MAX_DIMS];
    int axes[NB_MAX_DIMS], na = 0, nd = 0;
    term kept = {0};
    for (int d = 0; d < t->ndim; d++) {
        if (drop & (1u << d)) {
            axes[na++] = d;
        } else {
            shape[nd] = x->shape[d];
            kept.label[nd++] = t->label[d];
        }
    }
    kept.ndim = nd;
    *t = kept;
    return sum ? nb_sum(x, na, axes, 0) : nb_reshape(x, nd, shape);
}

/* x's dims (labels in t) in the order of the labels want[0..n); NULL-safe; no copy for the identity. */
static nb_tensor *arrange(nb_tensor *x, const term *t, const int *want, int n)
{
    int perm[NB_MAX_DIMS];
    bool identity = true;
    for (int d = 0; d < n; d++) {
        perm[d] = find(t, want[d]);
        identity = identity && perm[d] == d;
    }
    return identity || !x ? x : nb_permute(x, n, perm);
}

static bool same_seq(const term *t, const int *a, int na, const int *b, int nbl, const int *c, int nc)
{
    if (t->ndim != na + nbl + nc) return false;
    for (int d = 0; d < na; d++)
        if (t->label[d] != a[d]) return false;
    for (int d = 0; d < nbl; d++)
        if (t->label[na + d] != b[d]) return false;
    for (int d = 0; d < nc; d++)
        if (t->label[na + nbl + d] != c[d]) return false;
    return true;
}

nb_tensor *nb_einsum(const char *subscripts, int n, nb_tensor *const *xs)
{
    if (!subscripts) return nb__fail(NB_ERR_ARG, "%s: subscripts is NULL", WHO);
    if (n < 1 || n > 2 || !xs)
        return nb__fail(NB_ERR_ARG, "%s: \"%s\" with %d operands: 1 or 2 are supported (contract more in pairs)",
                        WHO, subscripts, n);
    for (int i = 0; i < n; i++)
        if (!xs[i]) return nb__fail(NB_ERR_ARG, "%s: \"%s\": operand %d is NULL", WHO, subscripts, i);
    for (int i = 0; i < n; i++) {
        if (!nb__check_float(WHO, xs[i])) return NULL;
        if (xs[i]->dtype != xs[0]->dtype)
            return nb__fail(NB_ERR_DTYPE, "%s: \"%s\": operand %d is %s %s, operand 0 is %s %s: dtypes differ", WHO,
                            subscripts, i, nb_dtype_name(xs[i]->dtype), NB_SHP(xs[i]), nb_dtype_name(xs[0]->dtype),
                            NB_SHP(xs[0]));
    }
    parsed p;
    int E;
    if (!parse(subscripts, n, xs, &p, &E)) return NULL;

    /* extents per label; a label of extent 1 in one operand broadcasts against the other's (that dim is
     * then dropped from its operand) */
    int64_t ext[N_LABELS];
    uint32_t unit[2] = {0, 0};
    for (int d = 0; d < p.in[0].ndim; d++) ext[p.in[0].label[d]] = xs[0]->shape[d];
    for (int d = 0; n == 2 && d < p.in[1].ndim; d++) {
        int l = p.in[1].label[d], da = find(&p.in[0], l);
        int64_t eb = xs[1]->shape[d];
        if (da < 0 || ext[l] == eb) {
            ext[l] = eb;
        } else if (ext[l] == 1) {
            unit[0] |= 1u << da;
            ext[l] = eb;
        } else if (eb == 1) {
            unit[1] |= 1u << d;
        } else {
            return nb__fail(NB_ERR_SHAPE, "%s: \"%s\": subscript '%c' has extent %lld in operand 0 %s and %lld in "
                            "operand 1 %s", WHO, subscripts, label_char(l), (long long)ext[l], NB_SHP(xs[0]),
                            (long long)eb, NB_SHP(xs[1]));
        }
    }

    int64_t out_shape[NB_MAX_DIMS];
    for (int d = 0; d < p.out.ndim; d++) out_shape[d] = ext[p.out.label[d]];
    if (!nb__check_shape(WHO, p.out.ndim, out_shape)) return NULL;

    nb_tensor *a = xs[0], *b = n == 2 ? xs[1] : NULL;
    term ta = p.in[0], tb = n == 2 ? p.in[1] : (term){0};
    a = drop_dims(a, &ta, unit[0], 0);
    if (b) b = drop_dims(b, &tb, unit[1], 0);
    /* labels only one operand has and the output lacks: summed there */
    uint32_t sa = 0, sb = 0;
    for (int d = 0; d < ta.ndim; d++)
        if (find(&p.out, ta.label[d]) < 0 && (!b || find(&tb, ta.label[d]) < 0)) sa |= 1u << d;
    for (int d = 0; d < tb.ndim; d++)
        if (find(&p.out, tb.label[d]) < 0 && find(&ta, tb.label[d]) < 0) sb |= 1u << d;
    a = drop_dims(a, &ta, sa, 1);
    if (!b) {
        nb_tensor *r = a ? arrange(a, &ta, p.out.label, p.out.ndim) : NULL;
        return r && r == xs[0] ? nb__alias(WHO, r) : r; /* "ij->ij": a tensor of its own all the same */
    }
    b = drop_dims(b, &tb, sb, 1);
    if (!a || !b) return NULL;

    /* the groups: batch (in both and the output, in the output's order), free a, free b (each in its
     * operand's order), contracted (in both, not in the output; in a's order) */
    int batch[NB_MAX_DIMS], fa[NB_MAX_DIMS], fb[NB_MAX_DIMS], con[NB_MAX_DIMS], nbt = 0, nfa = 0, nfb = 0, nco = 0;
    for (int d = 0; d < p.out.ndim; d++) {
        int l = p.out.label[d];
        if (find(&ta, l) >= 0 && find(&tb, l) >= 0) batch[nbt++] = l;
    }
    for (int d = 0; d < ta.ndim; d++) {
        int l = ta.label[d];
        if (find(&tb, l) < 0)
            fa[nfa++] = l;
        else if (find(&p.out, l) < 0)
            con[nco++] = l;
    }
    for (int d = 0; d < tb.ndim; d++)
        if (find(&ta, tb.label[d]) < 0) fb[nfb++] = tb.label[d];

    /* a as [B, M, K] (or stored [B, K, M]: transposed by the product), b as [B, K, N] (or [B, N, K]) */
    unsigned flags = 0;
    int want[NB_MAX_DIMS];
    if (same_seq(&ta, batch, nbt, con, nco, fa, nfa) && !same_seq(&ta, batch, nbt, fa, nfa, con, nco)) {
        flags |= NB_TRANS_A;
    } else {
        memcpy(want, batch, sizeof(int) * (size_t)nbt);
        memcpy(want + nbt, fa, sizeof(int) * (size_t)nfa);
        memcpy(want + nbt + nfa, con, sizeof(int) * (size_t)nco);
        a = arrange(a, &ta, want, ta.ndim);
    }
    if (same_seq(&tb, batch, nbt, fb, nfb, con, nco) && !same_seq(&tb, batch, nbt, con, nco, fb, nfb)) {
        flags |= NB_TRANS_B;
    } else {
        memcpy(want, batch, sizeof(int) * (size_t)nbt);
        memcpy(want + nbt, con, sizeof(int) * (size_t)nco);
        memcpy(want + nbt + nco, fb, sizeof(int) * (size_t)nfb);
        b = arrange(b, &tb, want, tb.ndim);
    }
    int64_t B = 1, M = 1, K = 1, N = 1;
    for (int k = 0; k < nbt; k++) B *= ext[batch[k]];
    for (int k = 0; k < nfa; k++) M *= ext[fa[k]];
    for (int k = 0; k < nco; k++) K *= ext[con[k]];
    for (int k = 0; k < nfb; k++) N *= ext[fb[k]];
    nb_tensor *c;
    if (nco == 0) {
        /* nothing contracted (an outer or elementwise product): a [B, M, 1] * b [B, 1, N], broadcast */
        c = nb_mul(nb_reshape(a, 3, (const int64_t[]){B, M, 1}), nb_reshape(b, 3, (const int64_t[]){B, 1, N}));
    } else if (M == 1 && N == 1 && nbt) {
        /* a dot product per batch element: sum(a [B, K] * b [B, K]), not B products of 1 x 1 matrices */
        int last = 1;
        nb_tensor *ab = nb_mul(nb_reshape(a, 2, (const int64_t[]){B, K}), nb_reshape(b, 2, (const int64_t[]){B, K}));
        c = nb_sum(ab, 1, &last, 0);
    } else {
        int64_t sa3[3], sb3[3];
        int nd3 = nbt ? 3 : 2, o3 = nbt ? 1 : 0;
        sa3[0] = sb3[0] = B;
        sa3[o3] = flags & NB_TRANS_A ? K : M;
        sa3[o3 + 1] = flags & NB_TRANS_A ? M : K;
        sb3[o3] = flags & NB_TRANS_B ? N : K;
        sb3[o3 + 1] = flags & NB_TRANS_B ? K : N;
        c = nb_matmul_ex(nb_reshape(a, nd3, sa3), nb_reshape(b, nd3, sb3), flags);
    }
    /* [B, M, N] -> [batch..., free a..., free b...] -> the output's order */
    term tc = {0};
    int64_t shape[NB_MAX_DIMS];
    for (int k = 0; k < nbt; k++) tc.label[tc.ndim++] = batch[k];
    for (int k = 0; k < nfa; k++) tc.label[tc.ndim++] = fa[k];
    for (int k = 0; k < nfb; k++) tc.label[tc.ndim++] = fb[k];
    for (int d = 0; d < tc.ndim; d++) shape[d] = ext[tc.label[d]];
    c = c ? nb_reshape(c, tc.ndim, shape) : NULL;
    return c ? arrange(c, &tc, p.out.label, p.out.ndim) : NULL;
}
