/* Fused optimizer updates: one pass over a parameter p[n], its gradient g[n] and its state, written
 * once and compiled for float and double (optim.c includes this file per type with NB_T, NB_SFX and
 * NB_M(fn) defined). Element arithmetic is done in NB_T, as torch.optim does; the per-step scalars
 * arrive in double. No include guard: included once per type. */

#ifndef NB_OPTIM_PARALLEL
/* Updates on OpenMP threads (the library's thread knob, nb_num_threads): [0, n) in pieces aligned to
 * 16 elements, one per thread, with at least NB_OPTIM_GRAIN elements each; serial below that, with no
 * OpenMP call. Each element's update is independent, so the result does not depend on the split. */
#ifdef _OPENMP
#include <omp.h>
#endif
#define NB_OPTIM_GRAIN ((int64_t)16384)
static inline int nb_optim_threads(int64_t n)
{
    if (n < 2 * NB_OPTIM_GRAIN) return 1;
    int64_t t = n / NB_OPTIM_GRAIN, k = nb_num_threads();
    return (int)(t < k ? t : k);
}
/* [0, n) in pieces on nt threads, piece boundaries at multiples of align */
#ifdef _OPENMP
#define NB_OPTIM_PIECES(nt, n, align, lo, hi, ...)                                                     \
    do {                                                                                               \
        const int64_t nb_n_ = (n);                                                                     \
        const int nb_t_ = (nt);                                                                        \
        if (nb_t_ <= 1) {                                                                              \
            const int64_t lo = 0, hi = nb_n_;                                                          \
            __VA_ARGS__                                                                                \
        } else {                                                                                       \
            _Pragma("omp parallel num_threads(nb_t_)")                                                 \
            {                                                                                          \
                const int64_t nb_i_ = omp_get_thread_num(), nb_k_ = omp_get_num_threads();            \
                const int64_t lo = nb_i_ == 0 ? 0 : nb_n_ * nb_i_ / nb_k_ / (align) * (align);         \
                const int64_t hi = nb_i_ + 1 == nb_k_ ? nb_n_ : nb_n_ * (nb_i_ + 1) / nb_k_ / (align) * (align); \
                __VA_ARGS__                                                                            \
            }                                                                                          \
        }                                                                                              \
    } while (0)
#else
#define NB_OPTIM_PIECES(nt, n, align, lo, hi, ...)                                                     \
    do {                                                                                               \
        (void)(nt);                                                                                    \
        const int64_t lo = 0, hi = (n);                                                                \
        __VA_ARGS__                                                                                    \
    } while (0)
#endif
#define NB_OPTIM_PARALLEL(n, lo, hi, ...) NB_OPTIM_PIECES(nb_optim_threads(n), n, 16, lo, hi, __VA_ARGS__)
/* Sums of squares are added in fixed blocks of NB_OPTIM_BLOCK elements (more for huge tensors, at
 * most NB_OPTIM_MAX_BLOCKS of them), the blocks' sums in block order: the same bits for any thread
 * count. */
#define NB_OPTIM_BLOCK ((int64_t)16384)
#define NB_OPTIM_MAX_BLOCKS 256
#endif

#define NB_CAT_(a, b) a##_##b
#define NB_CAT(a, b) NB_CAT_(a, b)
#define NB_K(name) NB_CAT(name, NB_SFX)

/* SGD: d = g + wd p; buf = first ? d : mom buf + (1 - damp) d; d = nesterov ? d + mom buf : buf;
 * p -= lr d (buf unused when mom = 0) */
static void NB_K(sgd)(int64_t n, NB_T *p, const NB_T *g, NB_T *buf, int first, double lr, double wd, double mom,
                      double damp, int nesterov)
{
    const NB_T a = (NB_T)lr, w = (NB_T)wd, m = (NB_T)mom, d1 = (NB_T)(1.0 - damp);
    NB_OPTIM_PARALLEL(n, lo, hi, {
        for (int64_t i = lo; i < hi; i++) {
            NB_T d = g[i] + w * p[i];
            if (mom != 0) {
                NB_T b = first ? d : m * buf[i] + d1 * d;
                buf[i] = b;
                d = nesterov ? d + m * b : b;
            }
            p[i] -= a * d;
        }
    });
}

/* Adam / AdamW: (AdamW: p *= 1 - lr wd; Adam: g += wd p)
 * m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  vmax = max(vmax, v) with amsgrad;
 * p -= (lr / bc1) m / (sqrt(v or vmax) / sqrt(bc2) + eps)
 * Branch-free inside the loops (decay is 1 for Adam, l2 is 0 for AdamW), so they vectorise. */
