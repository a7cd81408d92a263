/* Bodies of the convolution, pooling and channel-normalisation kernels, compiled once per element
 * type by cnn_kernels.c (declared in cnn.h). Expects NB_T (element type), NB_SFX (name suffix) and
 * NB_GEMM_K (the nb_k_gemm of that type), NB_FMA (fmaf or fma). No include guard: included once per
 * type. */

#define NB_CNN_CAT_(a, b) a##_##b
#define NB_CNN_CAT(a, b) NB_CNN_CAT_(a, b)
#define NB_CK(name) NB_CNN_CAT(nb_k_##name, NB_SFX)
#define NB_CS(name) NB_CNN_CAT(name, NB_SFX) /* file-local helpers */

/* ---- sums in double ---------------------------------------------------------------------------- */

/* Reductions of float32 or float64 values in double accumulators, in an order fixed by this source: 8
 * partial sums (lane k takes elements t + k of each full block of 8), combined as ((0 + 1) + (2 + 3)) +
 * ((4 + 5) + (6 + 7)), then the tail in order. The lane loops are omp simd loops (each lane its own
 * sum: vectorised with no reassociation), so the bits are the same with any compiler, optimisation
 * level, vector width or thread count (omp simd reductions, which let the compiler pick the order,
 * gave other statistics with clang than with gcc, and at -O0 than at -O2). */
#define NB_SUM_LANES 8

/* the sum of r[0..n) */
static inline double NB_CS(dsum)(const NB_T *r, int64_t n)
{
    double p[NB_SUM_LANES] = {0};
    int64_t t = 0;
    for (; t + NB_SUM_LANES <= n; t += NB_SUM_LANES) {
        NB_OMP_SIMD
        for (int k = 0; k < NB_SUM_LANES; k++) p[k] += (double)r[t + k];
    }
    double s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
    for (; t < n; t++) s += (double)r[t];
    return s;
}

/* the sum of g and the sum of g (x - m), in one pass */
static inline void NB_CS(dsumdot)(const NB_T *g, const NB_T *x, double m, int64_t n, double *sum, double *dot)
{
    double p[NB_SUM_LANES] = {0}, q[NB_SUM_LANES] = {0};
    int64_t t = 0;
    for (; t + NB_SUM_LANES <= n; t += NB_SUM_LANES) {
        NB_OMP_SIMD
        for (int k = 0; k < NB_SUM_LANES; k++) {
            const double gv = (double)g[t + k];
            p[k] += gv;
            q[k] += gv * ((double)x[t + k] - m);
        }
    }
    double s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
    double d = ((q[0] + q[1]) + (q[2] + q[3])) + ((q[4] + q[5]) + (q[6] + q[7]));
    for (; t < n; t++) {
        const double gv = (double)g[t];
        s += gv;
        d += gv * ((double)x[t] - m);
    }
    *sum = s;
    *dot = d;
}

/* the sum of (x - m)^2 */
static inline double NB_CS(dsqdev)(const NB_T *x, double m, int64_t n)
{
    double p[NB_SUM_LANES] = {0};
    int64_t t = 0;
    for (; t + NB_SUM_LANES <= n; t += NB_SUM_LANES) {
        NB_OMP_SIMD
        for (int k = 0; k < NB_SUM_LANES; k++) {
            const double e = (double)x[t + k] - m;
            p[k] += e * e;
        }
    }
    double s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
    for (; t < n; t++) {
        const double e = (double)x[t] - m;
        s += e * e;
    }
    return s;
}

/* ---- im2col / col2im over one image's output positions [p0, p1) -------------------------------- */

/* col rows (c, i, j) of group grp, columns coff .. coff + p1 - p0 (row length ldc):
 * col[(c kh + i) kw + j, coff + p - p0] = u[grp cug + c, y sh - ph + i dh, x sw - pw + j dw] for
 * output position p = y wv + x, zero outside u. un: the image [cu, hu, wu]. */
static void NB_CS(im2col)(const nb_conv_geom *g, int64_t grp, const NB_T *un, int64_t p0, int64_t p1, NB_T *col,
                          int64_t ldc, int64_t coff)
{
    const int64_t cug = g->cu / g->groups, plane = g->hu * g->wu;
    for (int64_t c = 0; c < cug; c++) {
        const NB_T *src = un + (grp * cug + c) * plane;
        for (int64_t i = 0; i < g->kh; i++) {
            for (int64_t j = 0; j < g->kw; j++) {
                NB_T *row = col + ((c * g->kh + i) * g->kw + j) * ldc + coff;
                /* the columns x whose input column x sw - pw + j dw lies in [0, wu) */
                const int64_t off = j * g->dw - g->pw;
                const int64_t xlo = nb__cdiv(-off, g->sw), xhi = nb__cdiv(g->wu - off, g->sw);
                int64_t y = p0 / g->wv, x = p0 % g->wv, q = 0, len = p1 - p0;
                while (q < len) {
                    int64_t run = g->wv - x < len - q ? g->wv - x : len - q;
                    int64_t iy = y * g->sh - g->ph + i * g->dh;
                    NB_T *o = row + q;
                    if (iy < 0 || iy >= g->hu) {
                        memset(o, 0, (size_t)run * sizeof(NB_T));
                    } else {
                        const NB_T *s = src + iy * g->wu + off;
                        /* [lo, hi): the run's columns that read the input, both clamped to the run (a tap
                         * whose first input column lies past the run zeroes the run only) */
                        int64_t lo = xlo > x ? xlo : x, hi = xhi < x + run ? xhi : x + run;
                        if (lo > x + run) lo = x + run;
                        if (hi < lo) hi = lo;
                        int64_t t = 0;
                        for (; t < lo - x; t++) o[t] = 0;
                        if (g->sw == 1) {
                            memcpy(o + t, s + lo, (size_t)(hi - lo) * sizeof(NB_T));
                            t += hi - lo;
                        } else {
                            for (int64_t xx = lo; xx < hi; xx++, t++) o[t] = s[xx * g->sw];
                        }
                        for (; t < run; t++) o[t] = 0;
                    }
                    q += run;
                    x = 0;
                    y++;
                }
            }
        }
    }
}

/* The adjoint: un[grp cug + c, ...] += the col entries that im2col would have read from there. */
static void NB_CS(col2im)(const nb_conv_geom *g, int64_t grp, const NB_T *col, int64_t ldc, int64_t coff,
                          NB_T *un, int64_t p0, int64_t p1)
{
    const int64_t cug = g->cu / g->groups, plane = g->hu * g->wu;
    for (int64_t c = 0; c < cug; c++) {
        NB_T *dst = un + (grp * cug + c) * plane;
        for (int64_t i = 0; i < g->kh; i++) {
            for (int64_t j = 0; j < g->kw; j++) {
                const NB_T *row = col + ((c * g->kh + i) * g->kw + j) * ldc + coff;
                const int64_t off = j * g->dw - g->pw;
                const int64_t xlo = nb__cdiv(-off, g->sw), xhi = nb__cdiv(g->wu - off, g->sw);
                int64_t y = p0 / g->wv, x = p0 % g->wv, q = 0, len = p1 - p0;
                while (q < len) {
                    int64_t run = g->wv - x < len - q ? g->wv - x : len - q;
                    int64_t iy = y * g->sh - g->ph + i * g->dh;
                    if (iy >= 0 && iy < g->hu) {
                        NB_T *d = dst + iy * g->wu + off;
                        const NB_T *r = row + q - x;
                        int64_t lo = xlo > x ? xlo : x, hi = xhi < x + run ? xhi : x + run;
                        if (g->sw == 1)
                            for (int64_t xx = lo; xx < hi; xx++) d[xx] += r[xx];
                        else
                            for (int64_t xx = lo; xx < hi; xx++) d[xx * g->sw] += r[xx];
                    }
                    q += run;
                    x = 0;
                    y++;
                }
            }
        }
    }
}

/* ---- the wide grid (stride 1) ------------------------------------------------------------------ */

