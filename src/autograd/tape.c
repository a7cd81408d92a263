/* The tape: an arena for op results plus an append-only array of nodes in execution order. */
#include "internal.h"

#include <string.h>

_Thread_local nb_tape *nb__t_current = NULL;
static _Thread_local int t_no_grad = 0;

nb_tape *nb_tape_current(void) { return nb__t_current; }

nb_tape *nb__swap_current(nb_tape *t)
{
    nb_tape *prev = nb__t_current;
    nb__t_current = t;
    return prev;
}

int nb__set_grad_mode(bool enabled)
{
    int saved = t_no_grad;
    t_no_grad = enabled ? 0 : 1;
    return saved;
}

void nb__restore_grad_mode(int saved) { t_no_grad = saved; }

void nb_no_grad_begin(void) { t_no_grad++; }
void nb_no_grad_end(void)
{
    if (t_no_grad > 0) t_no_grad--;
}
int nb_grad_enabled(void) { return t_no_grad == 0; }

nb_tape *nb_tape_new(void)
{
    nb_tape *t = nb__calloc(sizeof *t);
    if (!t) return nb__fail(NB_ERR_NOMEM, "nb_tape_new: out of memory");
    return t;
}

static void clear_graph_leaves(nb_tape *t)
{
    for (size_t i = 0; i < t->n_graph_leaves; i++) {
        t->graph_leaves[i]->grad_graph = NULL;
        t->graph_leaves[i]->grad_tape = NULL;
    }
    t->n_graph_leaves = 0;
}

void nb_tape_free(nb_tape *t)
{
    if (!t) return;
    if (t->active) {
        nb__fail(NB_ERR_STATE, "nb_tape_free: the tape is still current (call nb_tape_end first)");
        return;
    }
    clear_graph_leaves(t);
    nb__arena_free(&t->arena);
    nb__free(t->nodes, t->cap_nodes * sizeof *t->nodes);
    nb__free(t->graph_leaves, t->cap_graph_leaves * sizeof *t->graph_leaves);
    nb__free(t, sizeof *t);
}

nb_status nb_tape_begin(nb_tape *t)
{
    if (!t) return nb__fail_status(NB_ERR_ARG, "nb_tape_begin: tape is NULL");
    if (t->active) return nb__fail_status(NB_ERR_STATE, "nb_tape_begin: the tape is already begun");
    t->prev = nb__t_current;
    t->active = 1;
    nb__t_current = t;
    return NB_OK;
}

nb_status nb_tape_end(nb_tape *t)
{
    if (!t) return nb__fail_status(NB_ERR_ARG, "nb_tape_end: tape is NULL");
    if (nb__t_current != t)
        return nb__fail_status(NB_ERR_STATE, "nb_tape_end: the tape is not the current one (begin/end "
                                             "must nest)");
    nb__t_current = t->prev;
    t->prev = NULL;
    t->active = 0;
    return NB_OK;
}

void nb_tape_reset(nb_tape *t)
{
    if (!t) return;
    clear_graph_leaves(t);
    t->n_nodes = 0;
    nb__arena_reset(&t->arena);
}

size_t nb_tape_node_count(const nb_tape *t) { return t ? t->n_nodes : 0; }
size_t nb_tape_bytes_used(const nb_tape *t) { return t ? t->arena.used : 0; }
size_t nb_tape_bytes_reserved(const nb_tape *t) { return t ? t->arena.reserved : 0; }

const char *nb_tape_node_op(const nb_tape *t, size_t i)
{
    return t && i < t->n_nodes ? nb__node_name(t->nodes[i]) : NULL;
}

nb_tensor *nb_tape_node_output(const nb_tape *t, size_t i)
{
    return t && i < t->n_nodes ? t->nodes[i]->out : NULL;
}

void *nb__tape_alloc(nb_tape *t, size_t size) { return nb__arena_alloc(&t->arena, size); }

void *nb_scratch(size_t bytes)
{
    if (!nb__t_current) return nb__fail(NB_ERR_STATE, "nb_scratch: no current tape (call nb_tape_begin first)");
    void *p = nb__tape_alloc(nb__t_current, bytes);
    if (!p) return nb__fail(NB_ERR_NOMEM, "nb_scratch: out of memory for %zu bytes", bytes);
    return p;
}

