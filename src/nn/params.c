/* Parameter collections and initialisers. Written against nabla.h only, like user code. */
#include <nabla.h>

#include <math.h>
#include <string.h>

#include "../train/names.h"

typedef struct entry {
    char *name;
    nb_tensor *t;
    int trainable;
} entry;

struct nb_params {
    entry *e;
    int n, cap;
    int training;
};

nb_params *nb_params_new(void)
{
    nb_params *p = nb_calloc(1, sizeof *p);
    if (!p) {
        nb_error_set(NB_ERR_NOMEM, "nb_params_new: out of memory");
        return NULL;
    }
    p->training = 1;
    return p;
}

void nb_params_free(nb_params *p)
{
    if (!p) return;
    for (int i = 0; i < p->n; i++) {
        nb_tensor_unclaim(p->e[i].t, p);
        nb_tensor_free(p->e[i].t);
        nb_dealloc(p->e[i].name, strlen(p->e[i].name) + 1);
    }
    nb_dealloc(p->e, (size_t)p->cap * sizeof *p->e);
    nb_dealloc(p, sizeof *p);
}

/* The contract of nb_params_add: the collection takes t, also on failure, when t is the caller's to
 * give (an unowned leaf); an op result or a leaf with an owner (this collection, another, a
 * dataset...) is left as it is. */
static nb_tensor *add(nb_params *p, const char *name, nb_tensor *t, int trainable, const char *who)
{
    if (!t) return NULL; /* the constructor's error stands */
    if (!nb_tensor_is_leaf(t)) {
        nb_error_set(NB_ERR_ARG, "%s: %s is an op result; parameters must be leaves", who, name ? name : "(null)");
        return NULL;
    }
    if (nb_tensor_owner(t)) {
        const char *as = NULL;
        for (int i = 0; p && i < p->n && !as; i++)
            if (p->e[i].t == t) as = p->e[i].name;
        if (as)
            nb_error_set(NB_ERR_ARG, "%s: %s: the tensor is in this collection already (as %s)", who,
                         name ? name : "(null)", as);
        else
            nb_error_set(NB_ERR_ARG, "%s: %s: the tensor belongs to another container (a parameter collection, a "
                         "dataset, an optimizer...); a tensor has one owner (add a copy: nb_tensor_clone)", who,
                         name ? name : "(null)");
        return NULL; /* t stays with its owner */
    }
    if (nb_tensor_is_view(t)) {
        nb_tensor_free(t); /* the caller's to give: the collection takes it, as on every failure below */
        nb_error_set(NB_ERR_ARG, "%s: %s: the tensor is a view of another leaf (made without a tape); a "
                     "parameter or buffer needs data of its own: add nb_tensor_clone(view)", who,
                     name ? name : "(null)");
        return NULL;
    }
    if (!p || !name || !*name) {
        nb_tensor_free(t);
        nb_error_set(NB_ERR_ARG, "%s: collection or name missing", who);
        return NULL;
    }
    const char *bad = nbn_param_name_problem(name); /* what nb_checkpoint_save would refuse */
    if (bad) {
        nb_tensor_free(t);
        nb_error_set(NB_ERR_ARG, "%s: name \"%s\" is not allowed: %s", who, name, bad);
        return NULL;
    }
    if (nb_params_find(p, name)) {
        nb_tensor_free(t);
        nb_error_set(NB_ERR_ARG, "%s: a parameter named %s exists already", who, name);
        return NULL;
    }
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 16;
        entry *e = nb_realloc(p->e, (size_t)p->cap * sizeof *e, (size_t)cap * sizeof *e);
        if (!e) {
            nb_tensor_free(t);
            nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, name);
            return NULL;
        }
        p->e = e;
        p->cap = cap;
    }
    char *copy = nb_strdup(name);
    if (!copy) {
        nb_tensor_free(t);
        nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, name);
        return NULL;
    }
    /* the tensor's own copy of the name (for graphs and messages) can fail too */
    if ((trainable && nb_tensor_set_requires_grad(t, 1) != NB_OK) || nb_tensor_set_name(t, name) != NB_OK ||
        nb_tensor_claim(t, p) != NB_OK) {
        nb_dealloc(copy, strlen(copy) + 1);
        nb_tensor_free(t);
        return NULL;
    }
    p->e[p->n++] = (entry){copy, t, trainable};
    return t;
}

nb_tensor *nb_params_add(nb_params *p, const char *name, nb_tensor *t) { return add(p, name, t, 1, "nb_params_add"); }
nb_tensor *nb_params_add_buffer(nb_params *p, const char *name, nb_tensor *t) { return add(p, name, t, 0, "nb_params_add_buffer"); }

