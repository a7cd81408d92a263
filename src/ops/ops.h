/* Forward kernels and backward rules of the built-in ops, one pair per op, defined in the op family's
 * file and collected into the table in optable.c. */
#ifndef NB_OPS_H
#define NB_OPS_H

#include "kernels.h"

#define NB_FW(name) void nb__fw_##name(nb_tensor *out, nb_tensor *const *in, const nb_attrs *at)
#define NB_BW(name) void nb__bw_##name(const nb_node *n, nb_tensor *g, nb_tensor **gin)
/* Inside a backward rule: whether input i wants a gradient. */
#define NB_NEED(i) nb__needs_grad(n->in[i])

/* Declarations of every kernel, rule, fast path and view rule that src/ops/oplist.h lists. */
#define NB__DECL_FW_Y(fn) NB_FW(fn);
#define NB__DECL_FW_N(fn)
#define NB__DECL_BW_Y(fn) NB_BW(fn);
#define NB__DECL_BW_N(fn)
/* backward_into fast paths (see nb_backward_into_fn) */
#define NB__DECL_INTO_Y(fn) bool nb__into_##fn(const nb_node *n, nb_tensor *g, nb_grad_sink *sink);
#define NB__DECL_INTO_N(fn)
/* view rules (see nb_view_fn) */
#define NB__DECL_VIEW_Y(fn) void *nb__view_##fn(nb_tensor *const *in, const nb_attrs *at);
#define NB__DECL_VIEW_N(fn)
#define NB__OP_DECL(ID, fn, name, n_in, fw, bw, into, view) \
    NB__DECL_FW_##fw(fn) NB__DECL_BW_##bw(fn) NB__DECL_INTO_##into(fn) NB__DECL_VIEW_##view(fn)
NB_OP_LIST(NB__OP_DECL)
#undef NB__OP_DECL

/* Shared argument checks. Each records a message naming `who` and returns false on failure. */
bool nb__check_binary(const char *who, const nb_tensor *a, const nb_tensor *b, int *ndim, int64_t *shape);
/* A new tensor that is x (a view with its own node when recorded): what an op returns when its result
 * equals its input (a full slice, a zero pad, ...), so that a hook or nb_grad on the result never lands
 * on the input. */
nb_tensor *nb__alias(const char *who, nb_tensor *x);
/* The same data as x in another shape (the element count x's), with errors naming `who`: the reshape
 * view on the current tape, or with no current tape and x a leaf, a caller-owned leaf view
 * (nb__leaf_view). */
nb_tensor *nb__view(const char *who, nb_tensor *x, int ndim, const int64_t *shape);
/* nb_sum_to for backward rules: x itself when nothing is reduced (rules may return an alias of g). */
nb_tensor *nb__sum_to(nb_tensor *x, int ndim, const int64_t *shape);
/* Axes of x (negative ones count from the end) as a bitmask; naxes = 0: every axis. */
bool nb__axes_mask(const char *who, const nb_tensor *x, int naxes, const int *axes, uint32_t *mask);
/* Scalar 0-d constant of dtype on the current tape. */
nb_tensor *nb__scalar(nb_dtype dtype, double v);

#endif