#define ADAM_BODY(V)                                                                                   \
    for (int64_t i = lo; i < hi; i++) {                                                                  \
        NB_T pi = p[i], gi = g[i] + l2 * pi;                                                           \
        NB_T mi = B1 * m[i] + one_b1 * gi;                                                             \
        NB_T vi = B2 * v[i] + one_b2 * gi * gi;                                                        \
        m[i] = mi;                                                                                     \
        v[i] = vi;                                                                                     \
        V;                                                                                             \
        p[i] = pi * decay - step * mi / (NB_M(sqrt)(vi) / bc2s + e);                                   \
    }

static void NB_K(adam)(int64_t n, NB_T *p, const NB_T *g, NB_T *m, NB_T *v, NB_T *vmax, double lr, double wd,
                       int decoupled, double b1, double b2, double eps, double bc1, double bc2_sqrt)
{
    const NB_T one_b1 = (NB_T)(1.0 - b1), one_b2 = (NB_T)(1.0 - b2), B1 = (NB_T)b1, B2 = (NB_T)b2;
    const NB_T step = (NB_T)(lr / bc1), bc2s = (NB_T)bc2_sqrt, e = (NB_T)eps;
    const NB_T decay = decoupled ? (NB_T)(1.0 - lr * wd) : (NB_T)1, l2 = decoupled ? (NB_T)0 : (NB_T)wd;
    NB_OPTIM_PARALLEL(n, lo, hi, {
        if (vmax) {
            ADAM_BODY(NB_T vm = vmax[i] > vi ? vmax[i] : vi; vmax[i] = vm; vi = vm)
        } else {
            ADAM_BODY((void)0)
        }
    });
}
#undef ADAM_BODY

/* RMSprop: g += wd p; s = a s + (1 - a) g^2; centered: ga = a ga + (1 - a) g, avg = sqrt(s - ga^2)
 * else sqrt(s); avg += eps; momentum: buf = mom buf + g / avg, p -= lr buf; else p -= lr g / avg.
 * One loop per (centered, momentum) combination, each branch-free. */
#define RMS_BODY(AVG, UPDATE)                                                                          \
    for (int64_t i = lo; i < hi; i++) {                                                                  \
        NB_T gi = g[i] + w * p[i];                                                                     \
        NB_T s = a * sq[i] + one_a * gi * gi;                                                          \
        sq[i] = s;                                                                                     \
        NB_T avg;                                                                                      \
        AVG;                                                                                           \
        UPDATE;                                                                                        \
    }
#define RMS_PLAIN avg = NB_M(sqrt)(s) + e
#define RMS_CENTERED                                                                                   \
    NB_T ga = a * gavg[i] + one_a * gi;                                                                \
    gavg[i] = ga;                                                                                      \
    avg = NB_M(sqrt)(s - ga * ga) + e
#define RMS_STEP p[i] -= l * gi / avg
#define RMS_MOMENTUM                                                                                   \
    NB_T b = m * buf[i] + gi / avg;                                                                    \
    buf[i] = b;                                                                                        \
    p[i] -= l * b

static void NB_K(rmsprop)(int64_t n, NB_T *p, const NB_T *g, NB_T *sq, NB_T *gavg, NB_T *buf, double lr, double wd,
                          double alpha, double eps, double mom)
{
    const NB_T a = (NB_T)alpha, one_a = (NB_T)(1.0 - alpha), e = (NB_T)eps, w = (NB_T)wd, l = (NB_T)lr, m = (NB_T)mom;
    NB_OPTIM_PARALLEL(n, lo, hi, {
        if (gavg && buf) {
            RMS_BODY(RMS_CENTERED, RMS_MOMENTUM)
        } else if (gavg) {
            RMS_BODY(RMS_CENTERED, RMS_STEP)
        } else if (buf) {
            RMS_BODY(RMS_PLAIN, RMS_MOMENTUM)
        } else {
            RMS_BODY(RMS_PLAIN, RMS_STEP)
        }
    });
}
#undef RMS_BODY
#undef RMS_PLAIN
#undef RMS_CENTERED
#undef RMS_STEP
#undef RMS_MOMENTUM

