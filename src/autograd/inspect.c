/* Looking inside: graph export as Graphviz DOT, anomaly mode, gradient hooks, node names. */
#include "internal.h"

#include <math.h>
#include <string.h>

int nb__anomaly_on = 0;
_Thread_local const nb_node *nb__in_backward_of = NULL;
static _Thread_local uint64_t t_epoch = 0;

uint64_t nb__next_epoch(void) { return ++t_epoch; }

void nb_set_anomaly_mode(int on) { nb__anomaly_on = on ? 1 : 0; }
int nb_anomaly_mode(void) { return nb__anomaly_on; }

const char *nb__node_name(const nb_node *n)
{
    if (n->op == &nb__ops[NB_OP_CUSTOM] && n->attrs.p) {
        const nb_custom_op *c = n->attrs.p;
        return c->name ? c->name : "custom";
    }
    return n->op->name;
}

bool nb__anomaly_check(const nb_tensor *t, const char *what)
{
    if (!nb__is_float(t->dtype)) return true;
    for (int64_t i = 0; i < t->numel; i++) {
        double v = nb__get(t, i);
        if (isfinite(v)) continue;
        const char *kind = isnan(v) ? "NaN" : "infinity";
        const nb_node *b = nb__in_backward_of;
        if (b)
            nb__fail(NB_ERR_NUMERIC, "%s: anomaly: %s at element %lld of %s, in the backward of %s (node "
                     "%zu on the tape)", what, kind, (long long)i, NB_SHP(t), nb__node_name(b), b->index);
        else
            nb__fail(NB_ERR_NUMERIC, "%s: anomaly: %s at element %lld of its output %s (node %zu on the "
                     "tape)", what, kind, (long long)i, NB_SHP(t), t->tape ? t->tape->n_nodes : (size_t)0);
        return false;
    }
    return true;
}

nb_status nb_tensor_set_hook(nb_tensor *t, nb_grad_hook hook, void *user)
{
    if (!t) return nb__fail_status(NB_ERR_ARG, "nb_tensor_set_hook: tensor is NULL");
    if (!nb__is_float(t->dtype))
        return nb__fail_status(NB_ERR_DTYPE, "nb_tensor_set_hook: %s tensor %s has no gradient",
                               nb_dtype_name(t->dtype), NB_SHP(t));
    t->hook = hook;
    t->hook_user = hook ? user : NULL;
    return NB_OK;
}

nb_status nb_tensor_set_post_accumulate_hook(nb_tensor *t, nb_post_accumulate_hook hook, void *user)
{
    const char *who = "nb_tensor_set_post_accumulate_hook";
    if (!t) return nb__fail_status(NB_ERR_ARG, "%s: tensor is NULL", who);
    if (!(t->flags & NB_TF_LEAF))
        return nb__fail_status(NB_ERR_STATE, "%s: %s is an op result; only leaves accumulate gradients",
                               who, NB_SHP(t));
    if (!nb__is_float(t->dtype))
        return nb__fail_status(NB_ERR_DTYPE, "%s: %s tensor %s has no gradient", who,
                               nb_dtype_name(t->dtype), NB_SHP(t));
    t->post_hook = hook;
    t->post_hook_user = hook ? user : NULL;
    return NB_OK;
}

/* ---- DOT export ------------------------------------------------------------------------------- */

/* Quote a label for DOT (escape quotes and backslashes). */
static void put_escaped(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc(*s, f);
    }
}

nb_status nb_tape_write_dot(const nb_tape *tape, const nb_tensor *output, FILE *f)
{
    if (!tape || !f) return nb__fail_status(NB_ERR_ARG, "nb_tape_write_dot: tape or file is NULL");
    size_t n = tape->n_nodes;
    if (output) {
        if (!output->node || output->tape != tape)
            return nb__fail_status(NB_ERR_ARG, "nb_tape_write_dot: output %s was not recorded on this tape",
                                   NB_SHP(output));
        n = output->node->index + 1;
    }
    uint8_t *need = nb__calloc(n ? n : 1);
    if (!need) return nb__fail_status(NB_ERR_NOMEM, "nb_tape_write_dot: out of memory");
    if (output) {
        need[output->node->index] = 1;
        for (size_t i = n; i-- > 0;) {
            if (!need[i]) continue;
            const nb_node *nd = tape->nodes[i];
            for (int j = 0; j < nd->n_in; j++)
                if (nd->in[j]->node && nd->in[j]->tape == tape) need[nd->in[j]->node->index] = 1;
        }
    } else {
        memset(need, 1, n);
    }
    /* inputs that are not recorded results (leaves, constants) get numbers in order of appearance */
    uint64_t epoch = nb__next_epoch();
    int64_t next_id = 0;
    fprintf(f, "digraph nabla {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=10];\n");
    for (size_t i = 0; i < n; i++) {
        if (!need[i]) continue;
        const nb_node *nd = tape->nodes[i];
        for (int j = 0; j < nd->n_in; j++) {
            nb_tensor *x = nd->in[j];
            if (x->node && x->tape == tape) continue;
            if (x->bw_epoch != epoch) {
                x->bw_epoch = epoch;
                x->bw_slot = next_id++;
                bool leaf = (x->flags & NB_TF_LEAF) != 0;
                fprintf(f, "  t%lld [shape=box, style=%s, label=\"", (long long)x->bw_slot,
                        leaf ? (nb__needs_grad(x) ? "\"filled\", fillcolor=\"lightblue\"" : "\"filled\", "
                                                    "fillcolor=\"lightgrey\"") : "dashed");
                put_escaped(f, x->name ? x->name : (leaf ? "leaf" : "constant"));
                fprintf(f, "\\n%s %s\"];\n", NB_SHP(x), nb_dtype_name(x->dtype));
            }
        }
        fprintf(f, "  n%zu [shape=ellipse, label=\"", i);
        put_escaped(f, nb__node_name(nd));
        if (nd->out->name) {
            fprintf(f, " (");
            put_escaped(f, nd->out->name);
            fprintf(f, ")");
        }
        fprintf(f, "\\n%s %s\"%s];\n", NB_SHP(nd->out), nb_dtype_name(nd->out->dtype),
                output && nd->out == output ? ", peripheries=2" : "");
        for (int j = 0; j < nd->n_in; j++) {
            nb_tensor *x = nd->in[j];
            if (x->node && x->tape == tape)
                fprintf(f, "  n%zu -> n%zu;\n", x->node->index, i);
            else
                fprintf(f, "  t%lld -> n%zu;\n", (long long)x->bw_slot, i);
        }
    }
    fprintf(f, "}\n");
    nb__free(need, n ? n : 1);
    return ferror(f) ? nb__fail_status(NB_ERR_IO, "nb_tape_write_dot: write error") : NB_OK;
}
