/* The tape: an arena for op results plus an append-only array of nodes in execution order. */
#include "internal.h"

#include <string.h>

_Thread_local nb_tape *nb__t_current = NULL;
static _Thread_local int t_no_grad = 0;

nb_tape *nb_tape_current(void) { return nb__t_current; }

bool nb__unwind_to(nb_tape *t)
{
    nb_tape *c = nb__t_current;
    if (c == t) return true;
    while (c && c != t && c->active) { /* begun by the user code, not ended: end it */
        nb_tape *prev = c->prev;
        c->prev = NULL;
        c->active = 0;
        c = prev;
    }
    nb__t_current = t;
    return false;
}

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

/* Let go of the tapes whose results t's nodes held. */
static void release_holds(nb_tape *t)
{
    for (size_t i = 0; i < t->n_holds; i++) __atomic_fetch_sub(&t->holds[i]->held, 1, __ATOMIC_ACQ_REL);
    t->n_holds = 0;
}

/* t records a node with an input of tape o: o cannot be freed until t is reset or freed. */
static bool hold_tape(nb_tape *t, nb_tape *o)
{
    for (size_t i = 0; i < t->n_holds; i++)
        if (t->holds[i] == o) return true;
    if (t->n_holds == t->cap_holds) {
        size_t cap = t->cap_holds ? 2 * t->cap_holds : 4;
        nb_tape **a = nb__realloc(t->holds, t->cap_holds * sizeof *a, cap * sizeof *a);
        if (!a) return false;
        t->holds = a;
        t->cap_holds = cap;
    }
    t->holds[t->n_holds++] = o;
    __atomic_fetch_add(&o->held, 1, __ATOMIC_ACQ_REL);
    return true;
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
        nb__fail(NB_ERR_STATE, "nb_tape_free: a backward or a custom op runs on this tape (called from a hook or "
                               "a custom op?)");
        return;
    }
    if (__atomic_load_n(&t->held, __ATOMIC_ACQUIRE)) {
        nb__fail(NB_ERR_STATE, "nb_tape_free: results of this tape are inputs of ops recorded on another tape "
                               "(reset or free that tape first)");
        return;
    }
    release_holds(t);
    nb__free(t->holds, t->cap_holds * sizeof *t->holds);
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
    if (t->busy)
        return nb__fail_status(NB_ERR_STATE, "nb_tape_begin: a backward or a custom op runs on this tape (called "
                                             "from a hook or a custom op?)");
    t->prev = nb__t_current;
    t->active = 1;
    nb__t_current = t;
    return NB_OK;
}

nb_status nb_tape_end(nb_tape *t)
{
    if (!t) return nb__fail_status(NB_ERR_ARG, "nb_tape_end: tape is NULL");
    if (t->busy)
        return nb__fail_status(NB_ERR_STATE, "nb_tape_end: a backward or a custom op runs on this tape (called "
                                             "from a hook or a custom op?)");
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
        nb__fail(NB_ERR_STATE, "nb_tape_reset: a backward or a custom op runs on this tape (called from a hook or "
                               "a custom op?)");
        return;
    }
    clear_graph_leaves(t);
    release_holds(t);
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

/* A new result header on tape with its data (in the header's slot when small, else in the arena), not
 * initialised; the element count is checked. Inline in nb__apply, the path of every op. */
static inline nb_tensor *tape_result(nb_tape *tape, const char *who, nb_dtype dt, int ndim, const int64_t *shape)
{
    /* the element count of a shape derived from valid inputs can still be too large (a product of
     * extents from different inputs, a zero-size input's other extents): bounded as for leaves */
    int64_t n = 1;
    if (ndim == 1 && (uint64_t)shape[0] <= INT64_MAX / 16) {
        n = shape[0]; /* the common cases first */
    } else if (ndim > 0) {
        bool empty = false;
        for (int i = 0; i < ndim; i++) {
            int64_t e = shape[i];
            if (e == 0) {
                empty = true;
                continue;
            }
            if (e < 0 || __builtin_mul_overflow(n, e, &n) || n > INT64_MAX / 16)
                return nb__fail(NB_ERR_SHAPE, "%s: result %s: too many elements", who, nb__shape_str(ndim, shape));
        }
        if (empty) n = 0;
    }
    nb_tensor *t = nb__tape_header(tape);
    size_t bytes = (size_t)n * nb__esize(dt);
    unsigned char *raw = !t ? NULL : bytes <= NB_INLINE_BYTES ? ((nb_hslot *)t)->data : nb__tape_alloc(tape, bytes);
    if (!raw) return nb__fail(NB_ERR_NOMEM, "%s: out of memory for %s %s", who, nb_dtype_name(dt),
                              nb__shape_str(ndim, shape));
    /* field by field: clearing the whole header costs more than the op itself on small tensors */
    t->dtype = dt;
    t->ndim = ndim;
    t->flags = 0;
    t->version = 0;
    t->vp = &t->version;
    t->numel = n;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = raw;
    t->tape = tape;
    t->node = NULL;
    t->name = NULL;
    t->hook = NULL;
    t->hook_user = NULL;
    t->post_hook = NULL;      /* and base, */
    t->post_hook_user = NULL; /* base_stamp: the same words */
    t->grad = t->grad_graph = NULL;
    t->stamp = tape->gen;
    return t;
}

nb_tensor *nb__tape_result(nb_tape *tape, const char *who, nb_dtype dt, int ndim, const int64_t *shape)
{
    return tape_result(tape, who, dt, ndim, shape);
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
    /* a view shares the lifetime of its input's data: a result of another tape is copied instead
     * (its reset would pull the data from under the view), a leaf's view remembers the leaf */
    if (view && (!in[0]->tape || in[0]->tape == nb__t_current)) {
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
        if (!in[0]->tape || (in[0]->flags & NB_TF_LEAF_DATA)) {
            out->flags = NB_TF_LEAF_DATA | (in[0]->flags & NB_TF_GRAD_BUFFER); /* a view of a .grad is one */
            out->stamp |= NB_STAMP_LEAF_DATA;
            out->base = in[0]->tape ? in[0]->base : in[0];
            out->base_stamp = in[0]->tape ? in[0]->base_stamp : in[0]->stamp;
        }
    } else {
        nb_tape *tape = nb__t_current;
        if (!tape) return nb__fail(NB_ERR_STATE, "%s: no current tape (call nb_tape_begin first)", who);
        out = tape_result(tape, who, dtype, ndim, shape);
        if (!out) return NULL;
        /* an empty result has nothing to compute (and its kernel could loop over the other extents of
         * a zero-size input, up to 2^59 of them) */
        if (def->forward && out->numel > 0) {
            uint64_t errors = nb__error_count();
            def->forward(out, in, attrs);
            if (nb__error_count() != errors) return NULL;
        }
        if (nb__anomaly_on() && !nb__anomaly_check(out, who)) return NULL;
    }

    if (!any_grad || t_no_grad != 0 || !def->backward) return out;

    nb_tape *tape = out->tape;
    for (int i = 0; i < n_in; i++) {
        if (!in[i]->tape || in[i]->tape == tape) continue;
        if (nb__needs_grad(in[i]))
            return nb__fail(NB_ERR_STATE, "%s: input %d %s was recorded on another tape than the current "
                                          "one; a graph cannot span tapes", who, i, NB_SHP(in[i]));
        /* a constant of another tape: the node holds that tape (its free is refused meanwhile) */
        if (!hold_tape(tape, in[i]->tape)) return nb__fail(NB_ERR_NOMEM, "%s: out of memory recording a node", who);
    }
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