/* Adagrad: g += wd p; sum += g^2; p -= clr g / (sqrt(sum) + eps) */
static void NB_K(adagrad)(int64_t n, NB_T *p, const NB_T *g, NB_T *sum, double clr, double wd, double eps)
{
    const NB_T c = (NB_T)clr, w = (NB_T)wd, e = (NB_T)eps;
    NB_OPTIM_PARALLEL(n, lo, hi, {
        for (int64_t i = lo; i < hi; i++) {
            NB_T gi = g[i] + w * p[i];
            NB_T s = sum[i] + gi * gi;
            sum[i] = s;
            p[i] -= c * gi / (NB_M(sqrt)(s) + e);
        }
    });
}

/* NAdam: g += wd p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; den = sqrt(v / bc2) + eps;
 * p -= cg g / den; p -= cm m / den, with the step's cg = lr (1 - mu) / (1 - mu_prod) and
 * cm = lr mu_next / (1 - mu_prod mu_next) */
static void NB_K(nadam)(int64_t n, NB_T *p, const NB_T *g, NB_T *m, NB_T *v, double wd, double b1, double b2,
                        double eps, double bc2, double cg, double cm)
{
    const NB_T w = (NB_T)wd, B1 = (NB_T)b1, B2 = (NB_T)b2, one_b1 = (NB_T)(1.0 - b1), one_b2 = (NB_T)(1.0 - b2);
    const NB_T e = (NB_T)eps, c2 = (NB_T)bc2, kg = (NB_T)cg, km = (NB_T)cm;
    NB_OPTIM_PARALLEL(n, lo, hi, {
        for (int64_t i = lo; i < hi; i++) {
            NB_T pi = p[i], gi = g[i] + w * pi;
            NB_T mi = B1 * m[i] + one_b1 * gi;
            NB_T vi = B2 * v[i] + one_b2 * (gi * gi);
            m[i] = mi;
            v[i] = vi;
            NB_T den = NB_M(sqrt)(vi / c2) + e;
            pi -= kg * (gi / den);
            p[i] = pi - km * (mi / den);
        }
    });
}

/* RAdam: g += wd p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; rectified steps (rect > 0):
 * p -= (m / bc1) lr (sqrt(bc2) / (sqrt(v) + eps)) rect, else p -= (m / bc1) lr */
static void NB_K(radam)(int64_t n, NB_T *p, const NB_T *g, NB_T *m, NB_T *v, double lr, double wd, double b1,
                        double b2, double eps, double bc1, double bc2_sqrt, double rect)
{
    const NB_T w = (NB_T)wd, B1 = (NB_T)b1, B2 = (NB_T)b2, one_b1 = (NB_T)(1.0 - b1), one_b2 = (NB_T)(1.0 - b2);
    const NB_T e = (NB_T)eps, c1 = (NB_T)bc1, c2s = (NB_T)bc2_sqrt, l = (NB_T)lr, r = (NB_T)rect;
    NB_OPTIM_PARALLEL(n, lo, hi, {
        for (int64_t i = lo; i < hi; i++) {
            NB_T pi = p[i], gi = g[i] + w * pi;
            NB_T mi = B1 * m[i] + one_b1 * gi;
            NB_T vi = B2 * v[i] + one_b2 * (gi * gi);
            m[i] = mi;
            v[i] = vi;
            NB_T u = mi / c1 * l;
            if (rect > 0) u = u * (c2s / (NB_M(sqrt)(vi) + e)) * r;
            p[i] = pi - u;
        }
    });
}

/* Adamax: g += wd p; m = b1 m + (1 - b1) g; u = max(b2 u, |g| + eps); p -= clr m / u */
static void NB_K(adamax)(int64_t n, NB_T *p, const NB_T *g, NB_T *m, NB_T *u, double clr, double wd, double b1,
                         double b2, double eps)
{
    const NB_T w = (NB_T)wd, B1 = (NB_T)b1, B2 = (NB_T)b2, one_b1 = (NB_T)(1.0 - b1), e = (NB_T)eps, c = (NB_T)clr;
    NB_OPTIM_PARALLEL(n, lo, hi, {
        for (int64_t i = lo; i < hi; i++) {
            NB_T pi = p[i], gi = g[i] + w * pi;
            NB_T mi = B1 * m[i] + one_b1 * gi;
            NB_T a = B2 * u[i], b = NB_M(fabs)(gi) + e;
            NB_T ui = b > a ? b : a;
            m[i] = mi;
            u[i] = ui;
            p[i] = pi - c * (mi / ui);
        }
    });
}

/* Adadelta: g += wd p; s = rho s + (1 - rho) g^2; delta = sqrt(acc + eps) / sqrt(s + eps) g;
 * acc = rho acc + (1 - rho) delta^2; p -= lr delta */
