/* Attention: scaled dot-product attention with causal and padding masks, and multi-head attention,
 * composed from nabla ops (nabla.h is the only include). */
#include <nabla.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

nb_tensor *nb_attention(nb_tensor *q, nb_tensor *k, nb_tensor *v, nb_tensor *mask, int causal)
{
    const char *who = "nb_attention";
    if (!q || !k || !v) {
        if (nb_error_code() == NB_OK) nb_error_set(NB_ERR_ARG, "%s: q, k and v are required", who);
        return NULL;
    }
    char sq[96], sk[96], sv[96];
    int nq = nb_tensor_ndim(q), nk = nb_tensor_ndim(k), nv = nb_tensor_ndim(v);
    if (nq < 2 || nk < 2 || nv < 2 || nb_tensor_dim(q, -1) != nb_tensor_dim(k, -1) ||
        nb_tensor_dim(k, -2) != nb_tensor_dim(v, -2)) {
        nb_error_set(NB_ERR_SHAPE, "%s: q %s, k %s, v %s: expected [..., Tq, d], [..., Tk, d], [..., Tk, dv]", who,
                     nb_shape_str(q, sq, sizeof sq), nb_shape_str(k, sk, sizeof sk), nb_shape_str(v, sv, sizeof sv));
        return NULL;
    }
    nb_dtype dt = nb_tensor_dtype(q);
    int64_t tq = nb_tensor_dim(q, -2), tk = nb_tensor_dim(k, -2);
    double scale = 1.0 / sqrt((double)nb_tensor_dim(q, -1));
    nb_tensor *scores = nb_mul_scalar(nb_matmul_ex(q, k, NB_TRANS_B), scale); /* [..., Tq, Tk] */
    nb_tensor *neg_inf = nb_full(dt, 0, NULL, -INFINITY);
    if (causal) {
        nb_tensor *keep = nb_zeros(dt, NB_SHAPE(tq, tk));
        if (!keep) return NULL;
        for (int64_t i = 0; i < tq; i++)
            for (int64_t j = 0; j <= i && j < tk; j++) {
                if (dt == NB_F32)
                    ((float *)nb_tensor_data(keep))[i * tk + j] = 1;
                else
                    ((double *)nb_tensor_data(keep))[i * tk + j] = 1;
            }
        scores = nb_where(keep, scores, neg_inf);
    }
    if (mask) scores = nb_where(mask, scores, neg_inf);
    return nb_matmul(nb_softmax(scores, -1), v);
}

