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

/* ---- op result headers: two regions of fixed-size slots, one per parity of the generation -------- */

struct nb_hslab {
    nb_hslab *next;
    size_t n;       /* slots */
    nb_hslot *slot; /* n slots, 64-byte aligned, inside this allocation */
};

static size_t hslab_bytes(size_t n) { return sizeof(nb_hslab) + 64 + n * sizeof(nb_hslot); }

/* Append a slab of n slots to region h. */
static bool hregion_grow(nb_hregion *h, size_t n)
{
    nb_hslab *s = nb__malloc(hslab_bytes(n));
    if (!s) return false;
    s->next = NULL;
    s->n = n;
    s->slot = (nb_hslot *)(((uintptr_t)(s + 1) + 63) & ~(uintptr_t)63);
    nb_hslab **end = &h->head;
    while (*end) end = &(*end)->next;
    *end = s;
    h->slots += n;
    return true;
}

/* Start filling h from its first slot again. */
static void hregion_rewind(nb_hregion *h)
{
    h->cur = h->head;
    h->next = h->cur ? h->cur->slot : NULL;
    h->left = h->cur ? h->cur->n : 0;
}

/* Slots of h in use. */
static size_t hregion_used(const nb_hregion *h)
{
    size_t used = 0;
    for (const nb_hslab *s = h->head; s && s != h->cur; s = s->next) used += s->n;
    return h->cur ? used + (h->cur->n - h->left) : 0;
}

static void hregion_free(nb_hregion *h)
{
    for (nb_hslab *s = h->head, *next; s; s = next) {
        next = s->next;
        nb__free(s, hslab_bytes(s->n));
    }
    *h = (nb_hregion){0};
}

nb_tensor *nb__tape_header_slow(nb_tape *t)
{
    nb_hregion *h = t->hcur;
    /* the next slab, or a new one as large as the region so far (at least 64 slots) */
    if (!h->cur || !h->cur->next) {
        size_t n = h->slots < 64 ? 64 : h->slots;
        if (!hregion_grow(h, n)) return NULL;
        if (!h->cur) {
            hregion_rewind(h);
        } else {
            h->cur = h->cur->next;
            h->next = h->cur->slot;
            h->left = h->cur->n;
        }
    } else {
        h->cur = h->cur->next;
        h->next = h->cur->slot;
        h->left = h->cur->n;
    }
    h->left--;
    return &(h->next++)->t;
}

nb_tape *nb_tape_new(void)
{
    nb_tape *t = nb__calloc(sizeof *t);
    if (!t) return nb__fail(NB_ERR_NOMEM, "nb_tape_new: out of memory");
    t->gen = 1;
    t->hcur = &t->hdr[1];
    nb__pool_tape_count(1);
    return t;
}

