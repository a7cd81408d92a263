/* Forward kernels and backward rules of the built-in ops, one pair per op, defined in the op family's
 * file and collected into the table in optable.c. */
#ifndef NB_OPS_H
#define NB_OPS_H

#include "kernels.h"

#define NB_FW(name) void nb__fw_##name(nb_tensor *out, nb_tensor *const *in, const nb_attrs *at)
#define NB_BW(name) void nb__bw_##name(const nb_node *n, nb_tensor *g, nb_tensor **gin)
/* Inside a backward rule: whether input i wants a gradient. */
#define NB_NEED(i) nb__needs_grad(n->in[i])

/* elementwise.c */
NB_FW(add); NB_BW(add);
NB_FW(sub); NB_BW(sub);
NB_FW(mul); NB_BW(mul);
NB_FW(div); NB_BW(div);
NB_FW(cmp);
NB_FW(affine); NB_BW(affine);
NB_FW(exp); NB_BW(exp);
NB_FW(log); NB_BW(log);
NB_FW(tanh); NB_BW(tanh);
NB_FW(sigmoid); NB_BW(sigmoid);
NB_FW(relu); NB_BW(relu);
NB_FW(pow); NB_BW(pow);
NB_FW(maximum); NB_BW(maximum);
NB_FW(minimum); NB_BW(minimum);
NB_FW(where); NB_BW(where);
NB_FW(sqrt); NB_BW(sqrt);
NB_FW(abs); NB_BW(abs);
NB_FW(sign);
NB_FW(sin); NB_BW(sin);
NB_FW(cos); NB_BW(cos);
NB_FW(erf); NB_BW(erf);
NB_FW(log1p); NB_BW(log1p);
NB_FW(expm1); NB_BW(expm1);
NB_FW(leaky_relu); NB_BW(leaky_relu);
NB_FW(elu); NB_BW(elu);
NB_FW(softplus); NB_BW(softplus);
NB_FW(gelu); NB_BW(gelu);
NB_FW(clamp); NB_BW(clamp);
NB_FW(reciprocal); NB_BW(reciprocal);
NB_FW(square); NB_BW(square);
NB_FW(pows); NB_BW(pows);
NB_FW(tanh_bw); NB_BW(tanh_bw);
NB_FW(sigmoid_bw); NB_BW(sigmoid_bw);
NB_FW(relu_bw); NB_BW(relu_bw);
/* matmul.c */
NB_FW(matmul); NB_BW(matmul);
NB_FW(addmm); NB_BW(addmm);
/* reduce.c */
NB_FW(sum); NB_BW(sum);
NB_FW(argmax);
NB_FW(softmax); NB_BW(softmax);
NB_FW(log_softmax); NB_BW(log_softmax);
/* custom.c */
NB_FW(custom); NB_BW(custom);
/* shape.c */
NB_BW(view);
NB_FW(permute); NB_BW(permute);
NB_FW(broadcast); NB_BW(broadcast);
NB_FW(cast); NB_BW(cast);
/* index.c */
NB_FW(slice); NB_BW(slice);
NB_FW(slice_embed); NB_BW(slice_embed);
NB_FW(pad); NB_BW(pad);
NB_FW(concat); NB_BW(concat);
NB_FW(index_select); NB_BW(index_select);
NB_FW(index_add); NB_BW(index_add);
NB_FW(gather); NB_BW(gather);
NB_FW(scatter_add); NB_BW(scatter_add);

/* backward_into fast paths (see nb_backward_into_fn) */
bool nb__into_slice(const nb_node *n, nb_tensor *g, nb_grad_sink *sink);
bool nb__into_index_select(const nb_node *n, nb_tensor *g, nb_grad_sink *sink);
bool nb__into_matmul(const nb_node *n, nb_tensor *g, nb_grad_sink *sink);
bool nb__into_addmm(const nb_node *n, nb_tensor *g, nb_grad_sink *sink);
/* view rules (see nb_view_fn) */
void *nb__view_slice(nb_tensor *const *in, const nb_attrs *at);

/* Shared argument checks. Each records a message naming `who` and returns false on failure. */
bool nb__check_binary(const char *who, const nb_tensor *a, const nb_tensor *b, int *ndim, int64_t *shape);
/* Scalar 0-d constant of dtype on the current tape. */
nb_tensor *nb__scalar(nb_dtype dtype, double v);

#endif