bool nb__tape_track_leaf(nb_tape *t, nb_tensor *leaf)
{
    if (leaf->grad_tape == t) return true;
    if (leaf->grad_tape) nb__tape_forget_leaf(leaf->grad_tape, leaf);
    if (t->n_graph_leaves == t->cap_graph_leaves) {
        size_t cap = t->cap_graph_leaves ? 2 * t->cap_graph_leaves : 16;
        nb_tensor **p = nb__realloc(t->graph_leaves, t->cap_graph_leaves * sizeof *p, cap * sizeof *p);
        if (!p) return false;
        t->graph_leaves = p;
        t->cap_graph_leaves = cap;
    }
    t->graph_leaves[t->n_graph_leaves++] = leaf;
    leaf->grad_tape = t;
    if (leaf->grad) leaf->grad->version++; /* a backward wrote the gradient (see nb_tensor_has_grad) */
    return true;
}

void nb__tape_forget_leaf(nb_tape *t, nb_tensor *leaf)
{
    for (size_t i = 0; i < t->n_graph_leaves; i++) {
        if (t->graph_leaves[i] == leaf) {
            t->graph_leaves[i] = t->graph_leaves[--t->n_graph_leaves];
            break;
        }
    }
    leaf->grad_graph = NULL;
    leaf->grad_tape = NULL;
}

static bool push_node(nb_tape *t, nb_node *n)
{
    if (t->n_nodes == t->cap_nodes) {
        size_t cap = t->cap_nodes ? 2 * t->cap_nodes : 256;
        nb_node **p = nb__realloc(t->nodes, t->cap_nodes * sizeof *p, cap * sizeof *p);
        if (!p) return false;
        t->nodes = p;
        t->cap_nodes = cap;
    }
    n->index = t->n_nodes;
    t->nodes[t->n_nodes++] = n;
    return true;
}

nb_tensor *nb__apply(const char *who, nb_op_id op, int n_in, nb_tensor *const *in, const nb_attrs *attrs,
                     nb_dtype dtype, int ndim, const int64_t *shape)
{
    const nb_opdef *def = &nb__ops[op];
    nb_tensor *out;
    void *view = op == NB_OP_VIEW ? in[0]->data : def->view ? def->view(in, attrs) : NULL;
    if (view) {
        /* the result shares its input's memory: a header only */
        nb_tape *tape = nb__current_tape();
        if (!tape) return nb__fail(NB_ERR_STATE, "%s: no current tape (call nb_tape_begin first)", who);
        out = nb__tape_alloc(tape, sizeof *out);
        if (!out) return nb__fail(NB_ERR_NOMEM, "%s: out of memory", who);
        memset(out, 0, sizeof *out);
        out->dtype = dtype;
        out->ndim = ndim;
        for (int i = 0; i < ndim; i++) out->shape[i] = shape[i];
        out->numel = nb__numel(ndim, shape);
        out->data = view;
        out->vp = in[0]->vp; /* an in-place change of the base is a change of the view */
        out->tape = tape;
    } else {
        nb_tape *tape = nb__t_current;
        if (!tape) return nb__fail(NB_ERR_STATE, "%s: no current tape (call nb_tape_begin first)", who);
        out = nb__tape_result(tape, who, dtype, ndim, shape);
        if (!out) return NULL;
        if (def->forward) {
            uint64_t errors = nb__error_count();
            def->forward(out, in, attrs);
            if (nb__error_count() != errors) return NULL;
        }
        if (nb__anomaly_on && !nb__anomaly_check(out, who)) return NULL;
    }

    bool record = false;
    if (t_no_grad == 0 && def->backward)
        for (int i = 0; i < n_in; i++)
            if (nb__needs_grad(in[i])) record = true;
    if (!record) return out;

    nb_tape *tape = out->tape;
    for (int i = 0; i < n_in; i++)
        if (in[i]->tape && in[i]->tape != tape && nb__needs_grad(in[i]))
            return nb__fail(NB_ERR_STATE, "%s: input %d %s was recorded on another tape than the current "
                                          "one; a graph cannot span tapes", who, i, NB_SHP(in[i]));
    nb_node *n = nb__tape_alloc(tape, sizeof *n + (size_t)n_in * (sizeof(nb_tensor *) + sizeof(uint32_t)));
    if (!n) return nb__fail(NB_ERR_NOMEM, "%s: out of memory recording a node", who);
    n->op = def;
    n->out = out;
    n->n_in = n_in;
    n->in = (nb_tensor **)(n + 1);
    n->in_version = (uint32_t *)(n->in + n_in);
    n->flags = 0;
    for (int i = 0; i < n_in; i++) {
        n->in[i] = in[i];
        n->in_version[i] = *in[i]->vp;
    }
    if (attrs)
        n->attrs = *attrs;
    else
        memset(&n->attrs, 0, sizeof n->attrs);
    if (!push_node(tape, n)) return nb__fail(NB_ERR_NOMEM, "%s: out of memory recording a node", who);
    out->node = n;
    out->flags |= NB_TF_REQUIRES_GRAD;
    return out;
}