static void clear_graph_leaves(nb_tape *t)
{
    for (size_t i = 0; i < t->n_graph_leaves; i++) {
        t->graph_leaves[i]->grad_graph = NULL;
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
    if (t->busy) {
        nb__fail(NB_ERR_STATE, "nb_tape_free: a backward is running on this tape (called from a hook?)");
        return;
    }
    clear_graph_leaves(t);
    nb__arena_free(&t->arena);
    hregion_free(&t->hdr[0]);
    hregion_free(&t->hdr[1]);
    nb__free(t->nodes, t->cap_nodes * sizeof *t->nodes);
    nb__free(t->graph_leaves, t->cap_graph_leaves * sizeof *t->graph_leaves);
    nb__free(t, sizeof *t);
    nb__pool_tape_count(-1);
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
    if (t->busy) {
        nb__fail(NB_ERR_STATE, "nb_tape_reset: a backward is running on this tape (called from a hook?)");
        return;
    }
    clear_graph_leaves(t);
    t->n_nodes = 0;
    nb__arena_reset(&t->arena);
    /* the new generation fills the other header region; the one just used keeps its headers (and
     * so their stamps) until the reset after next. The other region is made as large as this one
     * now, so that a steady-state step allocates nothing. */
    nb_hregion *used = t->hcur;
    t->gen++;
    t->hcur = &t->hdr[t->gen & 1];
    size_t want = hregion_used(used);
    if (t->hcur->slots < want) (void)hregion_grow(t->hcur, want - t->hcur->slots);
    hregion_rewind(t->hcur);
}

size_t nb_tape_node_count(const nb_tape *t) { return t ? t->n_nodes : 0; }
size_t nb_tape_bytes_used(const nb_tape *t) { return t ? t->arena.used : 0; }
size_t nb_tape_bytes_reserved(const nb_tape *t) { return t ? t->arena.reserved : 0; }

uint64_t nb_tape_generation(const nb_tape *t) { return t ? t->gen : 0; }

const char *nb_tape_node_op(const nb_tape *t, size_t i)
{
    return t && i < t->n_nodes ? nb__node_name(t->nodes[i]) : NULL;
}

nb_tensor *nb_tape_node_output(const nb_tape *t, size_t i)
{
    return t && i < t->n_nodes ? t->nodes[i]->out : NULL;
}


void *nb_scratch(size_t bytes)
{
    if (!nb__t_current) return nb__fail(NB_ERR_STATE, "nb_scratch: no current tape (call nb_tape_begin first)");
    void *p = nb__tape_alloc(nb__t_current, bytes);
    if (!p) return nb__fail(NB_ERR_NOMEM, "nb_scratch: out of memory for %zu bytes", bytes);
    return p;
}

bool nb__tape_track_leaf(nb_tape *t, nb_tensor *leaf)
{
    nb_tape *old = nb__grad_tape(leaf);
    if (old == t) return true;
    if (old) nb__tape_forget_leaf(old, leaf);
    if (t->n_graph_leaves == t->cap_graph_leaves) {
        size_t cap = t->cap_graph_leaves ? 2 * t->cap_graph_leaves : 16;
        nb_tensor **p = nb__realloc(t->graph_leaves, t->cap_graph_leaves * sizeof *p, cap * sizeof *p);
        if (!p) return false;
        t->graph_leaves = p;
        t->cap_graph_leaves = cap;
    }
    t->graph_leaves[t->n_graph_leaves++] = leaf;
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
    bool any_grad = false;
    for (int i = 0; i < n_in; i++) {
        if (!nb__usable(in[i])) return nb__stale_fail(who, in[i]), NULL;
        any_grad |= nb__needs_grad(in[i]);
    }
    nb_tensor *out;
    void *view = op == NB_OP_VIEW ? in[0]->data : def->view ? def->view(in, attrs) : NULL;
    if (view) {
        /* the result shares its input's memory: a header only */
        nb_tape *tape = nb__current_tape();
        if (!tape) return nb__fail(NB_ERR_STATE, "%s: no current tape (call nb_tape_begin first)", who);
        out = nb__tape_header(tape);
        if (!out) return nb__fail(NB_ERR_NOMEM, "%s: out of memory", who);
        memset(out, 0, sizeof *out);
        out->stamp = tape->gen;
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
        /* an empty result has nothing to compute (and its kernel could loop over the other extents of
         * a zero-size input, up to 2^59 of them) */
        if (def->forward && out->numel > 0) {
            uint64_t errors = nb__error_count();
            def->forward(out, in, attrs);
            if (nb__error_count() != errors) return NULL;
        }
        if (nb__anomaly_on && !nb__anomaly_check(out, who)) return NULL;
    }

    if (!any_grad || t_no_grad != 0 || !def->backward) return out;

    nb_tape *tape = out->tape;
    for (int i = 0; i < n_in; i++)
        if (in[i]->tape && in[i]->tape != tape && nb__needs_grad(in[i]))
            return nb__fail(NB_ERR_STATE, "%s: input %d %s was recorded on another tape than the current "
                                          "one; a graph cannot span tapes", who, i, NB_SHP(in[i]));
    nb_node *n = nb__tape_alloc(tape, sizeof *n + (size_t)n_in * (sizeof(nb_tensor *) + sizeof(uint64_t) +
                                                                sizeof(uint32_t)));
    if (!n) return nb__fail(NB_ERR_NOMEM, "%s: out of memory recording a node", who);
    n->op = def;
    n->out = out;
    n->n_in = n_in;
    n->in = (nb_tensor **)(n + 1);
    n->in_stamp = (uint64_t *)(n->in + n_in);
    n->in_version = (uint32_t *)(n->in_stamp + n_in);
    n->flags = 0;
    for (int i = 0; i < n_in; i++) {
        n->in[i] = in[i];
        n->in_stamp[i] = in[i]->stamp;
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
