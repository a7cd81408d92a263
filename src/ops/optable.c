/* The table of built-in ops (name, arity, forward kernel, backward rule, fast path, view rule), made
 * from the one list in oplist.h. */
#include "ops.h"

#define NB__FN_Y(kind, FN) nb__##kind##_##FN
#define NB__FN_N(kind, FN) NULL
#define NB__OP_ROW(ID, FN, NAME, NIN, HF, HB, HI, HV)                                                 \
    [NB_OP_##ID] = {.name = NAME,                                                                      \
                    .n_inputs = NIN,                                                                   \
                    .forward = NB__FN_##HF(fw, FN),                                                    \
                    .backward = NB__FN_##HB(bw, FN),                                                   \
                    .backward_into = NB__FN_##HI(into, FN),                                            \
                    .view = NB__FN_##HV(view, FN)},

const nb_opdef nb__ops[NB_OP_COUNT] = {NB_OP_LIST(NB__OP_ROW)};