int nb_params_count(const nb_params *p) { return p ? p->n : 0; }
nb_tensor *nb_params_tensor(const nb_params *p, int i) { return p && i >= 0 && i < p->n ? p->e[i].t : NULL; }
const char *nb_params_name(const nb_params *p, int i) { return p && i >= 0 && i < p->n ? p->e[i].name : NULL; }
int nb_params_trainable(const nb_params *p, int i) { return p && i >= 0 && i < p->n ? p->e[i].trainable : 0; }

nb_tensor *nb_params_find(const nb_params *p, const char *name)
{
    if (!p || !name) return NULL;
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->e[i].name, name) == 0) return p->e[i].t;
    return NULL;
}

int64_t nb_params_numel(const nb_params *p)
{
    int64_t n = 0;
    for (int i = 0; p && i < p->n; i++)
        if (p->e[i].trainable) n += nb_tensor_numel(p->e[i].t);
    return n;
}

void nb_params_zero_grad(nb_params *p)
{
    for (int i = 0; p && i < p->n; i++) nb_tensor_zero_grad(p->e[i].t);
}

void nb_params_print(const nb_params *p, FILE *f)
{
    if (!f) f = stdout;
    if (!p) {
        fprintf(f, "(no parameters)\n");
        return;
    }
    size_t width = 4;
    for (int i = 0; i < p->n; i++)
        if (strlen(p->e[i].name) > width) width = strlen(p->e[i].name);
    for (int i = 0; i < p->n; i++) {
        char shape[96];
        fprintf(f, "  %-*s  %s %-16s %10lld%s\n", (int)width, p->e[i].name, nb_dtype_name(nb_tensor_dtype(p->e[i].t)),
                nb_shape_str(p->e[i].t, shape, sizeof shape), (long long)nb_tensor_numel(p->e[i].t),
                p->e[i].trainable ? "" : "  (buffer)");
    }
    fprintf(f, "  %d tensors, %lld trainable parameters\n", p->n, (long long)nb_params_numel(p));
}

void nb_params_set_training(nb_params *p, int training)
{
    if (p) p->training = training ? 1 : 0;
}

int nb_params_training(const nb_params *p) { return p ? p->training : 0; }

/* ---- initialisers ----------------------------------------------------------------------------- */

static void fill_uniform(nb_tensor *t, double bound, nb_rng *rng)
{
    for (int64_t i = 0; i < nb_tensor_numel(t); i++) nb_tensor_set(t, i, (2.0 * nb_rng_uniform(rng) - 1.0) * bound);
}

static void fill_normal(nb_tensor *t, double std, nb_rng *rng)
{
    for (int64_t i = 0; i < nb_tensor_numel(t); i++) nb_tensor_set(t, i, std * nb_rng_normal(rng));
}

/* ---- orthogonal: Householder QR ---------------------------------------------------------------- */

/* Householder QR of a [m, n] row-major matrix, m >= n, in place: on return the columns k of a below
 * the diagonal and rdiag[k] hold the reflectors and R's diagonal, then q [m, n] = the thin Q with
 * R's diagonal made positive (Q's column k times sign(R[k][k])). H_k = I - 2 v v^T with v unit. */
static void householder_q(double *a, int64_t m, int64_t n, double *q, double *rdiag)
{
    for (int64_t k = 0; k < n; k++) {
        double norm = 0;
        for (int64_t i = k; i < m; i++) norm += a[i * n + k] * a[i * n + k];
        norm = sqrt(norm);
        /* x - alpha e1 with alpha = -sign(x0) |x|: no cancellation */
        double alpha = a[k * n + k] > 0 ? -norm : norm;
        rdiag[k] = alpha;
        a[k * n + k] -= alpha;
        double vnorm = 0;
        for (int64_t i = k; i < m; i++) vnorm += a[i * n + k] * a[i * n + k];
        vnorm = sqrt(vnorm);
        for (int64_t i = k; i < m; i++) a[i * n + k] = vnorm > 0 ? a[i * n + k] / vnorm : 0; /* v (0: H = I) */
        for (int64_t j = k + 1; j < n; j++) { /* the rest of the columns: A -= 2 v (v^T A) */
            double dot = 0;
            for (int64_t i = k; i < m; i++) dot += a[i * n + k] * a[i * n + j];
            for (int64_t i = k; i < m; i++) a[i * n + j] -= 2 * dot * a[i * n + k];
        }
    }
    /* Q = H_0 ... H_{n-1} I[:, :n], applied from the last reflector */
    for (int64_t i = 0; i < m * n; i++) q[i] = 0;
    for (int64_t k = 0; k < n; k++) q[k * n + k] = 1;
    for (int64_t k = n - 1; k >= 0; k--)
        for (int64_t j = 0; j < n; j++) {
            double dot = 0;
            for (int64_t i = k; i < m; i++) dot += a[i * n + k] * q[i * n + j];
            for (int64_t i = k; i < m; i++) q[i * n + j] -= 2 * dot * a[i * n + k];
        }
    for (int64_t j = 0; j < n; j++)
        if (rdiag[j] < 0)
            for (int64_t i = 0; i < m; i++) q[i * n + j] = -q[i * n + j];
}