nb_status nb_mha_init(nb_mha *m, nb_params *p, const char *name, int64_t embed, int64_t heads,
                      const nb_layer_opts *opts, nb_rng *rng)
{
    if (!m || !p || !name || embed < 1 || heads < 1 || embed % heads != 0) {
        nb_error_set(NB_ERR_ARG, "nb_mha_init: %s: embed %lld must be a positive multiple of heads %lld",
                     name ? name : "?", (long long)embed, (long long)heads);
        return NB_ERR_ARG;
    }
    memset(m, 0, sizeof *m);
    m->embed = embed;
    m->heads = heads;
    nb_layer_opts o = opts ? *opts : (nb_layer_opts){0};
    nb_layer_opts proj = o, out = o;
    /* torch.nn.MultiheadAttention: in-projections Xavier-uniform over the stacked [3E, E] matrix,
     * output projection as a Linear; every bias zero */
    if (proj.weight_init.kind == NB_INIT_DEFAULT)
        proj.weight_init = (nb_init){.kind = NB_INIT_UNIFORM, .a = sqrt(6.0 / (double)(embed + 3 * embed))};
    if (proj.bias_init.kind == NB_INIT_DEFAULT) proj.bias_init = (nb_init){.kind = NB_INIT_ZEROS, .a = 0};
    if (out.bias_init.kind == NB_INIT_DEFAULT) out.bias_init = (nb_init){.kind = NB_INIT_ZEROS, .a = 0};
    const char *names[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    nb_linear *layers[4] = {&m->q_proj, &m->k_proj, &m->v_proj, &m->out_proj};
    for (int i = 0; i < 4; i++) {
        char full[256];
        snprintf(full, sizeof full, "%s.%s", name, names[i]);
        nb_status st = nb_linear_init(layers[i], p, full, embed, embed, i < 3 ? &proj : &out, rng);
        if (st != NB_OK) return st;
    }
    return NB_OK;
}

/* [B, T, E] -> [B, heads, T, E / heads] */
static nb_tensor *split_heads(nb_tensor *x, int64_t heads)
{
    int64_t b = nb_tensor_dim(x, 0), t = nb_tensor_dim(x, 1), e = nb_tensor_dim(x, 2);
    return nb_permute(nb_reshape(x, NB_SHAPE(b, t, heads, e / heads)), 4, (const int[]){0, 2, 1, 3});
}

nb_tensor *nb_mha_forward(const nb_mha *m, nb_tensor *q, nb_tensor *k, nb_tensor *v, nb_tensor *key_padding, int causal)
{
    const char *who = "nb_mha_forward";
    if (!m || !m->q_proj.weight) {
        nb_error_set(NB_ERR_ARG, "%s: layer is NULL or not initialised", who);
        return NULL;
    }
    if (!q || !k || !v) {
        if (nb_error_code() == NB_OK) nb_error_set(NB_ERR_ARG, "%s: q, k and v are required", who);
        return NULL;
    }
    char sq[96], sk[96], sv[96];
    if (nb_tensor_ndim(q) != 3 || nb_tensor_ndim(k) != 3 || nb_tensor_ndim(v) != 3 || nb_tensor_dim(q, 2) != m->embed ||
        nb_tensor_dim(k, 2) != m->embed || nb_tensor_dim(v, 2) != m->embed || nb_tensor_dim(k, 0) != nb_tensor_dim(q, 0) ||
        nb_tensor_dim(v, 0) != nb_tensor_dim(q, 0) || nb_tensor_dim(k, 1) != nb_tensor_dim(v, 1)) {
        nb_error_set(NB_ERR_SHAPE, "%s: q %s, k %s, v %s: expected [B, Tq, %lld], [B, Tk, %lld], [B, Tk, %lld]", who,
                     nb_shape_str(q, sq, sizeof sq), nb_shape_str(k, sk, sizeof sk), nb_shape_str(v, sv, sizeof sv),
                     (long long)m->embed, (long long)m->embed, (long long)m->embed);
        return NULL;
    }
    int64_t b = nb_tensor_dim(q, 0), tq = nb_tensor_dim(q, 1), tk = nb_tensor_dim(k, 1);
    nb_tensor *mask = NULL;
    if (key_padding) {
        if (nb_tensor_ndim(key_padding) != 2 || nb_tensor_dim(key_padding, 0) != b || nb_tensor_dim(key_padding, 1) != tk) {
            nb_error_set(NB_ERR_SHAPE, "%s: key padding mask %s: expected [%lld, %lld]", who,
                         nb_shape_str(key_padding, sq, sizeof sq), (long long)b, (long long)tk);
            return NULL;
        }
        mask = nb_reshape(key_padding, NB_SHAPE(b, 1, 1, tk));
    }
    nb_tensor *qh = split_heads(nb_linear_forward(&m->q_proj, q), m->heads);
    nb_tensor *kh = split_heads(nb_linear_forward(&m->k_proj, k), m->heads);
    nb_tensor *vh = split_heads(nb_linear_forward(&m->v_proj, v), m->heads);
    nb_tensor *o = nb_attention(qh, kh, vh, mask, causal); /* [B, heads, Tq, Dh] */
    o = nb_reshape(nb_permute(o, 4, (const int[]){0, 2, 1, 3}), NB_SHAPE(b, tq, m->embed));
    return nb_linear_forward(&m->out_proj, o);
}