/* up [nb, cu, plane]: channels [c0, c1) of the nb images at u (image-major [cu, hu, wu]) copied into
 * zero-padded planes of hp x wp (then slack zeros) with the input at (ph, pw). */
static void NB_CS(pad_planes)(const nb_conv_geom *g, const nb_conv_plan *pl, const NB_T *u, int64_t nb, int64_t c0,
                              int64_t c1, NB_T *up)
{
    const int64_t wp = pl->wp, right = wp - g->pw - g->wu;
    for (int64_t b = 0; b < nb; b++)
        for (int64_t c = c0; c < c1; c++) {
            NB_T *d = up + (b * g->cu + c) * pl->plane;
            const NB_T *s = u + (b * g->cu + c) * g->hu * g->wu;
            memset(d, 0, (size_t)(g->ph * wp + g->pw) * sizeof(NB_T));
            NB_T *r = d + g->ph * wp + g->pw;
            for (int64_t y = 0; y < g->hu; y++, r += wp, s += g->wu) {
                memcpy(r, s, (size_t)g->wu * sizeof(NB_T));
                /* the right padding of this row and the left of the next */
                if (y + 1 < g->hu) memset(r + g->wu, 0, (size_t)(right + g->pw) * sizeof(NB_T));
            }
            NB_T *end = d + (g->ph + g->hu - 1) * wp + g->pw + g->wu;
            memset(end, 0, (size_t)(d + pl->plane - end) * sizeof(NB_T));
        }
}

/* col [K, ldc] rows of group grp at column offset coff: for each (c, i, j) the hv wp positions of the
 * wide grid of local image bl, one contiguous copy each */
static void NB_CS(im2col_wide)(const nb_conv_geom *g, const nb_conv_plan *pl, int64_t grp, const NB_T *up, int64_t bl,
                               NB_T *col, int64_t ldc)
{
    const int64_t cug = g->cu / g->groups, len = g->hv * pl->wp, coff = bl * len;
    for (int64_t c = 0; c < cug; c++) {
        const NB_T *src = up + (bl * g->cu + grp * cug + c) * pl->plane;
        for (int64_t i = 0; i < g->kh; i++)
            for (int64_t j = 0; j < g->kw; j++)
                memcpy(col + ((c * g->kh + i) * g->kw + j) * ldc + coff, src + i * g->dh * pl->wp + j * g->dw,
                       (size_t)len * sizeof(NB_T));
    }
}

/* The adjoint into zeroed padded planes of group grp, image bl, then the interior added into (or, with
 * !acc, written to) du's image dub. */
static void NB_CS(col2im_wide)(const nb_conv_geom *g, const nb_conv_plan *pl, int64_t grp, const NB_T *col, int64_t ldc,
                               int64_t bl, NB_T *up, NB_T *dub, int acc)
{
    const int64_t cug = g->cu / g->groups, len = g->hv * pl->wp, coff = bl * len;
    for (int64_t c = 0; c < cug; c++) {
        NB_T *dst = up + (bl * g->cu + grp * cug + c) * pl->plane;
        memset(dst, 0, (size_t)pl->plane * sizeof(NB_T));
        for (int64_t i = 0; i < g->kh; i++)
            for (int64_t j = 0; j < g->kw; j++) {
                const NB_T *r = col + ((c * g->kh + i) * g->kw + j) * ldc + coff;
                NB_T *d = dst + i * g->dh * pl->wp + j * g->dw;
                for (int64_t t = 0; t < len; t++) d[t] += r[t];
            }
        NB_T *o = dub + (grp * cug + c) * g->hu * g->wu;
        const NB_T *s = dst + g->ph * pl->wp + g->pw;
        for (int64_t y = 0; y < g->hu; y++, o += g->wu, s += pl->wp) {
            if (acc)
                for (int64_t x = 0; x < g->wu; x++) o[x] += s[x];
            else
                memcpy(o, s, (size_t)g->wu * sizeof(NB_T));
        }
    }
}

/* dw (+)= the chunks' partial weight gradients parts [chunks, n], added in chunk order (the result does
 * not depend on how many threads ran the chunks) */
static void NB_CS(sum_parts)(const nb_conv_plan *pl, const NB_T *parts, int64_t n, NB_T *dw, int dw_acc)
{
    for (int64_t i = 0; i < n; i++) {
        NB_T s = dw_acc ? dw[i] : (NB_T)0;
        for (int64_t c = 0; c < pl->chunks; c++) s += parts[c * n + i];
        dw[i] = s;
    }
}

/* Small K (cug kh kw, a network's first layer), backward: no matrix product (whose [ov, K] result
 * is too small to pay for packing the gradient). The weight gradient is a dot product per (o, k) of
 * the gradient on the wide grid with the padded plane of c shifted by (i dh, j dw), read in place; the
 * input gradient is the adjoint sum. (The forward keeps the product: there it is the faster.)
 * Positions go in blocks of NB_SMALL_BLOCK whose sums stay in registers across the taps; the products
 * are fused multiply-adds (fma: one rounding, the same with every compiler), as in the BLAS kernels. */
#define NB_SMALL_BLOCK 32

/* The taps of group grp of image bl: off[k] (offset into the padded planes at up) for k < K. */
static void NB_CS(tap_offsets)(const nb_conv_geom *g, const nb_conv_plan *pl, int64_t grp, int64_t bl, int64_t *off)
{
    const int64_t cug = g->cu / g->groups;
    for (int64_t c = 0; c < cug; c++)
        for (int64_t i = 0; i < g->kh; i++)
            for (int64_t j = 0; j < g->kw; j++)
                off[(c * g->kh + i) * g->kw + j] =
                    (bl * g->cu + grp * cug + c) * pl->plane + i * g->dh * pl->wp + j * g->dw;
}