static nb_status fill_orthogonal(nb_tensor *t, double gain, nb_rng *rng, const char *who)
{
    if (nb_tensor_ndim(t) < 2) {
        char s[96];
        nb_error_set(NB_ERR_SHAPE, "%s: orthogonal init needs a tensor of 2 or more dims, got %s", who,
                     nb_shape_str(t, s, sizeof s));
        return NB_ERR_SHAPE;
    }
    int64_t rows = nb_tensor_dim(t, 0), numel = nb_tensor_numel(t);
    if (numel == 0) return NB_OK;
    int64_t cols = numel / rows, m = rows < cols ? cols : rows, n = rows < cols ? rows : cols;
    /* work space as library leaves (the library's allocator): a [m, n], q [m, n], R's diagonal */
    nb_tensor *wa = nb_tensor_zeros(NB_F64, NB_SHAPE(m, n)), *wq = nb_tensor_zeros(NB_F64, NB_SHAPE(m, n));
    nb_tensor *wd = nb_tensor_zeros(NB_F64, NB_SHAPE(n));
    if (!wa || !wq || !wd) {
        nb_tensor_free(wa);
        nb_tensor_free(wq);
        nb_tensor_free(wd);
        return nb_error_code();
    }
    double *a = nb_tensor_data(wa), *q = nb_tensor_data(wq);
    /* the [rows, cols] draws in row-major order; a is that matrix, or its transpose when rows < cols */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            double z = nb_rng_normal(rng);
            if (rows < cols)
                a[c * n + r] = z;
            else
                a[r * n + c] = z;
        }
    householder_q(a, m, n, q, nb_tensor_data(wd));
    nb_status st = NB_OK;
    for (int64_t r = 0; r < rows && st == NB_OK; r++)
        for (int64_t c = 0; c < cols && st == NB_OK; c++)
            st = nb_tensor_set(t, r * cols + c, gain * (rows < cols ? q[c * n + r] : q[r * n + c]));
    nb_tensor_free(wa);
    nb_tensor_free(wq);
    nb_tensor_free(wd);
    return st;
}

/* ---- truncated normal: inverse-CDF sampling ----------------------------------------------------- */

/* The standard normal's CDF and its upper tail, accurate in the tails (erfc, not 1 - erf). */
static double phi_lower(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }
static double phi_upper(double x) { return 0.5 * erfc(x / sqrt(2.0)); }

/* The standard normal quantile for p in (0, 0.5]: Abramowitz and Stegun 26.2.23 (error < 4.5e-4)
 * polished by Halley steps on phi_lower(x) - p, which converge cubically to double precision. */
static double normal_quantile_lower(double p)
{
    if (!(p > 0)) return -INFINITY;
    double t = sqrt(-2.0 * log(p));
    double x = -(t - (2.515517 + t * (0.802853 + t * 0.010328)) / (1.0 + t * (1.432788 + t * (0.189269 + t * 0.001308))));
    for (int it = 0; it < 4; it++) {
        double e = phi_lower(x) - p;
        double u = e * 2.5066282746310002 * exp(0.5 * x * x); /* e / phi'(x), phi' = e^(-x^2/2) / sqrt(2 pi) */
        if (!isfinite(u)) break;
        double step = u / (1.0 + 0.5 * x * u);
        x -= step;
        if (fabs(step) <= 1e-15 * fabs(x)) break; /* converged (cubically: two or three steps) */
    }
    return x;
}

/* The standard normal cut to [alpha, beta]: Phi(alpha), the upper tail 1 - Phi(beta), and the mass
 * between, each computed where it keeps its precision. */
typedef struct trunc_normal {
    double alpha, beta, pa, qb, mass;
} trunc_normal;

static trunc_normal trunc_normal_of(double alpha, double beta)
{
    trunc_normal d = {alpha, beta, phi_lower(alpha), phi_upper(beta), 0};
    d.mass = alpha >= 0 ? phi_upper(alpha) - d.qb : beta <= 0 ? phi_lower(beta) - d.pa : 1.0 - d.pa - d.qb;
    return d;
}

/* One draw from one uniform u: x = Phi^-1(Phi(alpha) + u (Phi(beta) - Phi(alpha))), computed on
 * whichever tail keeps the precision. */
