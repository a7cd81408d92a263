/* The one list of built-in ops. Everything else is made from it: the enum nb_op_id (internal.h), the
 * declarations of the kernels and rules (ops.h) and the op table (optable.c). A row is
 *
 *   X(ID, fn, "name", n_inputs, FW, BW, INTO, VIEW)
 *
 * ID makes the enum constant NB_OP_<ID>; "name" is what graphs and messages show; n_inputs is the
 * arity (-1: any). FW, BW, INTO and VIEW are Y when the op family's file defines nb__fw_<fn> (the
 * forward kernel), nb__bw_<fn> (the backward rule; N: not differentiable), nb__into_<fn> (the
 * no-graph fast path of the rule) and nb__view_<fn> (the result may share its input's memory), N
 * otherwise. A Y without its definition fails to link; a definition without its Y fails to compile
 * (the library is built with -Werror=missing-prototypes). Attributes (nb_attrs) are noted per row. */
#ifndef NB_OPLIST_H
#define NB_OPLIST_H

#define NB_OP_LIST(X)                                                                                  \
    /* elementwise.c */                                                                                \
    X(VIEW, view, "reshape", 1, Y, Y, N, N)              /* shares the input's data (or copies it) */  \
    X(ADD, add, "add", 2, Y, Y, N, N)                                                                  \
    X(SUB, sub, "sub", 2, Y, Y, N, N)                                                                  \
    X(MUL, mul, "mul", 2, Y, Y, N, N)                                                                  \
    X(DIV, div, "div", 2, Y, Y, N, N)                                                                  \
    X(CMP, cmp, "compare", 2, Y, N, N, N)                /* i[0] = nb_binop */                         \
    X(AFFINE, affine, "affine", 1, Y, Y, N, N)           /* f[0] * x + f[1] */                         \
    X(EXP, exp, "exp", 1, Y, Y, N, N)                                                                  \
    X(LOG, log, "log", 1, Y, Y, N, N)                                                                  \
    X(TANH, tanh, "tanh", 1, Y, Y, N, N)                                                               \
    X(SIGMOID, sigmoid, "sigmoid", 1, Y, Y, N, N)                                                      \
    X(RELU, relu, "relu", 1, Y, Y, N, N)                                                               \
    X(POW, pow, "pow", 2, Y, Y, N, N)                                                                  \
    X(MAXIMUM, maximum, "maximum", 2, Y, Y, N, N)                                                      \
    X(MINIMUM, minimum, "minimum", 2, Y, Y, N, N)                                                      \
    X(WHERE, where, "where", 3, Y, Y, N, N)              /* inputs cond, a, b */                       \
    X(SQRT, sqrt, "sqrt", 1, Y, Y, N, N)                                                               \
    X(ABS, abs, "abs", 1, Y, Y, N, N)                                                                  \
    X(SIGN, sign, "sign", 1, Y, N, N, N)                                                               \
    X(SIN, sin, "sin", 1, Y, Y, N, N)                                                                  \
    X(COS, cos, "cos", 1, Y, Y, N, N)                                                                  \
    X(ERF, erf, "erf", 1, Y, Y, N, N)                                                                  \
    X(LOG1P, log1p, "log1p", 1, Y, Y, N, N)                                                            \
    X(EXPM1, expm1, "expm1", 1, Y, Y, N, N)                                                            \
    X(LEAKY_RELU, leaky_relu, "leaky_relu", 1, Y, Y, N, N) /* f[0] = slope */                          \
    X(ELU, elu, "elu", 1, Y, Y, N, N)                    /* f[0] = alpha */                            \
    X(SOFTPLUS, softplus, "softplus", 1, Y, Y, N, N)                                                   \
    X(GELU, gelu, "gelu", 1, Y, Y, N, N)                                                               \
    X(CLAMP, clamp, "clamp", 1, Y, Y, N, N)              /* f[0] = lo, f[1] = hi */                    \
    X(RECIPROCAL, reciprocal, "reciprocal", 1, Y, Y, N, N)                                             \
    X(SQUARE, square, "square", 1, Y, Y, N, N)                                                         \
    X(POWS, pows, "pow_scalar", 1, Y, Y, N, N)           /* f[0] = exponent */                         \
    X(TANH_BW, tanh_bw, "tanh_backward", 2, Y, Y, N, N)  /* inputs g, y = tanh(x): g (1 - y^2) */      \
    X(SIGMOID_BW, sigmoid_bw, "sigmoid_backward", 2, Y, Y, N, N) /* g, y = sigmoid(x): g y (1 - y) */  \
    X(RELU_BW, relu_bw, "relu_backward", 2, Y, Y, N, N)  /* inputs g, x: g [x > 0] */                  \
    /* matmul.c */                                                                                     \
    X(MATMUL, matmul, "matmul", 2, Y, Y, Y, N)           /* i[0] = NB_TRANS_* flags */                 \
    X(ADDMM, addmm, "addmm", 3, Y, Y, Y, N)              /* c, a, b: c + op(a) op(b); i[0] flags */    \
    /* ---- convolutional networks: conv.c, pool.c, norm.c (kernels: cnn_kernels_impl.h) ---- */       \
    /* x, w [, b]; i[0..5] stride, padding, dilation (h, w pairs), i[6] groups, i[7] 1 with a bias */  \
    X(CONV2D, conv2d, "conv2d", -1, Y, Y, Y, N)                                                        \
    X(CONV_TRANSPOSE2D, conv_transpose2d, "conv_transpose2d", -1, Y, Y, N, N) /* adjoint in x; same */ \
    X(CONV2D_WEIGHT, conv2d_weight, "conv2d_weight", 2, Y, Y, N, N) /* x, g: conv2d's dw; same attrs */\
    /* i[0..7] kernel, stride, padding, dilation (h, w pairs); p = NULL or the i64 positions to fill */\
    X(MAX_POOL2D, max_pool2d, "max_pool2d", 1, Y, Y, Y, N)                                             \
    X(AVG_POOL2D, avg_pool2d, "avg_pool2d", 1, Y, Y, N, N) /* i[0..5] as max_pool2d, i[6] flags */     \
    X(AVG_POOL2D_ADJ, avg_pool2d_adj, "avg_pool2d_backward", 1, Y, Y, N, N) /* its adjoint */          \
    X(CHANNEL_MOMENTS, channel_moments, "channel_moments", 1, Y, Y, Y, N) /* [N,C,..] -> [2,C] */      \
    /* x, stats [, w] [, b]; i[0], i[1]: w, b present; f[0] = eps */                                   \
    X(CHANNEL_NORM, channel_norm, "channel_norm", -1, Y, Y, Y, N)                                      \
    /* x [, w] [, b]: norm(x, moments(x)) fused; same attrs; p = the [2, C] statistics it stores */    \
    X(BATCH_NORM, batch_norm, "batch_norm", -1, Y, Y, Y, N)                                            \
    /* x [N,C,H,W] [, w] [, b]: max_pool2d(relu(batch_norm)) over tiling windows fused; attrs as       \
     * batch_norm's, i[2], i[3] = kernel h, w (the stride) */                                         \
    X(BN_RELU_POOL, bn_relu_pool, "batch_norm_relu_max_pool2d", -1, Y, Y, Y, N)                        \
    /* reduce.c */                                                                                     \
    X(SUM, sum, "sum", 1, Y, Y, N, N)                    /* i[0] = axes bitmask, i[1] = keepdim */     \
    X(ARGMAX, argmax, "argmax", 1, Y, N, N, N)           /* i[0] = axis, i[1] = 1 for argmin */        \
    X(SOFTMAX, softmax, "softmax", 1, Y, Y, N, N)        /* i[0] = axis */                             \
    X(LOG_SOFTMAX, log_softmax, "log_softmax", 1, Y, Y, N, N) /* i[0] = axis */                        \
    X(DROPOUT, dropout, "dropout", 1, Y, Y, N, N)        /* x * mask: i[0] key, i[1] threshold, f[1] kept value */ \
    /* cells.c */                                                                                      \
    X(LSTM_GATES, lstm_gates, "lstm_gates", 2, Y, Y, Y, N) /* gates [.., 4H], c [.., H] -> [2, .., H] */ \
    X(GRU_GATES, gru_gates, "gru_gates", 3, Y, Y, Y, N)  /* xg, hg [.., 3H], h [.., H] -> [.., H] */   \
    /* custom.c */                                                                                     \
    X(CUSTOM, custom, "custom", -1, Y, Y, N, N)          /* p = the nb_custom_op, i[0] = n inputs */   \
    /* shape.c */                                                                                      \
    X(PERMUTE, permute, "permute", 1, Y, Y, N, N)        /* i[0..ndim) = perm */                       \
    X(BROADCAST, broadcast, "broadcast_to", 1, Y, Y, N, N) /* out's shape is the target */             \
    X(CAST, cast, "cast", 1, Y, Y, N, N)                                                              \
    /* index.c */                                                                                      \
    X(SLICE, slice, "slice", 1, Y, Y, Y, Y)              /* i[0] axis, i[1] start, i[2] step, i[3] m */\
    X(SLICE_EMBED, slice_embed, "slice_embed", 1, Y, Y, N, N) /* adjoint of slice, same attrs */       \
    X(PAD, pad, "pad", 1, Y, Y, N, N)                    /* i[d] = before along d; f[0] = fill */      \
    X(CONCAT, concat, "concat", -1, Y, Y, N, N)          /* i[0] = axis, i[1] = n inputs */            \
    X(INDEX_SELECT, index_select, "index_select", 2, Y, Y, Y, N) /* x, idx (i64 1-D); i[0] = axis */   \
    X(INDEX_ADD, index_add, "index_add", 2, Y, Y, N, N)  /* idx, src: adjoint of index_select */       \
    X(GATHER, gather, "gather", 2, Y, Y, N, N)           /* x, idx (i64, x's ndim); i[0] = axis */     \
    X(SCATTER_ADD, scatter_add, "scatter_add", 2, Y, Y, N, N) /* idx, src: adjoint of gather */        \
    /* scan.c: everyday ops; roll, repeat, sort, topk, masked_fill, triu, einsum are compositions */   \
    X(FLIP, flip, "flip", 1, Y, Y, N, N)                 /* i[0] = axes bitmask */                     \
    X(CUMSUM, cumsum, "cumsum", 1, Y, Y, N, N)           /* i[0] = axis, i[1] = 1: from the end */     \
    X(CUMPROD, cumprod, "cumprod", 1, Y, Y, N, N)        /* i[0] = axis */                             \
    X(LINREC, linrec, "linear_recurrence", 2, Y, Y, N, N) /* a, b; i[0] axis, i[1] = 1: from the end */\
    X(ARGSORT, argsort, "argsort", 1, Y, N, N, N)        /* i[0] = axis, i[1] = descending */

#endif
