/* Custom ops: user-supplied forward kernels and backwards, recorded on the tape like built-ins. */
#include "ops.h"

#include <string.h>

/* out = the user's forward over the input buffers */
NB_FW(custom)
{
    const nb_custom_op *op = at->p;
    uint64_t errors = nb__error_count();
    nb_status st = op->forward(op->user, (int)at->i[0],
                               (const nb_tensor *const *)in, out);
    if (st != NB_OK && nb__error_count() == errors)
        nb__fail(st, "nb_custom: the forward of %s failed (%s)", op->name ? op->name : "custom", nb_status_name(st));
}

/* The user's backward: composed from nabla ops (differentiable again), or raw into buffers. */
NB_BW(custom)
{
    const nb_custom_op *op = n->attrs.p;
    const char *name = op->name ? op->name : "custom";
    uint64_t errors = nb__error_count();
    nb_status st;
    if (op->backward) {
        st = op->backward(op->user, n->n_in, n->in, n->out, g, gin);
    } else {
        if (nb_grad_enabled()) {
            nb__fail(NB_ERR_UNSUPPORTED, "nb_backward: custom op %s (node %zu) has a raw backward, which "
                     "cannot be differentiated again: NB_CREATE_GRAPH is not available through it", name,
                     n->index);
            return;
        }
        for (int i = 0; i < n->n_in; i++) {
            gin[i] = NULL;
            if (!NB_NEED(i)) continue;
            gin[i] = nb_zeros_like(n->in[i]);
            if (!gin[i]) return;
        }
        st = op->backward_raw(op->user, n->n_in, (const nb_tensor *const *)n->in, n->out, g, gin);
    }
    if (st != NB_OK && nb__error_count() == errors)
        nb__fail(st, "nb_backward: the backward of custom op %s failed (%s)", name, nb_status_name(st));
    for (int i = 0; i < n->n_in && st == NB_OK; i++)
        if (NB_NEED(i) && !gin[i] && nb__error_count() == errors)
            nb__fail(NB_ERR_STATE, "nb_backward: the backward of custom op %s gave no gradient for input %d",
                     name, i);
}

nb_tensor *nb_custom(const nb_custom_op *op, int n_in, nb_tensor *const *in, nb_dtype dtype, int ndim,
                     const int64_t *shape)
{
    const char *who = "nb_custom";
    if (!op || !op->forward || (!op->backward && !op->backward_raw))
        return nb__fail(NB_ERR_ARG, "%s: the op needs a forward and a backward (composed or raw)", who);
    if (n_in < 0 || n_in > 16 || (n_in > 0 && !in))
        return nb__fail(NB_ERR_ARG, "%s: %s: %d inputs (0..16)", who, op->name ? op->name : "custom", n_in);
    for (int i = 0; i < n_in; i++)
        if (!in[i]) return nb__fail(NB_ERR_ARG, "%s: %s: input %d is NULL", who, op->name ? op->name : "custom", i);
    for (int i = 0; i < n_in; i++)
        if (!nb__live(who, in[i])) return NULL;
    if (!nb__is_float(dtype))
        return nb__fail(NB_ERR_DTYPE, "%s: %s: result dtype %s is not f32 or f64", who,
                        op->name ? op->name : "custom", nb_dtype_name(dtype));
    if (!nb__check_shape(who, ndim, shape)) return NULL;
    nb_attrs at = {.i = {n_in}, .p = op};
    return nb__apply(who, NB_OP_CUSTOM, n_in, in, &at, dtype, ndim, shape);
}