static void NB_CS(conv_bw_small)(const nb_conv_geom *g, const nb_conv_plan *pl, const NB_T *u, const NB_T *gv,
                                 const NB_T *w, NB_T *du, int du_acc, NB_T *dw, int dw_acc, NB_T *ws)
{
    const int64_t G = g->groups, cug = g->cu / G, ov = g->cv / G, K = cug * g->kh * g->kw;
    const int64_t U = g->cu * g->hu * g->wu, V = g->cv * g->hv * g->wv, len = g->hv * pl->wp, wp = pl->wp;
    NB_T *parts = ws + pl->threads * pl->ws_elems; /* [chunks, cv K] */
    const int nb_nt_ = pl->threads;
    NB_CNN_FOR(ch, pl->chunks, {
        NB_T *up = ws + NB_CNN_TID * pl->ws_elems, *gt = up + pl->nb * g->cu * pl->plane;
        NB_T *pdw = parts + ch * g->cv * K;
        int64_t off[NB_CONV_SMALL_K];
        if (dw) memset(pdw, 0, (size_t)(g->cv * K) * sizeof(NB_T));
        for (int64_t tile = ch * pl->tiles / pl->chunks; tile < (ch + 1) * pl->tiles / pl->chunks; tile++) {
            const int64_t b0 = tile * pl->nb, nb = g->n - b0 < pl->nb ? g->n - b0 : pl->nb;
            if (dw) NB_CS(pad_planes)(g, pl, u + b0 * U, nb, 0, g->cu, up);
            for (int64_t bl = 0; bl < nb; bl++)
                for (int64_t grp = 0; grp < G; grp++) {
                    /* gt [ov, len]: the image's gradient on the wide grid, zeros in the extra columns */
                    for (int64_t o = 0; o < ov; o++) {
                        const NB_T *s = gv + (b0 + bl) * V + (grp * ov + o) * g->hv * g->wv;
                        NB_T *d = gt + o * len;
                        for (int64_t y = 0; y < g->hv; y++, s += g->wv, d += wp) {
                            int64_t x = 0;
                            for (; x < g->wv; x++) d[x] = s[x];
                            for (; x < wp; x++) d[x] = 0;
                        }
                    }
                    NB_CS(tap_offsets)(g, pl, grp, bl, off);
                    if (dw) {
                        /* dw[o, k] += sum over positions of gt[o] times tap k's shifted plane: lane sums in
                         * blocks, added up in double per image */
                        for (int64_t o = 0; o < ov; o++) {
                            const NB_T *go = gt + o * len;
                            NB_T lanes[NB_CONV_SMALL_K][NB_SMALL_BLOCK];
                            double tail[NB_CONV_SMALL_K];
                            for (int64_t k = 0; k < K; k++) {
                                tail[k] = 0;
                                if (len >= NB_SMALL_BLOCK) memset(lanes[k], 0, sizeof lanes[k]);
                            }
                            int64_t t0 = 0;
                            for (; t0 + NB_SMALL_BLOCK <= len; t0 += NB_SMALL_BLOCK)
                                for (int64_t k = 0; k < K; k++) {
                                    const NB_T *s = up + off[k] + t0;
                                    for (int t = 0; t < NB_SMALL_BLOCK; t++) lanes[k][t] = NB_FMA(go[t0 + t], s[t], lanes[k][t]);
                                }
                            for (int64_t k = 0; k < K; k++) {
                                for (int64_t t = t0; t < len; t++) tail[k] += (double)go[t] * (double)up[off[k] + t];
                                double sum = tail[k];
                                for (int t = 0; t < NB_SMALL_BLOCK && len >= NB_SMALL_BLOCK; t++) sum += (double)lanes[k][t];
                                pdw[(grp * ov + o) * K + k] += (NB_T)sum;
                            }
                        }
                    }
                    if (!du) continue;
                    /* the padded planes of the group, zeroed, receive each tap's sum over the outputs */
                    for (int64_t c = 0; c < cug; c++)
                        memset(up + (bl * g->cu + grp * cug + c) * pl->plane, 0, (size_t)pl->plane * sizeof(NB_T));
                    for (int64_t k = 0; k < K; k++)
                        for (int64_t t0 = 0; t0 < len; t0 += NB_SMALL_BLOCK) {
                            const int64_t n = len - t0 < NB_SMALL_BLOCK ? len - t0 : NB_SMALL_BLOCK;
                            NB_T acc[NB_SMALL_BLOCK] = {0};
                            for (int64_t o = 0; o < ov; o++) {
                                const NB_T a = w[(grp * ov + o) * K + k], *r = gt + o * len + t0;
                                for (int64_t t = 0; t < n; t++) acc[t] = NB_FMA(a, r[t], acc[t]);
                            }
                            NB_T *d = up + off[k] + t0;
                            for (int64_t t = 0; t < n; t++) d[t] += acc[t];
                        }
                    for (int64_t c = 0; c < cug; c++) {
                        NB_T *od = du + (b0 + bl) * U + (grp * cug + c) * g->hu * g->wu;
                        const NB_T *sp = up + (bl * g->cu + grp * cug + c) * pl->plane + g->ph * wp + g->pw;
                        for (int64_t y = 0; y < g->hu; y++, od += g->wu, sp += wp) {
                            if (du_acc)
                                for (int64_t x = 0; x < g->wu; x++) od[x] += sp[x];
                            else
                                memcpy(od, sp, (size_t)g->wu * sizeof(NB_T));
                        }
                    }
                }
        }
    });
    if (dw) NB_CS(sum_parts)(pl, parts, g->cv * K, dw, dw_acc);
}

static void NB_CS(conv_fw_wide)(const nb_conv_geom *g, const nb_conv_plan *pl, const NB_T *u, const NB_T *w,
                                const NB_T *bias, NB_T *v, NB_T *ws)
{
    const int64_t G = g->groups, cug = g->cu / G, ov = g->cv / G, K = cug * g->kh * g->kw;
    const int64_t U = g->cu * g->hu * g->wu, V = g->cv * g->hv * g->wv, len = g->hv * pl->wp;
    const int nb_nt_ = pl->threads;
    /* tiles of nb images, each on one thread with its own workspace */
    NB_CNN_FOR(t, pl->tiles, {
        NB_T *up = ws + NB_CNN_TID * pl->ws_elems, *col = up + pl->nb * g->cu * pl->plane, *tmp = col + K * pl->q;
        const int64_t b0 = t * pl->nb, nb = g->n - b0 < pl->nb ? g->n - b0 : pl->nb, qn = nb * len;
        NB_CS(pad_planes)(g, pl, u + b0 * U, nb, 0, g->cu, up);
        for (int64_t grp = 0; grp < G; grp++) {
            for (int64_t bl = 0; bl < nb; bl++) NB_CS(im2col_wide)(g, pl, grp, up, bl, col, qn);
            NB_GEMM_K(0, 0, ov, qn, K, w + grp * ov * K, K, col, qn, tmp, 0.0);
            /* the valid columns of the wide grid into v */
            for (int64_t bl = 0; bl < nb; bl++)
                for (int64_t o = 0; o < ov; o++) {
                    const NB_T *s = tmp + o * qn + bl * len;
                    NB_T *d = v + (b0 + bl) * V + (grp * ov + o) * g->hv * g->wv;
                    const NB_T bo = bias ? bias[grp * ov + o] : (NB_T)0;
                    for (int64_t y = 0; y < g->hv; y++, s += pl->wp, d += g->wv)
                        for (int64_t x = 0; x < g->wv; x++) d[x] = s[x] + bo;
                }
        }
    });
}

static void NB_CS(conv_bw_wide)(const nb_conv_geom *g, const nb_conv_plan *pl, const NB_T *u, const NB_T *gv,
                                const NB_T *w, NB_T *du, int du_acc, NB_T *dw, int dw_acc, NB_T *ws)
{
    const int64_t G = g->groups, cug = g->cu / G, ov = g->cv / G, K = cug * g->kh * g->kw;
    const int64_t U = g->cu * g->hu * g->wu, V = g->cv * g->hv * g->wv, len = g->hv * pl->wp;
    NB_T *parts = ws + pl->threads * pl->ws_elems; /* [chunks, cv K] */
    const int nb_nt_ = pl->threads;
    /* chunk c: tiles [c T / C, (c + 1) T / C), its weight gradient in parts[c] */
    NB_CNN_FOR(c, pl->chunks, {
        NB_T *up = ws + NB_CNN_TID * pl->ws_elems, *col = up + pl->nb * g->cu * pl->plane, *gt = col + K * pl->q;
        NB_T *pdw = parts + c * g->cv * K;
        for (int64_t t = c * pl->tiles / pl->chunks; t < (c + 1) * pl->tiles / pl->chunks; t++) {
            const int64_t b0 = t * pl->nb, nb = g->n - b0 < pl->nb ? g->n - b0 : pl->nb, qn = nb * len;
            const int first = t == c * pl->tiles / pl->chunks;
            if (dw) NB_CS(pad_planes)(g, pl, u + b0 * U, nb, 0, g->cu, up);
            for (int64_t grp = 0; grp < G; grp++) {
                /* gt [ov, qn]: gv on the wide grid, zeros in the extra columns */
                for (int64_t bl = 0; bl < nb; bl++)
                    for (int64_t o = 0; o < ov; o++) {
                        const NB_T *s = gv + (b0 + bl) * V + (grp * ov + o) * g->hv * g->wv;
                        NB_T *d = gt + o * qn + bl * len;
                        for (int64_t y = 0; y < g->hv; y++, s += g->wv, d += pl->wp) {
                            int64_t x = 0;
                            for (; x < g->wv; x++) d[x] = s[x];
                            for (; x < pl->wp; x++) d[x] = 0;
                        }
                    }
                if (dw) {
                    for (int64_t bl = 0; bl < nb; bl++) NB_CS(im2col_wide)(g, pl, grp, up, bl, col, qn);
                    NB_GEMM_K(0, 1, ov, K, qn, gt, qn, col, qn, pdw + grp * ov * K, first ? 0.0 : 1.0);
                }
                if (du) {
                    NB_GEMM_K(1, 0, K, qn, ov, w + grp * ov * K, K, gt, qn, col, 0.0);
                    for (int64_t bl = 0; bl < nb; bl++)
                        NB_CS(col2im_wide)(g, pl, grp, col, qn, bl, up, du + (b0 + bl) * U, du_acc);
                }
            }
        }
    });
    if (dw) NB_CS(sum_parts)(pl, parts, g->cv * K, dw, dw_acc);
}

