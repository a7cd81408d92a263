/* Fused optimizer updates: one pass over a parameter p[n], its gradient g[n] and its state, written
 * once and compiled for float and double (optim.c includes this file per type with NB_T, NB_SFX and
 * NB_M(fn) defined). Element arithmetic is done in NB_T, as torch.optim does; the per-step scalars
 * arrive in double. No include guard: included once per type. */

#define NB_CAT_(a, b) a##_##b
#define NB_CAT(a, b) NB_CAT_(a, b)
#define NB_K(name) NB_CAT(name, NB_SFX)

/* SGD: d = g + wd p; buf = first ? d : mom buf + (1 - damp) d; d = nesterov ? d + mom buf : buf;
 * p -= lr d (buf unused when mom = 0) */
static void NB_K(sgd)(int64_t n, NB_T *p, const NB_T *g, NB_T *buf, int first, double lr, double wd, double mom,
                      double damp, int nesterov)
{
    const NB_T a = (NB_T)lr, w = (NB_T)wd, m = (NB_T)mom, d1 = (NB_T)(1.0 - damp);
    for (int64_t i = 0; i < n; i++) {
        NB_T d = g[i] + w * p[i];
        if (mom != 0) {
            NB_T b = first ? d : m * buf[i] + d1 * d;
            buf[i] = b;
            d = nesterov ? d + m * b : b;
        }
        p[i] -= a * d;
    }
}

/* Adam / AdamW: (AdamW: p *= 1 - lr wd; Adam: g += wd p)
 * m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  vmax = max(vmax, v) with amsgrad;
 * p -= (lr / bc1) m / (sqrt(v or vmax) / sqrt(bc2) + eps)
 * Branch-free inside the loops (decay is 1 for Adam, l2 is 0 for AdamW), so they vectorise. */
#define ADAM_BODY(V)                                                                                   \
    for (int64_t i = 0; i < n; i++) {                                                                  \
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
    if (vmax) {
        ADAM_BODY(NB_T vm = vmax[i] > vi ? vmax[i] : vi; vmax[i] = vm; vi = vm)
    } else {
        ADAM_BODY((void)0)
    }
}
#undef ADAM_BODY

/* RMSprop: g += wd p; s = a s + (1 - a) g^2; centered: ga = a ga + (1 - a) g, avg = sqrt(s - ga^2)
 * else sqrt(s); avg += eps; momentum: buf = mom buf + g / avg, p -= lr buf; else p -= lr g / avg.
 * One loop per (centered, momentum) combination, each branch-free. */
#define RMS_BODY(AVG, UPDATE)                                                                          \
    for (int64_t i = 0; i < n; i++) {                                                                  \
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
    if (gavg && buf) {
        RMS_BODY(RMS_CENTERED, RMS_MOMENTUM)
    } else if (gavg) {
        RMS_BODY(RMS_CENTERED, RMS_STEP)
    } else if (buf) {
        RMS_BODY(RMS_PLAIN, RMS_MOMENTUM)
    } else {
        RMS_BODY(RMS_PLAIN, RMS_STEP)
    }
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
    for (int64_t i = 0; i < n; i++) {
        NB_T gi = g[i] + w * p[i];
        NB_T s = sum[i] + gi * gi;
        sum[i] = s;
        p[i] -= c * gi / (NB_M(sqrt)(s) + e);
    }
}

/* NAdam: g += wd p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; den = sqrt(v / bc2) + eps;
 * p -= cg g / den; p -= cm m / den, with the step's cg = lr (1 - mu) / (1 - mu_prod) and
 * cm = lr mu_next / (1 - mu_prod mu_next) */
static void NB_K(nadam)(int64_t n, NB_T *p, const NB_T *g, NB_T *m, NB_T *v, double wd, double b1, double b2,
                        double eps, double bc2, double cg, double cm)
{
    const NB_T w = (NB_T)wd, B1 = (NB_T)b1, B2 = (NB_T)b2, one_b1 = (NB_T)(1.0 - b1), one_b2 = (NB_T)(1.0 - b2);
    const NB_T e = (NB_T)eps, c2 = (NB_T)bc2, kg = (NB_T)cg, km = (NB_T)cm;
    for (int64_t i = 0; i < n; i++) {
        NB_T pi = p[i], gi = g[i] + w * pi;
        NB_T mi = B1 * m[i] + one_b1 * gi;
        NB_T vi = B2 * v[i] + one_b2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        NB_T den = NB_M(sqrt)(vi / c2) + e;
        pi -= kg * (gi / den);
        p[i] = pi - km * (mi / den);
    }
}

/* RAdam: g += wd p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; rectified steps (rect > 0):
 * p -= (m / bc1) lr (sqrt(bc2) / (sqrt(v) + eps)) rect, else p -= (m / bc1) lr */