static void NB_K(adadelta)(int64_t n, NB_T *p, const NB_T *g, NB_T *sq, NB_T *acc, double lr, double wd, double rho,
                           double eps)
{
    const NB_T w = (NB_T)wd, r = (NB_T)rho, one_r = (NB_T)(1.0 - rho), e = (NB_T)eps, l = (NB_T)lr;
    NB_OPTIM_PARALLEL(n, lo, hi, {
        for (int64_t i = lo; i < hi; i++) {
            NB_T pi = p[i], gi = g[i] + w * pi;
            NB_T si = r * sq[i] + one_r * (gi * gi);
            sq[i] = si;
            NB_T delta = NB_M(sqrt)(acc[i] + e) / NB_M(sqrt)(si + e) * gi;
            acc[i] = r * acc[i] + one_r * (delta * delta);
            p[i] = pi - l * delta;
        }
    });
}

/* Vector operations of L-BFGS on one parameter's slice of the flat vectors (x, y, z [n]); the
 * reductions stay on one thread (so do their results, whatever the thread count). */
static double NB_K(vdot)(int64_t n, const NB_T *x, const NB_T *y) /* sum x y, accumulated in double */
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)y[i];
    return s;
}

static void NB_K(vaxpy)(int64_t n, NB_T *y, double a, const NB_T *x) /* y += a x */
{
    const NB_T k = (NB_T)a;
    NB_OPTIM_PARALLEL(n, lo, hi, {
        for (int64_t i = lo; i < hi; i++) y[i] += k * x[i];
    });
}

static void NB_K(vscale)(int64_t n, NB_T *y, double a, const NB_T *x) /* y = a x (x may be y) */
{
    const NB_T k = (NB_T)a;
    NB_OPTIM_PARALLEL(n, lo, hi, {
        for (int64_t i = lo; i < hi; i++) y[i] = k * x[i];
    });
}

static void NB_K(vsub)(int64_t n, NB_T *z, const NB_T *x, const NB_T *y) /* z = x - y */
{
    NB_OPTIM_PARALLEL(n, lo, hi, {
        for (int64_t i = lo; i < hi; i++) z[i] = x[i] - y[i];
    });
}

static double NB_K(vabsmax)(int64_t n, const NB_T *x) /* max |x| (0 for n = 0; NaN if any is NaN) */
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double a = NB_M(fabs)(x[i]);
        if (a > m || a != a) m = a;
    }
    return m;
}

static double NB_K(vabssum)(int64_t n, const NB_T *x) /* sum |x|, accumulated in double */
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += NB_M(fabs)(x[i]);
    return s;
}

/* sum of g[0..n)^2 in double, in 8 lanes (element i in lane i mod 8), added pairwise */
static double NB_K(sumsq_run)(int64_t n, const NB_T *g)
{
    double l[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) l[j] += (double)g[i + j] * (double)g[i + j];
    for (int j = 0; i < n; i++, j++) l[j] += (double)g[i] * (double)g[i];
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

/* sum of g^2, accumulated in double in fixed blocks (see NB_OPTIM_BLOCK) */
static double NB_K(sumsq)(int64_t n, const NB_T *g)
{
    int64_t len = NB_OPTIM_BLOCK;
    while (n > len * NB_OPTIM_MAX_BLOCKS) len *= 2;
    const int64_t nblk = (n + len - 1) / len;
    double part[NB_OPTIM_MAX_BLOCKS], s = 0;
    const int nt = nb_optim_threads(n);
    NB_OPTIM_PIECES(nt < nblk ? nt : (int)nblk, nblk, 1, lo, hi, {
        for (int64_t b = lo; b < hi; b++) part[b] = NB_K(sumsq_run)(b + 1 < nblk ? len : n - b * len, g + b * len);
    });
    for (int64_t b = 0; b < nblk; b++) s += part[b];
    return s;
}

/* g *= c */
static void NB_K(scale)(int64_t n, NB_T *g, double c)
{
    const NB_T k = (NB_T)c;
    NB_OPTIM_PARALLEL(n, lo, hi, {
        for (int64_t i = lo; i < hi; i++) g[i] *= k;
    });
}

/* g = clamp(g, -c, c) */
static void NB_K(clampv)(int64_t n, NB_T *g, double c)
{
    const NB_T k = (NB_T)c;
    NB_OPTIM_PARALLEL(n, lo, hi, {
        for (int64_t i = lo; i < hi; i++) g[i] = g[i] > k ? k : (g[i] < -k ? -k : g[i]);
    });
}

#undef NB_K
#undef NB_CAT
#undef NB_CAT_