/* ---- convolution ------------------------------------------------------------------------------ */

/* The images a tile of columns [q0, q0 + qn) of the folded (image, position) index covers: image b,
 * its positions [p0, p1), at tile column coff. */
#define NB_FOR_SEGMENTS(q0, qn, P, ...)                                                                \
    do {                                                                                               \
        for (int64_t b = (q0) / (P); b * (P) < (q0) + (qn); b++) {                                     \
            int64_t p0 = (q0) - b * (P) > 0 ? (q0) - b * (P) : 0;                                      \
            int64_t p1 = (q0) + (qn) - b * (P) < (P) ? (q0) + (qn) - b * (P) : (P);                    \
            int64_t coff = b * (P) + p0 - (q0);                                                        \
            __VA_ARGS__;                                                                               \
        }                                                                                              \
    } while (0)

void NB_CK(conv_fw)(const nb_conv_geom *g, const nb_conv_plan *pl, const NB_T *u, const NB_T *w,
                    const NB_T *bias, NB_T *v, NB_T *ws)
{
    const int64_t G = g->groups, cug = g->cu / G, ov = g->cv / G, K = cug * g->kh * g->kw;
    const int64_t P = g->hv * g->wv, U = g->cu * g->hu * g->wu, V = g->cv * P, total = g->n * P;
    if (P == 0 || g->cv == 0) return;
    if (pl->direct) {
        /* v_b[grp] [ov, P] = w_g [ov, cug] u_b[grp] [cug, P], image by image */
        for (int64_t b = 0; b < g->n; b++)
            for (int64_t grp = 0; grp < G; grp++) {
                NB_T *vo = v + b * V + grp * ov * P;
                NB_GEMM_K(0, 0, ov, P, cug, w + grp * ov * cug, cug, u + b * U + grp * cug * P, P, vo, 0.0);
                if (bias)
                    for (int64_t o = 0; o < ov; o++) {
                        const NB_T bo = bias[grp * ov + o];
                        NB_T *r = vo + o * P;
                        for (int64_t t = 0; t < P; t++) r[t] += bo;
                    }
            }
        return;
    }
    if (pl->wide) {
        NB_CS(conv_fw_wide)(g, pl, u, w, bias, v, ws);
        return;
    }
    const int nb_nt_ = pl->threads;
    NB_CNN_FOR(tile, pl->tiles, {
        NB_T *col = ws + NB_CNN_TID * pl->ws_elems, *tmp = col + K * pl->q;
        const int64_t q0 = tile * pl->q, qn = total - q0 < pl->q ? total - q0 : pl->q;
        for (int64_t grp = 0; grp < G; grp++) {
            NB_FOR_SEGMENTS(q0, qn, P, NB_CS(im2col)(g, grp, u + b * U, p0, p1, col, qn, coff));
            /* tmp [ov, qn] = w_g [ov, K] col [K, qn] */
            NB_GEMM_K(0, 0, ov, qn, K, w + grp * ov * K, K, col, qn, tmp, 0.0);
            NB_FOR_SEGMENTS(q0, qn, P, {
                for (int64_t o = 0; o < ov; o++) {
                    const NB_T *s = tmp + o * qn + coff;
                    NB_T *d = v + b * V + (grp * ov + o) * P + p0;
                    const int64_t len = p1 - p0;
                    if (bias) {
                        const NB_T bo = bias[grp * ov + o];
                        for (int64_t t = 0; t < len; t++) d[t] = s[t] + bo;
                    } else {
                        memcpy(d, s, (size_t)len * sizeof(NB_T));
                    }
                }
            });
        }
    });
}

void NB_CK(conv_bw)(const nb_conv_geom *g, const nb_conv_plan *pl, const NB_T *u, const NB_T *gv, const NB_T *w,
                    NB_T *du, int du_acc, NB_T *dw, int dw_acc, NB_T *ws)
{
    const int64_t G = g->groups, cug = g->cu / G, ov = g->cv / G, K = cug * g->kh * g->kw;
    const int64_t P = g->hv * g->wv, U = g->cu * g->hu * g->wu, V = g->cv * P, total = g->n * P;
    if (du && !du_acc && (total == 0 || g->cv == 0 || (!pl->direct && !pl->wide)))
        memset(du, 0, (size_t)(g->n * U) * sizeof(NB_T)); /* col2im adds */
    if (dw && !dw_acc && (total == 0 || g->cv == 0)) memset(dw, 0, (size_t)(g->cv * K) * sizeof(NB_T));
    if (total == 0 || g->cv == 0) return;
    if (pl->direct) {
        for (int64_t b = 0; b < g->n; b++)
            for (int64_t grp = 0; grp < G; grp++) {
                const NB_T *gb = gv + b * V + grp * ov * P;
                /* dw_g [ov, cug] (+)= gv_b[grp] [ov, P] u_b[grp]^T [P, cug] */
                if (dw)
                    NB_GEMM_K(0, 1, ov, cug, P, gb, P, u + b * U + grp * cug * P, P, dw + grp * ov * cug,
                              b == 0 && !dw_acc ? 0.0 : 1.0);
                /* du_b[grp] [cug, P] (+)= w_g^T [cug, ov] gv_b[grp] [ov, P] */
                if (du)
                    NB_GEMM_K(1, 0, cug, P, ov, w + grp * ov * cug, cug, gb, P, du + b * U + grp * cug * P,
                              du_acc ? 1.0 : 0.0);
            }
        return;
    }
    if (pl->small) {
        NB_CS(conv_bw_small)(g, pl, u, gv, w, du, du_acc, dw, dw_acc, ws);
        return;
    }
    if (pl->wide) {
        NB_CS(conv_bw_wide)(g, pl, u, gv, w, du, du_acc, dw, dw_acc, ws);
        return;
    }
    NB_T *col = ws, *gt = ws + K * pl->q;
    for (int64_t q0 = 0; q0 < total; q0 += pl->q) {
        const int64_t qn = total - q0 < pl->q ? total - q0 : pl->q;
        for (int64_t grp = 0; grp < G; grp++) {
            /* gt [ov, qn]: the tile's columns of gv, group grp */
            NB_FOR_SEGMENTS(q0, qn, P, {
                for (int64_t o = 0; o < ov; o++)
                    memcpy(gt + o * qn + coff, gv + b * V + (grp * ov + o) * P + p0, (size_t)(p1 - p0) * sizeof(NB_T));
            });
            if (dw) {
                NB_FOR_SEGMENTS(q0, qn, P, NB_CS(im2col)(g, grp, u + b * U, p0, p1, col, qn, coff));
                /* dw_g [ov, K] (+)= gt [ov, qn] col^T [qn, K] */
                NB_GEMM_K(0, 1, ov, K, qn, gt, qn, col, qn, dw + grp * ov * K, q0 == 0 && !dw_acc ? 0.0 : 1.0);
            }
            if (du) {
                /* col [K, qn] = w_g^T [K, ov] gt [ov, qn], then added into du where it came from */
                NB_GEMM_K(1, 0, K, qn, ov, w + grp * ov * K, K, gt, qn, col, 0.0);
                NB_FOR_SEGMENTS(q0, qn, P, NB_CS(col2im)(g, grp, col, qn, coff, du + b * U, p0, p1));
            }
        }
    }
}

void NB_CK(channel_sum)(int64_t n, int64_t c, int64_t d, const NB_T *x, NB_T *out, int acc)
{
    const int nb_nt_ = nb__cnn_threads(n * c * d);
    NB_CNN_FOR(k, c, {
        double s = 0;
        for (int64_t b = 0; b < n; b++) s += NB_CS(dsum)(x + (b * c + k) * d, d);
        out[k] = acc ? (NB_T)((double)out[k] + s) : (NB_T)s;
    });
}