static void NB_K(radam)(int64_t n, NB_T *p, const NB_T *g, NB_T *m, NB_T *v, double lr, double wd, double b1,
                        double b2, double eps, double bc1, double bc2_sqrt, double rect)
{
    const NB_T w = (NB_T)wd, B1 = (NB_T)b1, B2 = (NB_T)b2, one_b1 = (NB_T)(1.0 - b1), one_b2 = (NB_T)(1.0 - b2);
    const NB_T e = (NB_T)eps, c1 = (NB_T)bc1, c2s = (NB_T)bc2_sqrt, l = (NB_T)lr, r = (NB_T)rect;
    for (int64_t i = 0; i < n; i++) {
        NB_T pi = p[i], gi = g[i] + w * pi;
        NB_T mi = B1 * m[i] + one_b1 * gi;
        NB_T vi = B2 * v[i] + one_b2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        NB_T u = mi / c1 * l;
        if (rect > 0) u = u * (c2s / (NB_M(sqrt)(vi) + e)) * r;
        p[i] = pi - u;
    }
}

/* Adamax: g += wd p; m = b1 m + (1 - b1) g; u = max(b2 u, |g| + eps); p -= clr m / u */
static void NB_K(adamax)(int64_t n, NB_T *p, const NB_T *g, NB_T *m, NB_T *u, double clr, double wd, double b1,
                         double b2, double eps)
{
    const NB_T w = (NB_T)wd, B1 = (NB_T)b1, B2 = (NB_T)b2, one_b1 = (NB_T)(1.0 - b1), e = (NB_T)eps, c = (NB_T)clr;
    for (int64_t i = 0; i < n; i++) {
        NB_T pi = p[i], gi = g[i] + w * pi;
        NB_T mi = B1 * m[i] + one_b1 * gi;
        NB_T a = B2 * u[i], b = NB_M(fabs)(gi) + e;
        NB_T ui = b > a ? b : a;
        m[i] = mi;
        u[i] = ui;
        p[i] = pi - c * (mi / ui);
    }
}

/* Adadelta: g += wd p; s = rho s + (1 - rho) g^2; delta = sqrt(acc + eps) / sqrt(s + eps) g;
 * acc = rho acc + (1 - rho) delta^2; p -= lr delta */
static void NB_K(adadelta)(int64_t n, NB_T *p, const NB_T *g, NB_T *sq, NB_T *acc, double lr, double wd, double rho,
                           double eps)
{
    const NB_T w = (NB_T)wd, r = (NB_T)rho, one_r = (NB_T)(1.0 - rho), e = (NB_T)eps, l = (NB_T)lr;
    for (int64_t i = 0; i < n; i++) {
        NB_T pi = p[i], gi = g[i] + w * pi;
        NB_T si = r * sq[i] + one_r * (gi * gi);
        sq[i] = si;
        NB_T delta = NB_M(sqrt)(acc[i] + e) / NB_M(sqrt)(si + e) * gi;
        acc[i] = r * acc[i] + one_r * (delta * delta);
        p[i] = pi - l * delta;
    }
}

/* Vector operations of L-BFGS on one parameter's slice of the flat vectors (x, y, z [n]). */
static double NB_K(vdot)(int64_t n, const NB_T *x, const NB_T *y) /* sum x y, accumulated in double */
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)y[i];
    return s;
}

static void NB_K(vaxpy)(int64_t n, NB_T *y, double a, const NB_T *x) /* y += a x */
{
    const NB_T k = (NB_T)a;
    for (int64_t i = 0; i < n; i++) y[i] += k * x[i];
}

static void NB_K(vscale)(int64_t n, NB_T *y, double a, const NB_T *x) /* y = a x (x may be y) */
{
    const NB_T k = (NB_T)a;
    for (int64_t i = 0; i < n; i++) y[i] = k * x[i];
}

static void NB_K(vsub)(int64_t n, NB_T *z, const NB_T *x, const NB_T *y) /* z = x - y */
{
    for (int64_t i = 0; i < n; i++) z[i] = x[i] - y[i];
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

/* sum of g^2, accumulated in double */
static double NB_K(sumsq)(int64_t n, const NB_T *g)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)g[i] * (double)g[i];
    return s;
}

/* g *= c */
static void NB_K(scale)(int64_t n, NB_T *g, double c)
{
    const NB_T k = (NB_T)c;
    for (int64_t i = 0; i < n; i++) g[i] *= k;
}

/* g = clamp(g, -c, c) */
static void NB_K(clampv)(int64_t n, NB_T *g, double c)
{
    const NB_T k = (NB_T)c;
    for (int64_t i = 0; i < n; i++) g[i] = g[i] > k ? k : (g[i] < -k ? -k : g[i]);
}

#undef NB_K
#undef NB_CAT
#undef NB_CAT_
