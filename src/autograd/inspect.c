/* Looking inside: graph export as Graphviz DOT, anomaly mode, gradient hooks, node names. */
#include "internal.h"

#include <math.h>
#include <string.h>

int nb__anomaly_on = 0;
_Thread_local const nb_node *nb__in_backward_of = NULL;

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
    if (!nb__live("nb_tensor_set_hook", t)) return NB_ERR_STATE;
    if (!nb__is_float(t->dtype))
        return nb__fail_status(NB_ERR_DTYPE, "nb_tensor_set_hook: %s tensor %s has no gradient",
                               nb_dtype_name(t->dtype), NB_SHP(t));
    if (hook && (t->flags & NB_TF_VIEW))
        return nb__fail_status(NB_ERR_STATE, "nb_tensor_set_hook: %s is a view made without a tape; it has no "
                               "gradient", NB_SHP(t));
    t->hook = hook;
    t->hook_user = hook ? user : NULL;
    return NB_OK;
}

nb_status nb_tensor_set_post_accumulate_hook(nb_tensor *t, nb_post_accumulate_hook hook, void *user)
{
    const char *who = "nb_tensor_set_post_accumulate_hook";
    if (!t) return nb__fail_status(NB_ERR_ARG, "%s: tensor is NULL", who);
    if (!nb__live(who, t)) return NB_ERR_STATE;
    if (!(t->flags & NB_TF_LEAF))
        return nb__fail_status(NB_ERR_STATE, "%s: %s is an op result; only leaves accumulate gradients",
                               who, NB_SHP(t));
    if (!nb__is_float(t->dtype))
        return nb__fail_status(NB_ERR_DTYPE, "%s: %s tensor %s has no gradient", who,
                               nb_dtype_name(t->dtype), NB_SHP(t));
    if (hook && (t->flags & NB_TF_VIEW))
        return nb__fail_status(NB_ERR_STATE, "%s: %s is a view made without a tape; it has no gradient", who,
                               NB_SHP(t));
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

/* The DOT export's own numbering of the tensors that are not results of the tape (leaves, constants,
 * other tapes' results): an open-addressing map from pointer to number, local to the call. */
typedef struct dot_ids {
    const nb_tensor **key;
    int64_t *id;
    size_t cap, n;
} dot_ids;

static size_t dot_home(const dot_ids *m, const nb_tensor *x)
{
    return (size_t)(((uint64_t)(uintptr_t)x * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & (m->cap - 1);
}

/* x's number, *fresh telling whether it was just given; -1 when out of memory. */
static int64_t dot_id(dot_ids *m, const nb_tensor *x, bool *fresh)
{
    *fresh = false;
    if (2 * (m->n + 1) > m->cap) {
        dot_ids g = {0};
        g.cap = m->cap ? 2 * m->cap : 64;
        g.key = nb__calloc(g.cap * sizeof *g.key);
        g.id = nb__calloc(g.cap * sizeof *g.id);
        if (!g.key || !g.id) {
            nb__free(g.key, g.cap * sizeof *g.key);
            nb__free(g.id, g.cap * sizeof *g.id);
            return -1;
        }
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->key[i]) continue;
            size_t k = dot_home(&g, m->key[i]);
            while (g.key[k]) k = (k + 1) & (g.cap - 1);
            g.key[k] = m->key[i];
            g.id[k] = m->id[i];
        }
        g.n = m->n;
        nb__free(m->key, m->cap * sizeof *m->key);
        nb__free(m->id, m->cap * sizeof *m->id);
        *m = g;
    }
    size_t k = dot_home(m, x);
    while (m->key[k] && m->key[k] != x) k = (k + 1) & (m->cap - 1);
    if (!m->key[k]) {
        m->key[k] = x;
        m->id[k] = (int64_t)m->n++;
        *fresh = true;
    }
    return m->id[k];
}

nb_status nb_tape_write_dot(const nb_tape *tape, const nb_tensor *output, FILE *f)
{
    const char *who = "nb_tape_write_dot";
    if (!tape || !f) return nb__fail_status(NB_ERR_ARG, "%s: tape or file is NULL", who);
    size_t n = tape->n_nodes;
    if (output) {
        if (!nb__live(who, output)) return NB_ERR_STATE;
        if (!output->node || output->tape != tape)
            return nb__fail_status(NB_ERR_ARG, "%s: output %s was not recorded on this tape", who,
                                   NB_SHP(output));
        n = output->node->index + 1;
    }
    uint8_t *need = nb__calloc(n ? n : 1);
    if (!need) return nb__fail_status(NB_ERR_NOMEM, "%s: out of memory", who);
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
    /* a node's inputs must still be readable (as in the backward's mark) before anything is written */
    nb_status st = NB_OK;
    for (size_t i = 0; i < n && st == NB_OK; i++) {
        if (!need[i]) continue;
        const nb_node *nd = tape->nodes[i];
        for (int j = 0; j < nd->n_in && st == NB_OK; j++) {
            const nb_tensor *x = nd->in[j];
            if (x->stamp != nd->in_stamp[j] || !nb__usable(x))
                st = nb__fail_status(NB_ERR_STATE, "%s: input %d of node %zu (%s) %s after it was recorded",
                                     who, j, i, nb__node_name(nd),
                                     x->tape ? "belongs to a tape that was reset" : "was freed");
        }
    }
    /* inputs that are not recorded results (leaves, constants) get numbers in order of appearance */
    dot_ids ids = {0};
    if (st == NB_OK)
        fprintf(f, "digraph nabla {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=10];\n");
    for (size_t i = 0; i < n && st == NB_OK; i++) {
        if (!need[i]) continue;
        const nb_node *nd = tape->nodes[i];
        for (int j = 0; j < nd->n_in; j++) {
            nb_tensor *x = nd->in[j];
            if (x->node && x->tape == tape) continue;
            bool fresh;
            int64_t id = dot_id(&ids, x, &fresh);
            if (id < 0) {
                st = nb__fail_status(NB_ERR_NOMEM, "%s: out of memory", who);
                break;
            }
            if (fresh) {
                bool leaf = (x->flags & NB_TF_LEAF) != 0;
                fprintf(f, "  t%lld [shape=box, style=%s, label=\"", (long long)id,
                        leaf ? (nb__needs_grad(x) ? "\"filled\", fillcolor=\"lightblue\"" : "\"filled\", "
                                                    "fillcolor=\"lightgrey\"") : "dashed");
                put_escaped(f, x->name ? x->name : (leaf ? "leaf" : "constant"));
                fprintf(f, "\\n%s %s\"];\n", NB_SHP(x), nb_dtype_name(x->dtype));
            }
        }
        if (st != NB_OK) break;
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
            bool fresh;
            if (x->node && x->tape == tape)
                fprintf(f, "  n%zu -> n%zu;\n", x->node->index, i);
            else
                fprintf(f, "  t%lld -> n%zu;\n", (long long)dot_id(&ids, x, &fresh), i);
        }
    }
    if (st == NB_OK) fprintf(f, "}\n");
    nb__free(ids.key, ids.cap * sizeof *ids.key);
    nb__free(ids.id, ids.cap * sizeof *ids.id);
    nb__free(need, n ? n : 1);
    if (st != NB_OK) return st;
    return ferror(f) ? nb__fail_status(NB_ERR_IO, "%s: write error", who) : NB_OK;
}