void NB_CK(channel_fill)(int64_t n, int64_t c, int64_t d, const NB_T *bias, NB_T *x)
{
    for (int64_t b = 0; b < n; b++)
        for (int64_t k = 0; k < c; k++) {
            NB_T *r = x + (b * c + k) * d;
            const NB_T v = bias ? bias[k] : (NB_T)0;
            for (int64_t t = 0; t < d; t++) r[t] = v;
        }
}

/* ---- pooling ---------------------------------------------------------------------------------- */

/* The maximum of window (oy, ox) of plane xp and its flat position: the first element inside the
 * window holds it until a larger one comes (or a NaN: as PyTorch, the last NaN wins). */
static inline NB_T NB_CS(window_max)(const nb_pool_geom *g, const NB_T *xp, int64_t oy, int64_t ox, int64_t *at)
{
    const int64_t hs = oy * g->sh - g->ph, ws = ox * g->sw - g->pw;
    const int64_t i0 = hs < 0 ? nb__cdiv(-hs, g->dh) : 0, j0 = ws < 0 ? nb__cdiv(-ws, g->dw) : 0;
    int64_t best = (hs + i0 * g->dh) * g->w + ws + j0 * g->dw;
    NB_T bv = -INFINITY;
    for (int64_t i = i0; i < g->kh; i++) {
        const int64_t r = hs + i * g->dh;
        if (r >= g->h) break;
        for (int64_t j = j0; j < g->kw; j++) {
            const int64_t cc = ws + j * g->dw;
            if (cc >= g->w) break;
            const NB_T v = xp[r * g->w + cc];
            if (v > bv || v != v) {
                bv = v;
                best = r * g->w + cc;
            }
        }
    }
    *at = best;
    return bv;
}

/* the 2x2 windows of stride 2 without padding or dilation, inside the plane */
static inline int NB_CS(is_2x2)(const nb_pool_geom *g)
{
    return g->kh == 2 && g->kw == 2 && g->sh == 2 && g->sw == 2 && g->ph == 0 && g->pw == 0 && g->dh == 1 &&
           g->dw == 1 && 2 * g->ho <= g->h && 2 * g->wo <= g->w;
}

/* The position (0..3, row-major) of the maximum of a 2x2 window, and its value: the first maximum,
 * or the last NaN (as the general loop). Written without data-dependent branches (max instructions,
 * 0/1 arithmetic): pooled activations go up and down at random, and mispredicted branches cost more
 * than the work. */
static inline int NB_CS(max4)(NB_T v0, NB_T v1, NB_T v2, NB_T v3, NB_T *out)
{
    NB_T m = v1 > v0 ? v1 : v0;
    m = v2 > m ? v2 : m;
    m = v3 > m ? v3 : m;
    const int n0 = v0 != v0, n1 = v1 != v1, n2 = v2 != v2, n3 = v3 != v3;
    const int e0 = v0 == m, e1 = v1 == m, e2 = v2 == m;
    const int first = (1 - e0) * (1 + (1 - e1) * (1 + (1 - e2)));
    const int last_nan = n3 ? 3 : n2 ? 2 : n1 ? 1 : 0;
    const int any_nan = n0 | n1 | n2 | n3;
    *out = any_nan ? v0 + v1 + v2 + v3 : m;
    return any_nan ? last_nan : first;
}

void NB_CK(maxpool_fw)(const nb_pool_geom *g, const NB_T *x, NB_T *y, int64_t *idx)
{
    const int64_t in_plane = g->h * g->w, out_plane = g->ho * g->wo, w = g->w;
    const int nb_nt_ = nb__cnn_threads(g->planes * in_plane);
    NB_CNN_FOR(pl, g->planes, {
        const NB_T *xp = x + pl * in_plane;
        NB_T *yp = y + pl * out_plane;
        int64_t *ip = idx ? idx + pl * out_plane : NULL;
        if (NB_CS(is_2x2)(g) && ip) {
            for (int64_t oy = 0; oy < g->ho; oy++) {
                const NB_T *r0 = xp + 2 * oy * w, *r1 = r0 + w;
                for (int64_t ox = 0; ox < g->wo; ox++) {
                    int bi = NB_CS(max4)(r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1], &yp[oy * g->wo + ox]);
                    ip[oy * g->wo + ox] = (2 * oy + (bi >> 1)) * w + 2 * ox + (bi & 1);
                }
            }
            continue;
        }
        if (NB_CS(is_2x2)(g)) {
            /* values only: the maximum of the two rows, then of the column pairs (NaN propagates),
             * loops of selects that vectorise */
            for (int64_t oy = 0; oy < g->ho; oy++) {
                const NB_T *r0 = xp + 2 * oy * w, *r1 = r0 + w;
                NB_T *yo = yp + oy * g->wo;
                for (int64_t ox = 0; ox < g->wo; ox++) {
                    const NB_T a = r0[2 * ox] > r1[2 * ox] ? r0[2 * ox] : r1[2 * ox];
                    const NB_T b = r0[2 * ox + 1] > r1[2 * ox + 1] ? r0[2 * ox + 1] : r1[2 * ox + 1];
                    const NB_T m = a > b ? a : b;
                    const NB_T nan = r0[2 * ox] + r0[2 * ox + 1] + r1[2 * ox] + r1[2 * ox + 1];
                    yo[ox] = nan != nan && (r0[2 * ox] != r0[2 * ox] || r0[2 * ox + 1] != r0[2 * ox + 1] ||
                                            r1[2 * ox] != r1[2 * ox] || r1[2 * ox + 1] != r1[2 * ox + 1])
                                 ? nan
                                 : m;
                }
            }
            continue;
        }
        for (int64_t oy = 0; oy < g->ho; oy++)
            for (int64_t ox = 0; ox < g->wo; ox++) {
                int64_t at;
                yp[oy * g->wo + ox] = NB_CS(window_max)(g, xp, oy, ox, &at);
                if (ip) ip[oy * g->wo + ox] = at;
            }
    });
}

void NB_CK(maxpool_idx)(const nb_pool_geom *g, const NB_T *x, int64_t *idx)
{
    const int64_t in_plane = g->h * g->w, out_plane = g->ho * g->wo;
    const int nb_nt_ = nb__cnn_threads(g->planes * in_plane);
    NB_CNN_FOR(pl, g->planes, {
        for (int64_t oy = 0; oy < g->ho; oy++)
            for (int64_t ox = 0; ox < g->wo; ox++)
                NB_CS(window_max)(g, x + pl * in_plane, oy, ox, idx + pl * out_plane + oy * g->wo + ox);
    });
}

void NB_CK(maxpool_bw)(const nb_pool_geom *g, const NB_T *x, const NB_T *gy, NB_T *dx, int acc)
{
    const int64_t in_plane = g->h * g->w, out_plane = g->ho * g->wo, w = g->w;
    const int nb_nt_ = nb__cnn_threads(g->planes * in_plane);
    if (NB_CS(is_2x2)(g)) {
        /* the windows tile the plane: each element is written once (an odd extent's last row or column,
         * in no window, gets 0) */
        NB_CNN_FOR(pl, g->planes, {
            const NB_T *xp = x + pl * in_plane, *gp = gy + pl * out_plane;
            NB_T *dp = dx + pl * in_plane;
            if (!acc && (2 * g->ho < g->h || 2 * g->wo < w)) memset(dp, 0, (size_t)in_plane * sizeof(NB_T));
            for (int64_t oy = 0; oy < g->ho; oy++) {
                const NB_T *r0 = xp + 2 * oy * w, *r1 = r0 + w;
                NB_T *d0 = dp + 2 * oy * w, *d1 = d0 + w;
                for (int64_t ox = 0; ox < g->wo; ox++) {
                    NB_T bv;
                    const int bi = NB_CS(max4)(r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1], &bv);
                    const NB_T gv = gp[oy * g->wo + ox];
                    NB_T *at = (bi < 2 ? d0 : d1) + 2 * ox + (bi & 1);
                    if (!acc) d0[2 * ox] = d0[2 * ox + 1] = d1[2 * ox] = d1[2 * ox + 1] = 0;
                    *at += gv;
                }
            }
        });
        return;
    }
    NB_CNN_FOR(pl, g->planes, {
        if (!acc) memset(dx + pl * in_plane, 0, (size_t)in_plane * sizeof(NB_T));
        for (int64_t oy = 0; oy < g->ho; oy++)
            for (int64_t ox = 0; ox < g->wo; ox++) {
                int64_t at;
                NB_CS(window_max)(g, x + pl * in_plane, oy, ox, &at);
                dx[pl * in_plane + at] += gy[pl * out_plane + oy * g->wo + ox];
            }
    });
}