static double trunc_std_normal(const trunc_normal *d, double u)
{
    double x;
    if (!(d->mass > 0))
        x = fabs(d->alpha) < fabs(d->beta) ? d->alpha : d->beta; /* no mass in double precision: the nearer bound */
    else if (d->pa + u * d->mass <= 0.5)
        x = normal_quantile_lower(d->pa + u * d->mass);
    else
        x = -normal_quantile_lower(d->qb + (1.0 - u) * d->mass); /* the upper tail, mirrored */
    return x < d->alpha ? d->alpha : x > d->beta ? d->beta : x;
}

static nb_status fill_trunc_normal(nb_tensor *t, nb_init init, nb_rng *rng, const char *who)
{
    double std = init.a != 0 ? init.a : 1.0, lo = init.lo, hi = init.hi;
    if (lo == 0 && hi == 0) lo = -2, hi = 2;
    if (!(std > 0) || !isfinite(std) || !(lo < hi) || !isfinite(init.mean) || isnan(lo) || isnan(hi)) {
        nb_error_set(NB_ERR_ARG, "%s: truncated normal needs std > 0 and lo < hi (std %g, mean %g, [%g, %g])", who, std,
                     init.mean, lo, hi);
        return NB_ERR_ARG;
    }
    trunc_normal d = trunc_normal_of((lo - init.mean) / std, (hi - init.mean) / std);
    int f32 = nb_tensor_dtype(t) == NB_F32;
    for (int64_t i = 0; i < nb_tensor_numel(t); i++) {
        double v = init.mean + std * trunc_std_normal(&d, nb_rng_uniform(rng));
        v = v < lo ? lo : v > hi ? hi : v;
        /* in float32, keep the rounded value inside the rounded bounds */
        if (f32) v = fmin(fmax(v, (double)(float)lo), (double)(float)hi);
        nb_status st = nb_tensor_set(t, i, v);
        if (st != NB_OK) return st;
    }
    return NB_OK;
}

nb_status nb_init_tensor(nb_tensor *t, nb_init init, int64_t fan_in, int64_t fan_out, nb_rng *rng)
{
    const char *who = "nb_init_tensor";
    if (!t) {
        nb_error_set(NB_ERR_ARG, "%s: tensor is NULL", who);
        return NB_ERR_ARG;
    }
    int random = init.kind != NB_INIT_ZEROS && init.kind != NB_INIT_CONSTANT;
    if (random && !rng) {
        nb_error_set(NB_ERR_ARG, "%s: rng is NULL", who);
        return NB_ERR_ARG;
    }
    if (random && (unsigned)init.kind < NB_INIT_COUNT && init.kind != NB_INIT_DEFAULT) {
        /* draws truncated into integers, and a NaN bound or gain, fill a tensor with nonsense */
        char s[96];
        nb_dtype dt = nb_tensor_dtype(t);
        if (dt != NB_F32 && dt != NB_F64) {
            nb_error_set(NB_ERR_DTYPE, "%s: a random initialiser needs an f32 or f64 tensor, got %s %s", who,
                         nb_dtype_name(dt), nb_shape_str(t, s, sizeof s));
            return NB_ERR_DTYPE;
        }
        if (!isfinite(init.a)) {
            nb_error_set(NB_ERR_ARG, "%s: init kind %d with a = %g (it must be finite)", who, (int)init.kind, init.a);
            return NB_ERR_ARG;
        }
    }
    if (fan_in < 1) fan_in = 1;
    if (fan_out < 1) fan_out = 1;
    double gain = init.a != 0 ? init.a : 1.0;
    switch (init.kind) {
    case NB_INIT_ZEROS: return nb_tensor_fill(t, 0.0);
    case NB_INIT_CONSTANT: return nb_tensor_fill(t, init.a);
    case NB_INIT_UNIFORM: fill_uniform(t, init.a, rng); break;
    case NB_INIT_NORMAL: fill_normal(t, init.a, rng); break;
    case NB_INIT_XAVIER_UNIFORM: fill_uniform(t, gain * sqrt(6.0 / (double)(fan_in + fan_out)), rng); break;
    case NB_INIT_XAVIER_NORMAL: fill_normal(t, gain * sqrt(2.0 / (double)(fan_in + fan_out)), rng); break;
    case NB_INIT_KAIMING_UNIFORM:
        fill_uniform(t, sqrt(6.0 / ((1.0 + init.a * init.a) * (double)fan_in)), rng);
        break;
    case NB_INIT_KAIMING_NORMAL: fill_normal(t, sqrt(2.0 / ((1.0 + init.a * init.a) * (double)fan_in)), rng); break;
    case NB_INIT_ORTHOGONAL: return fill_orthogonal(t, gain, rng, who);
    case NB_INIT_TRUNC_NORMAL: return fill_trunc_normal(t, init, rng, who);
    default:
        nb_error_set(NB_ERR_ARG, "%s: init kind %d is not a concrete initialiser", who, (int)init.kind);
        return NB_ERR_ARG;
    }
    return NB_OK;
}
