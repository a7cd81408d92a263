/* TEMPORARY (removed when src/ops/index.c lands): weak stand-ins so the tree links meanwhile. */
#include "ops.h"
#define W __attribute__((weak))
#define FWS(op) W NB_FW(op) { (void)out; (void)in; (void)at; }
#define BWS(op) W NB_BW(op) { (void)n; (void)g; (void)gin; }
FWS(slice) BWS(slice) FWS(slice_embed) BWS(slice_embed) FWS(pad) BWS(pad) FWS(concat) BWS(concat)
FWS(index_select) BWS(index_select) FWS(index_add) BWS(index_add) FWS(gather) BWS(gather)
FWS(scatter_add) BWS(scatter_add)
W nb_tensor *nb_gather(nb_tensor *x, int axis, nb_tensor *idx)
{
    (void)x; (void)axis; (void)idx;
    return nb__fail(NB_ERR_UNSUPPORTED, "nb_gather: pending");
}