/* The window of output oy along one axis: [*s, *e) clipped to [0, n), and its size for the divisor. */
static inline int64_t NB_CS(pool_window)(const nb_pool_geom *g, int rows, int64_t o, int64_t *s, int64_t *e)
{
    const int64_t n = rows ? g->h : g->w, no = rows ? g->ho : g->wo;
    if (g->adaptive) {
        *s = (o * n) / no;
        *e = ((o + 1) * n + no - 1) / no;
        return *e - *s;
    }
    const int64_t k = rows ? g->kh : g->kw, st = rows ? g->sh : g->sw, pad = rows ? g->ph : g->pw;
    int64_t a = o * st - pad, z = a + k;
    if (z > n + pad) z = n + pad;
    const int64_t size = z - a;
    *s = a < 0 ? 0 : a;
    *e = z > n ? n : z;
    return size;
}

void NB_CK(avgpool_fw)(const nb_pool_geom *g, const NB_T *x, NB_T *y)
{
    const int64_t in_plane = g->h * g->w, out_plane = g->ho * g->wo;
    const int nb_nt_ = nb__cnn_threads(g->planes * in_plane);
    NB_CNN_FOR(pl, g->planes, {
        const NB_T *xp = x + pl * in_plane;
        NB_T *yp = y + pl * out_plane;
        for (int64_t oy = 0; oy < g->ho; oy++) {
            int64_t r0, r1;
            const int64_t sh = NB_CS(pool_window)(g, 1, oy, &r0, &r1);
            for (int64_t ox = 0; ox < g->wo; ox++) {
                int64_t c0, c1;
                const int64_t sw = NB_CS(pool_window)(g, 0, ox, &c0, &c1);
                double s = 0;
                if (r1 <= r0 || c1 <= c0) { /* a window of padding only: 0, as PyTorch */
                    yp[oy * g->wo + ox] = 0;
                    continue;
                }
                for (int64_t r = r0; r < r1; r++)
                    for (int64_t c = c0; c < c1; c++) s += (double)xp[r * g->w + c];
                const double div = g->count_include_pad || g->adaptive ? (double)sh * (double)sw
                                                                       : (double)((r1 - r0) * (c1 - c0));
                yp[oy * g->wo + ox] = (NB_T)(s / div);
            }
        }
    });
}

void NB_CK(avgpool_adj)(const nb_pool_geom *g, const NB_T *gy, NB_T *dx)
{
    const int64_t in_plane = g->h * g->w, out_plane = g->ho * g->wo;
    const int nb_nt_ = nb__cnn_threads(g->planes * in_plane);
    NB_CNN_FOR(pl, g->planes, {
        NB_T *dp = dx + pl * in_plane;
        memset(dp, 0, (size_t)in_plane * sizeof(NB_T));
        const NB_T *gp = gy + pl * out_plane;
        for (int64_t oy = 0; oy < g->ho; oy++) {
            int64_t r0, r1;
            const int64_t sh = NB_CS(pool_window)(g, 1, oy, &r0, &r1);
            for (int64_t ox = 0; ox < g->wo; ox++) {
                int64_t c0, c1;
                const int64_t sw = NB_CS(pool_window)(g, 0, ox, &c0, &c1);
                if (r1 <= r0 || c1 <= c0) continue;
                const double div = g->count_include_pad || g->adaptive ? (double)sh * (double)sw
                                                                       : (double)((r1 - r0) * (c1 - c0));
                const NB_T v = (NB_T)((double)gp[oy * g->wo + ox] / div);
                for (int64_t r = r0; r < r1; r++)
                    for (int64_t c = c0; c < c1; c++) dp[r * g->w + c] += v;
            }
        }
    });
}

/* ---- channel moments and normalisation -------------------------------------------------------- */

void NB_CK(moments)(int64_t a, int64_t c, int64_t d, const NB_T *x, NB_T *st)
{
    const double m = (double)(a * d);
    const int nb_nt_ = nb__cnn_threads(a * c * d);
    NB_CNN_FOR(k, c, {
        double s = 0;
        for (int64_t b = 0; b < a; b++) s += NB_CS(dsum)(x + (b * c + k) * d, d);
        const double mean = s / m;
        double v = 0;
        for (int64_t b = 0; b < a; b++) v += NB_CS(dsqdev)(x + (b * c + k) * d, mean, d);
        st[k] = (NB_T)mean;
        st[c + k] = (NB_T)(v / m);
    });
}

void NB_CK(chnorm_fw)(int64_t a, int64_t c, int64_t d, const NB_T *x, const NB_T *st, const NB_T *w, const NB_T *b,
                      double eps, NB_T *y, double *coef)
{
    /* y = x scale + shift with scale = w / sqrt(var + eps), shift = b - mean scale */
    for (int64_t k = 0; k < c; k++) {
        const double r = 1.0 / sqrt((double)st[c + k] + eps);
        const double sc = w ? r * (double)w[k] : r;
        coef[k] = sc;
        coef[c + k] = (b ? (double)b[k] : 0.0) - (double)st[k] * sc;
    }
    const int nb_nt_ = nb__cnn_threads(a * c * d);
    NB_CNN_FOR(i, a, {
        for (int64_t k = 0; k < c; k++) {
            const NB_T *xr = x + (i * c + k) * d;
            NB_T *yr = y + (i * c + k) * d;
            const NB_T sc = (NB_T)coef[k], sh = (NB_T)coef[c + k];
            for (int64_t t = 0; t < d; t++) yr[t] = xr[t] * sc + sh;
        }
    });
}

void NB_CK(chnorm_sums)(int64_t a, int64_t c, int64_t d, const NB_T *g, const NB_T *x, const NB_T *st, double *sg,
                        double *sgx)
{
    const int nb_nt_ = nb__cnn_threads(a * c * d);
    NB_CNN_FOR(k, c, {
        const double mean = (double)st[k];
        double s = 0, sx = 0;
        for (int64_t i = 0; i < a; i++) {
            const NB_T *gr = g + (i * c + k) * d, *xr = x + (i * c + k) * d;
            double a1, a2;
            NB_CS(dsumdot)(gr, xr, mean, d, &a1, &a2);
            s += a1;
            sx += a2;
        }
        sg[k] = s;
        sgx[k] = sx;
    });
}

void NB_CK(chscale)(int64_t a, int64_t c, int64_t d, const NB_T *g, const double *k, NB_T *dx, int acc)
{
    const int nb_nt_ = nb__cnn_threads(a * c * d);
    NB_CNN_FOR(i, a, {
        for (int64_t ch = 0; ch < c; ch++) {
            const NB_T *gr = g + (i * c + ch) * d;
            NB_T *dr = dx + (i * c + ch) * d;
            const NB_T s = (NB_T)k[ch];
            if (acc)
                for (int64_t t = 0; t < d; t++) dr[t] += gr[t] * s;
            else
                for (int64_t t = 0; t < d; t++) dr[t] = gr[t] * s;
        }
    });
}

