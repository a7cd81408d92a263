/* The table of built-in ops: name, arity, forward kernel, backward rule. */
#include "ops.h"

const nb_opdef nb__ops[] = {
    [NB_OP_VIEW] = {"reshape", 1, NULL, nb__bw_view},
    [NB_OP_ADD] = {"add", 2, nb__fw_add, nb__bw_add},
    [NB_OP_SUB] = {"sub", 2, nb__fw_sub, nb__bw_sub},
    [NB_OP_MUL] = {"mul", 2, nb__fw_mul, nb__bw_mul},
    [NB_OP_DIV] = {"div", 2, nb__fw_div, nb__bw_div},
    [NB_OP_CMP] = {"compare", 2, nb__fw_cmp, NULL},
    [NB_OP_AFFINE] = {"affine", 1, nb__fw_affine, nb__bw_affine},
    [NB_OP_EXP] = {"exp", 1, nb__fw_exp, nb__bw_exp},
    [NB_OP_LOG] = {"log", 1, nb__fw_log, nb__bw_log},
    [NB_OP_TANH] = {"tanh", 1, nb__fw_tanh, nb__bw_tanh},
    [NB_OP_SIGMOID] = {"sigmoid", 1, nb__fw_sigmoid, nb__bw_sigmoid},
    [NB_OP_RELU] = {"relu", 1, nb__fw_relu, nb__bw_relu},
    [NB_OP_MATMUL] = {"matmul", 2, nb__fw_matmul, nb__bw_matmul},
    [NB_OP_SUM] = {"sum", 1, nb__fw_sum, nb__bw_sum},
    [NB_OP_PERMUTE] = {"permute", 1, nb__fw_permute, nb__bw_permute},
    [NB_OP_BROADCAST] = {"broadcast_to", 1, nb__fw_broadcast, nb__bw_broadcast},
    [NB_OP_CAST] = {"cast", 1, nb__fw_cast, nb__bw_cast},
    [NB_OP_SLICE] = {"slice", 1, nb__fw_slice, nb__bw_slice},
    [NB_OP_SLICE_EMBED] = {"slice_embed", 1, nb__fw_slice_embed, nb__bw_slice_embed},
    [NB_OP_PAD] = {"pad", 1, nb__fw_pad, nb__bw_pad},
    [NB_OP_CONCAT] = {"concat", -1, nb__fw_concat, nb__bw_concat},
    [NB_OP_INDEX_SELECT] = {"index_select", 2, nb__fw_index_select, nb__bw_index_select},
    [NB_OP_INDEX_ADD] = {"index_add", 2, nb__fw_index_add, nb__bw_index_add},
    [NB_OP_GATHER] = {"gather", 2, nb__fw_gather, nb__bw_gather},
    [NB_OP_SCATTER_ADD] = {"scatter_add", 2, nb__fw_scatter_add, nb__bw_scatter_add},
};

_Static_assert(sizeof(nb__ops) / sizeof(nb__ops[0]) == NB_OP_COUNT, "one table entry per nb_op_id");