void NB_CK(moments_bw)(int64_t a, int64_t c, int64_t d, const NB_T *x, const NB_T *st, const NB_T *dst, NB_T *dx,
                       int acc)
{
    const double m = (double)(a * d);
    const int nb_nt_ = nb__cnn_threads(a * c * d);
    NB_CNN_FOR(i, a, {
        for (int64_t ch = 0; ch < c; ch++) {
            const NB_T *xr = x + (i * c + ch) * d;
            NB_T *dr = dx + (i * c + ch) * d;
            /* (dmean + 2 dvar (x - mean)) / m = x k1 + k0 */
            const double k1 = 2.0 * (double)dst[c + ch] / m;
            const NB_T s = (NB_T)k1, o = (NB_T)((double)dst[ch] / m - k1 * (double)st[ch]);
            if (acc)
                for (int64_t t = 0; t < d; t++) dr[t] += xr[t] * s + o;
            else
                for (int64_t t = 0; t < d; t++) dr[t] = xr[t] * s + o;
        }
    });
}

/* ---- batch norm, fused ------------------------------------------------------------------------ */

/* channel k's y = x scale + shift of batch norm, from the statistics as stored in st [2, c] (what the
 * backward reads); bn_fw, bnrp_fw and bnrp_bw all take it from here, so they agree to the bit */
static inline void NB_CS(bn_coef)(int64_t c, int64_t k, const NB_T *st, const NB_T *w, const NB_T *b, double eps,
                                  NB_T *scale, NB_T *shift)
{
    const double r = 1.0 / sqrt((double)st[c + k] + eps), sc = w ? r * (double)w[k] : r;
    *scale = (NB_T)sc;
    *shift = (NB_T)((b ? (double)b[k] : 0.0) - (double)st[k] * sc);
}

/* channel k's mean and biased variance over x [a, c, d] into st [2, c] (two passes in double) */
static inline void NB_CS(bn_stats)(int64_t a, int64_t c, int64_t d, int64_t k, const NB_T *x, NB_T *st)
{
    const double m = (double)(a * d);
    double s = 0, v = 0;
    for (int64_t i = 0; i < a; i++) s += NB_CS(dsum)(x + (i * c + k) * d, d);
    const double mean = s / m;
    for (int64_t i = 0; i < a; i++) v += NB_CS(dsqdev)(x + (i * c + k) * d, mean, d);
    st[k] = (NB_T)mean;
    st[c + k] = (NB_T)(v / m);
}

void NB_CK(bn_fw)(int64_t a, int64_t c, int64_t d, const NB_T *x, const NB_T *w, const NB_T *b, double eps, NB_T *y,
                  NB_T *st)
{
    const int nb_nt_ = nb__cnn_threads(a * c * d);
    NB_CNN_FOR(k, c, {
        NB_CS(bn_stats)(a, c, d, k, x, st);
        NB_T scale, shift;
        NB_CS(bn_coef)(c, k, st, w, b, eps, &scale, &shift);
        for (int64_t i = 0; i < a; i++) {
            const NB_T *xr = x + (i * c + k) * d;
            NB_T *yr = y + (i * c + k) * d;
            for (int64_t t = 0; t < d; t++) yr[t] = xr[t] * scale + shift;
        }
    });
}

/* batch norm's dx = wr (g - s / m - (x - mean) r^2 sx / m) as g P + x Q + O (s = sum g, sx = sum g (x -
 * mean), m values per channel, r = (var + eps)^-1/2, wr = w r), and its row dr (+)= g P + x Q + O */
static inline void NB_CS(bn_dx_coef)(double wr, double r, double s, double sx, double m, double mean, NB_T *P, NB_T *Q,
                                     NB_T *O)
{
    const double q = -wr * r * r * sx / m;
    *P = (NB_T)wr;
    *Q = (NB_T)q;
    *O = (NB_T)(-wr * s / m - q * mean);
}

static inline void NB_CS(bn_dx_row)(const NB_T *gr, const NB_T *xr, NB_T P, NB_T Q, NB_T O, int64_t d, NB_T *dr, int acc)
{
    if (acc)
        for (int64_t t = 0; t < d; t++) dr[t] += gr[t] * P + xr[t] * Q + O;
    else
        for (int64_t t = 0; t < d; t++) dr[t] = gr[t] * P + xr[t] * Q + O;
}

void NB_CK(bn_bw)(int64_t a, int64_t c, int64_t d, const NB_T *g, const NB_T *x, const NB_T *st, const NB_T *w,
                  double eps, NB_T *dx, int acc, double *sg, double *sgx)
{
    const double m = (double)(a * d);
    const int nb_nt_ = nb__cnn_threads(a * c * d);
    NB_CNN_FOR(k, c, {
        const double mean = (double)st[k], r = 1.0 / sqrt((double)st[c + k] + eps), wr = w ? (double)w[k] * r : r;
        double s = 0, sx = 0;
        for (int64_t i = 0; i < a; i++) {
            double a1, a2;
            NB_CS(dsumdot)(g + (i * c + k) * d, x + (i * c + k) * d, mean, d, &a1, &a2);
            s += a1;
            sx += a2;
        }
        sg[k] = s;
        sgx[k] = sx * r; /* sum g xhat */
        if (!dx) continue;
        NB_T P, Q, O;
        NB_CS(bn_dx_coef)(wr, r, s, sx, m, mean, &P, &Q, &O);
        for (int64_t i = 0; i < a; i++)
            NB_CS(bn_dx_row)(g + (i * c + k) * d, x + (i * c + k) * d, P, Q, O, d, dx + (i * c + k) * d, acc);
    });
}

/* ---- batch norm, ReLU and max pooling over tiling windows, fused ------------------------------ */

/* relu as nb_relu computes it (NaN stays NaN) */
static inline NB_T NB_CS(relu1)(NB_T v) { return v < 0 ? (NB_T)0 : v; }

/* The first maximum of z = relu(v), v = x scale + shift, over the kh x kw window at row r0, column c0
 * of the plane xp (width w), as max pooling's general loop picks it (the first maximum, or the last
 * NaN): its position in the plane; *zv receives its z and *vv its v (what relu's gradient looks at). */
static inline int64_t NB_CS(bnrp_window)(const NB_T *xp, int64_t w, int64_t r0, int64_t c0, int64_t kh, int64_t kw,
                                         NB_T scale, NB_T shift, NB_T *zv, NB_T *vv)
{
    int64_t best = r0 * w + c0;
    NB_T bv = -INFINITY, bvv = 0;
    for (int64_t i = 0; i < kh; i++)
        for (int64_t j = 0; j < kw; j++) {
            const NB_T v = xp[(r0 + i) * w + c0 + j] * scale + shift, z = NB_CS(relu1)(v);
            if (z > bv || z != z) {
                bv = z;
                bvv = v;
                best = (r0 + i) * w + c0 + j;
            }
        }
    *zv = bv;
    *vv = bvv;
    return best;
}

/* y [ho, wo] = max pooling of z = relu(x scale + shift) over the 2x2 windows of the plane x [h, w], bit
 * for bit as maxpool_fw's 2x2 loop pools the z (the maximum of z0, z2 and of z1, z3, then of the two;
 * a tie keeps the later): with no NaN (finite: none can be, see bnrp_gz), the largest v when it is > 0,
 * else (every z a zero) z3, the zero the composition keeps, which is -0 for v3 = -0 (relu(max v) gave
 * -0 for {-1, -0, -1, -1}, the composition +0): max(m, z3) is both, m the maximum of the four v. With a
 * NaN the composition's own loop over the z. Loops of selects that vectorise. */
static inline void NB_CS(bnrp_fw_2x2)(const NB_T *xp, int64_t w, int64_t ho, int64_t wo, NB_T scale, NB_T shift,
                                      int finite, NB_T *yp)
{
    for (int64_t oy = 0; oy < ho && finite; oy++) {
        const NB_T *r0 = xp + 2 * oy * w, *r1 = r0 + w;
        NB_T *yo = yp + oy * wo;
        for (int64_t ox = 0; ox < wo; ox++) {
            const NB_T v0 = r0[2 * ox] * scale + shift, v1 = r0[2 * ox + 1] * scale + shift;
            const NB_T v2 = r1[2 * ox] * scale + shift, v3 = r1[2 * ox + 1] * scale + shift;
            const NB_T a = v0 > v2 ? v0 : v2, b = v1 > v3 ? v1 : v3, m = a > b ? a : b, z3 = NB_CS(relu1)(v3);
            yo[ox] = m > z3 ? m : z3;
        }
    }
    for (int64_t oy = 0; oy < ho && !finite; oy++) {
        const NB_T *r0 = xp + 2 * oy * w, *r1 = r0 + w;
        NB_T *yo = yp + oy * wo;
        for (int64_t ox = 0; ox < wo; ox++) {
            const NB_T z0 = NB_CS(relu1)(r0[2 * ox] * scale + shift), z1 = NB_CS(relu1)(r0[2 * ox + 1] * scale + shift);
            const NB_T z2 = NB_CS(relu1)(r1[2 * ox] * scale + shift), z3 = NB_CS(relu1)(r1[2 * ox + 1] * scale + shift);
            const NB_T a = z0 > z2 ? z0 : z2, b = z1 > z3 ? z1 : z3, m = a > b ? a : b;
            const NB_T nan = z0 + z1 + z2 + z3;
            const int any_nan = (z0 != z0) | (z1 != z1) | (z2 != z2) | (z3 != z3);
            yo[ox] = any_nan ? nan : m;
        }
    }
}

void NB_CK(bnrp_fw)(int64_t a, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, const NB_T *x, const NB_T *wt,
                    const NB_T *b, double eps, NB_T *y, NB_T *st)
{
    const int64_t d = h * w, ho = h / kh, wo = w / kw;
    const int nb_nt_ = nb__cnn_threads(a * c * d);
    NB_CNN_FOR(k, c, {
        NB_CS(bn_stats)(a, c, d, k, x, st);
        NB_T scale, shift;
        NB_CS(bn_coef)(c, k, st, wt, b, eps, &scale, &shift);
        const int finite = isfinite(st[k]) && isfinite(scale) && isfinite(shift);
        for (int64_t i = 0; i < a; i++) {
            const NB_T *xp = x + (i * c + k) * d;
            NB_T *yp = y + (i * c + k) * ho * wo;
            if (kh == 2 && kw == 2) {
                NB_CS(bnrp_fw_2x2)(xp, w, ho, wo, scale, shift, finite, yp);
                continue;
            }
            for (int64_t oy = 0; oy < ho; oy++)
                for (int64_t ox = 0; ox < wo; ox++) {
                    NB_T v;
                    NB_CS(bnrp_window)(xp, w, oy * kh, ox * kw, kh, kw, scale, shift, &yp[oy * wo + ox], &v);
                }
        }
    });
}

/* gz [h, w] = the gradient of the batch norm's output for the gradient gp [ho, wo] of the pooled
 * output: gp at each window's maximum of z = relu(v) where v = x scale + shift is not <= 0 (relu's
 * gradient; NaN passes), 0 elsewhere (also in the rows and columns no window covers). finite: the
 * channel's mean (so every x), scale and shift are finite, so that no v is NaN. */
static inline void NB_CS(bnrp_gz)(const NB_T *xp, const NB_T *gp, int64_t h, int64_t w, int64_t kh, int64_t kw,
                                  NB_T scale, NB_T shift, int finite, NB_T *gz)
{
    const int64_t ho = h / kh, wo = w / kw;
    if (kh == 2 && kw == 2 && finite) {
        if (2 * ho < h || 2 * wo < w) memset(gz, 0, (size_t)(h * w) * sizeof(NB_T));
        /* no NaN (finite: x, scale and shift are): where the largest v is > 0, the first maximum of z
         * = relu(v) is the first v equal to it and relu passes g there; elsewhere g stops. Float
         * compares and selects, which vectorise. */
        for (int64_t oy = 0; oy < ho; oy++) {
            const NB_T *r0 = xp + 2 * oy * w, *r1 = r0 + w, *go = gp + oy * wo;
            NB_T *z0 = gz + 2 * oy * w, *z1 = z0 + w;
            for (int64_t ox = 0; ox < wo; ox++) {
                const NB_T v0 = r0[2 * ox] * scale + shift, v1 = r0[2 * ox + 1] * scale + shift;
                const NB_T v2 = r1[2 * ox] * scale + shift, v3 = r1[2 * ox + 1] * scale + shift;
                const NB_T a = v0 > v1 ? v0 : v1, b = v2 > v3 ? v2 : v3, m = a > b ? a : b;
                /* g passed on past each earlier position that holds the maximum */
                const NB_T g0 = m > 0 ? go[ox] : (NB_T)0, g1 = v0 == m ? (NB_T)0 : g0;
                const NB_T g2 = v1 == m ? (NB_T)0 : g1, g3 = v2 == m ? (NB_T)0 : g2;
                z0[2 * ox] = v0 == m ? g0 : (NB_T)0;
                z0[2 * ox + 1] = v1 == m ? g1 : (NB_T)0;
                z1[2 * ox] = v2 == m ? g2 : (NB_T)0;
                z1[2 * ox + 1] = g3;
            }
        }
        return;
    }
    memset(gz, 0, (size_t)(h * w) * sizeof(NB_T));
    for (int64_t oy = 0; oy < ho; oy++)
        for (int64_t ox = 0; ox < wo; ox++) {
            NB_T z, v;
            const int64_t at = NB_CS(bnrp_window)(xp, w, oy * kh, ox * kw, kh, kw, scale, shift, &z, &v);
            gz[at] = v <= 0 ? (NB_T)0 : gp[oy * wo + ox];
        }
}

void NB_CK(bnrp_bw)(int64_t a, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, const NB_T *g, const NB_T *x,
                    const NB_T *st, const NB_T *wt, const NB_T *b, double eps, NB_T *dx, int acc, double *sg,
                    double *sgx, NB_T *work, int threads)
{
    const int64_t d = h * w, q = (h / kh) * (w / kw), slots = nb__bnrp_slots(a, d, (int64_t)sizeof(NB_T));
    /* the first planes' gz kept from the first pass to the second, the others found again in the last slot */
    const int64_t kept = a <= slots ? a : slots - 1;
    const double m = (double)(a * d);
    /* the count the workspace was sized for (asking nb__cnn_threads again could see the knob turned
     * since, by another thread or by the allocator that gave the workspace) */
    const int nb_nt_ = threads;
    NB_CNN_FOR(k, c, {
        NB_T *ws = work + NB_CNN_TID * slots * d;
        NB_T scale, shift;
        NB_CS(bn_coef)(c, k, st, wt, b, eps, &scale, &shift);
        const double mean = (double)st[k], r = 1.0 / sqrt((double)st[c + k] + eps), wr = wt ? (double)wt[k] * r : r;
        const int finite = isfinite(mean) && isfinite(scale) && isfinite(shift);
        double s = 0, sx = 0;
        for (int64_t i = 0; i < a; i++) {
            NB_T *gz = ws + (i < kept ? i : slots - 1) * d;
            NB_CS(bnrp_gz)(x + (i * c + k) * d, g + (i * c + k) * q, h, w, kh, kw, scale, shift, finite, gz);
            double a1, a2;
            NB_CS(dsumdot)(gz, x + (i * c + k) * d, mean, d, &a1, &a2);
            s += a1;
            sx += a2;
        }
        sg[k] = s;
        sgx[k] = sx * r; /* sum gz xhat */
        if (!dx) continue;
        /* dx as bn_bw's for gz */
        NB_T P, Q, O;
        NB_CS(bn_dx_coef)(wr, r, s, sx, m, mean, &P, &Q, &O);
        for (int64_t i = 0; i < a; i++) {
            const NB_T *xr = x + (i * c + k) * d;
            NB_T *gz = ws + (i < kept ? i : slots - 1) * d;
            if (i >= kept) NB_CS(bnrp_gz)(xr, g + (i * c + k) * q, h, w, kh, kw, scale, shift, finite, gz);
            NB_CS(bn_dx_row)(gz, xr, P, Q, O, d, dx + (i * c + k) * d, acc);
        }
    });
}

#undef NB_FOR_SEGMENTS
#undef NB_SMALL_BLOCK
#undef NB_CS
#undef NB_CK
#undef NB_CNN_CAT
#undef NB_CNN_CAT_
