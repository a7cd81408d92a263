/* The backward engine. One pass marks the nodes that lead to the output (a reverse sweep over the
 * append-only tape, no recursion); a second sweep calls each node's backward rule, which is written
 * with nabla ops, so with NB_CREATE_GRAPH the backward is itself recorded. Gradients are summed per
 * tensor within a pass (op results by node index, leaves by a per-pass slot), then leaf gradients are
 * accumulated into .grad (nb_backward) or handed back (nb_grad). */
#include "internal.h"

#include <string.h>


/* All state of one pass lives here, in arrays on the tape's arena: nothing is written into a tensor
 * (leaves may be shared by passes on other threads, or seen again by a later pass on this one). */
typedef struct pass {
    const char *who;
    nb_tape *tape;
    unsigned flags;
    size_t n;             /* nodes considered: 0..out->node->index */
    uint8_t *need;        /* [n] NEED: leads to the output; LAST: the last use of some leaf */
    nb_tensor **g;        /* [n] gradient of each node's output */
    uint8_t *owned;       /* [n] g[i] was made here by accumulation, safe to add into in place */
    struct leaf_slot *lf; /* [n_leaf] the leaves reached, in order of first encounter in mark */
    int64_t n_leaf, n_leaf_cap;
    struct map_entry *map; /* [map_cap] open addressing, leaf pointer -> slot (key NULL: empty); used
                              by mark only: the sweep reads the slots mark wrote into lsl */
    size_t map_cap;        /* a power of two, at least twice n_leaf */
    int64_t hit;           /* the slot found last */
    int32_t *lsoff;        /* [n] for a needed node with leaf inputs: 1 + where its inputs' slots start
                              in lsl (0: none) */
    int64_t *lsl;          /* [n_lsl] leaf slot of input j of such a node at lsl[lsoff[i] - 1 + j] (-1:
                              not a leaf that needs a gradient) */
    size_t n_lsl, cap_lsl;
    bool reads_grad;       /* a node reads some leaf's .grad (NB_TF_GRAD_BUFFER), which the pass writes */
    bool recheck;          /* something may have changed the graph since mark: user code ran (a hook, a
                              custom op's backward), or a .grad that a node reads was written. Every
                              later node's inputs are checked again before its rule reads them */
    bool store;            /* nb_backward: leaves' totals go into .grad (nb_grad: handed back) */
    struct leaf_slot *direct; /* the leaf whose .grad the running rule writes itself (nb__sink_grad),
                                 its gradient lock held until the rule returns; NULL: none */
} pass;

typedef struct map_entry {
    const nb_tensor *key;
    int64_t slot;
} map_entry;

enum { NEED = 1, LAST = 2 };

/* A leaf's gradient in one pass. */
typedef struct leaf_slot {
    nb_tensor *leaf;
    uint64_t stamp; /* the leaf's stamp when mark reached it (a hook may free it during the pass) */
    nb_tensor *g;  /* the pass's total so far */
    size_t last;   /* the lowest index of a node using it: after that node its total is final */
    uint8_t owned; /* g was made here by accumulation */
    uint8_t done;  /* finished: hooks run, stored */
    uint8_t direct; /* the total was written straight into .grad by its one contribution (nb__sink_grad) */
} leaf_slot;

/* Sum g into *slot. */
static bool accumulate(pass *p, nb_tensor **slot, uint8_t *owned, nb_tensor *g)
{
    if (!*slot) {
        *slot = g;
        *owned = 0;
        return true;
    }
    if (*owned && !(p->flags & NB_CREATE_GRAPH)) return nb__add_inplace(*slot, g) == NB_OK;
    nb_tensor *s = nb_add(*slot, g);
    if (!s) return false;
    *slot = s;
    *owned = 1;
    return true;
}

static inline size_t map_home(const pass *p, const nb_tensor *leaf)
{
    uint64_t h = (uint64_t)(uintptr_t)leaf * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h >> 40) & (p->map_cap - 1);
}

/* The slot of leaf in this pass, or -1 if the pass has none. */
static inline int64_t find_leaf(const pass *p, const nb_tensor *leaf)
{
    if (!p->map_cap) return -1;
    for (size_t i = map_home(p, leaf);; i = (i + 1) & (p->map_cap - 1)) {
        const map_entry *e = &p->map[i];
        if (e->key == leaf) return e->slot;
        if (!e->key) return -1;
    }
}

static void map_put(pass *p, int64_t slot)
{
    size_t i = map_home(p, p->lf[slot].leaf);
    while (p->map[i].key) i = (i + 1) & (p->map_cap - 1);
    p->map[i] = (map_entry){p->lf[slot].leaf, slot};
}

/* The slot of leaf in this pass, made on first use (mark makes every slot, before any rule runs; the
 * arrays grow in the arena); -1 when out of memory. */
static inline int64_t slot_of_leaf(pass *p, nb_tensor *leaf)
{
    if (p->n_leaf && p->lf[p->hit].leaf == leaf) return p->hit; /* runs of one leaf are common */
    int64_t s = find_leaf(p, leaf);
    if (s >= 0) return p->hit = s;
    if (p->n_leaf == p->n_leaf_cap) {
        int64_t cap = p->n_leaf_cap ? 2 * p->n_leaf_cap : 16;
        leaf_slot *a = nb__tape_alloc(p->tape, (size_t)cap * sizeof *a);
        map_entry *map = nb__tape_alloc(p->tape, (size_t)(2 * cap) * sizeof *map);
        if (!a || !map) {
            nb__fail(NB_ERR_NOMEM, "%s: out of memory", p->who);
            return -1;
        }
        if (p->n_leaf) memcpy(a, p->lf, (size_t)p->n_leaf * sizeof *a);
        memset(map, 0, (size_t)(2 * cap) * sizeof *map);
        p->lf = a;
        p->n_leaf_cap = cap;
        p->map = map;
        p->map_cap = (size_t)(2 * cap);
        for (int64_t k = 0; k < p->n_leaf; k++) map_put(p, k);
    }
    p->lf[p->n_leaf] = (leaf_slot){.leaf = leaf, .stamp = leaf->stamp, .last = SIZE_MAX};
    map_put(p, p->n_leaf);
    p->hit = p->n_leaf;
    return p->n_leaf++;
}

_Thread_local bool *nb__t_recheck = NULL;

struct nb_grad_sink {
    pass *p;
    const nb_node *nd;
};

/* The accumulation slot of tensor x in this pass, and whether this pass owns its tensor. */
/* The leaf slot mark gave input j of node nd (a leaf that needs a gradient), -1 if none. */
static inline int64_t leaf_slot_of_input(const pass *p, const nb_node *nd, int j)
{
    int32_t off = p->lsoff[nd->index];
    return off ? p->lsl[off - 1 + j] : -1;
}

/* The accumulation slot of input j of node nd in this pass, and whether this pass owns its tensor. */
static void slot_of(pass *p, const nb_node *nd, int j, nb_tensor ***slot, uint8_t **owned)
{
    nb_tensor *x = nd->in[j];
    if (x->node && x->tape == p->tape) {
        *slot = &p->g[x->node->index];
        *owned = &p->owned[x->node->index];
    } else {
        int64_t s = leaf_slot_of_input(p, nd, j);
        *slot = s >= 0 ? &p->lf[s].g : NULL;
        *owned = s >= 0 ? &p->lf[s].owned : NULL;
    }
}

nb_tensor *nb__sink_slot(nb_grad_sink *sink, int i, bool *fresh)
{
    pass *p = sink->p;
    nb_tensor *x = sink->nd->in[i], **slot;
    uint8_t *owned;
    slot_of(p, sink->nd, i, &slot, &owned);
    if (fresh) *fresh = false;
    if (!slot) return nb__fail(NB_ERR_STATE, "%s: no gradient slot", p->who);
    if (!*slot) {
        if (fresh) {
            *slot = nb__tape_result(p->tape, p->who, x->dtype, x->ndim, x->shape);
            *fresh = *slot != NULL;
        } else {
            *slot = nb_zeros_like(x);
        }
        *owned = 1;
    } else if (!*owned) {
        /* the first contribution may alias another tensor: make a copy this pass may write into */
        *slot = nb_affine(*slot, 1.0, 0.0);
        *owned = 1;
    }
    return *slot;
}

/* Whether input i of node nd, a leaf with slot ls, may take its gradient straight into its .grad: an
 * nb_backward without a graph, where this node's contribution is the leaf's whole total in the pass
 * (its last use, nothing accumulated before, the leaf once among the node's inputs), so that writing it
 * into .grad under the lock is what store_leaf_grad would do with it; no tensor hook (it must see the
 * total before .grad does), no node reading a .grad (mark's reads_grad: it would see the buffer change
 * before the leaf is finished), and no other leaf's lock held by this rule. */
static bool can_write_grad(const pass *p, const nb_node *nd, int i, const leaf_slot *ls)
{
    const nb_tensor *x = nd->in[i];
    if (!p->store || p->reads_grad || p->direct || (p->flags & NB_CREATE_GRAPH)) return false;
    if (x->tape || !(x->flags & NB_TF_LEAF) || x->hook || x->stamp != ls->stamp) return false;
    if (ls->g || ls->done || ls->last != nd->index) return false;
    for (int k = 0; k < nd->n_in; k++)
        if (k != i && nd->in[k] == x) return false;
    return true;
}

nb_tensor *nb__sink_grad(nb_grad_sink *sink, int i, bool *fresh)
{
    pass *p = sink->p;
    const nb_node *nd = sink->nd;
    nb_tensor *x = nd->in[i];
    int64_t s = x->tape ? -1 : leaf_slot_of_input(p, nd, i);
    if (s < 0 || !can_write_grad(p, nd, i, &p->lf[s])) return nb__sink_slot(sink, i, fresh);
    nb_tensor *gb = nb__grad_buffer(x); /* (takes the lock itself; may allocate, on the first backward) */
    if (!gb) return NULL;
    nb__grad_lock(x); /* released by the sweep when the rule returns (end_direct) */
    /* a graph-less backward after a create-graph one: the values move on, the graph is stale */
    if (nb__grad_tape(x)) nb__tape_forget_leaf(nb__grad_tape(x), x);
    p->direct = &p->lf[s];
    *fresh = false; /* .grad always holds values: zero_grad clears it, backwards add to it */
    return gb;
}

/* After the rule of a node that wrote a leaf's .grad itself: the write counts as the leaf's store
 * (version bumped, as nb__add_inplace does; finish_leaf runs the post-accumulate hook) unless the rule
 * declined the node (`into` false: it wrote nothing); the lock is released either way. */
static void end_direct(pass *p, bool into)
{
    leaf_slot *ls = p->direct;
    p->direct = NULL;
    if (into) {
        ls->leaf->grad->version++;
        ls->g = ls->leaf->grad;
        ls->direct = 1;
    }
    nb__grad_unlock(ls->leaf);
}

bool nb__sink_add(nb_grad_sink *sink, int i, nb_tensor *g)
{
    nb_tensor **slot;
    uint8_t *owned;
    slot_of(sink->p, sink->nd, i, &slot, &owned);
    return slot && accumulate(sink->p, slot, owned, g);
}

/* After user code run by the pass: it must leave the pass's tape current (a tape begun and not ended
 * in a hook would stay begun forever, its nb_tape_end refused); false, with an error, the tapes it left
 * begun ended and the pass's tape current again, if it did not. */
static bool same_current(const pass *p)
{
    if (nb__unwind_to(p->tape)) return true;
    nb__fail(NB_ERR_STATE, "%s: a hook or a custom op changed the current tape (nb_tape_begin without "
             "nb_tape_end?)", p->who);
    return false;
}

/* Call t's gradient hook on g; NULL (with an error recorded) if it fails or returns a bad tensor. */
static nb_tensor *run_hook(pass *p, nb_tensor *t, nb_tensor *g)
{
    uint64_t errors = nb__error_count();
    nb_tensor *r = t->hook(g, t->hook_user);
    p->recheck = true;
    if (!same_current(p)) return NULL;
    if (!nb__usable(t))
        return nb__fail(NB_ERR_STATE, "%s: the gradient hook of a leaf freed it during the backward", p->who);
    if (!r) {
        if (nb__error_count() == errors)
            nb__fail(NB_ERR_STATE, "%s: the gradient hook of %s returned NULL", p->who, NB_SHP(t));
        return NULL;
    }
    if (!nb__live(p->who, r)) return NULL;
    if (r->dtype != t->dtype || !nb__same_shape(r, t))
        return nb__fail(NB_ERR_SHAPE, "%s: the gradient hook of %s %s returned %s %s", p->who,
                        nb_dtype_name(t->dtype), NB_SHP(t), nb_dtype_name(r->dtype), NB_SHP(r));
    /* a tensor of another tape, or a leaf, enters as a copy on the pass's tape: gradients handed back
     * live as long as the pass's tape, and the caller's tensor is never an accumulation slot */
    if (r->tape != p->tape) r = nb_affine(r, 1.0, 0.0);
    return r;
}

static bool anomaly_in_backward(pass *p, const nb_node *nd, int j, const nb_tensor *gx)
{
    for (int64_t k = 0; k < gx->numel; k++) {
        double v = nb__get(gx, k);
        if (v == v && v - v == 0) continue; /* finite */
        nb__fail(NB_ERR_NUMERIC, "%s: anomaly: the backward of %s (node %zu on the tape) produced %s at "
                 "element %lld of the gradient of its input %d %s", p->who, nb__node_name(nd), nd->index,
                 v != v ? "NaN" : "infinity", (long long)k, j, NB_SHP(gx));
        return false;
    }
    return true;
}

/* Why input x (recorded with stamp `stamp`) of a node can no longer be read, or NULL if it can: a
 * leaf freed since (its pool header has stamp 0, or a new leaf's serial), a result of another tape
 * that was reset since (its header keeps the old generation, or holds a newer result), or a view of
 * a leaf freed since (the view's base stamp no longer matches). */
static inline const char *input_gone(const nb_tensor *x, uint64_t stamp)
{
    if (x->stamp == stamp && nb__usable(x)) return NULL;
    if (!x->tape) return "was freed";
    return x->stamp == stamp && stamp == (x->tape->gen | NB_STAMP_LEAF_DATA) ? "is a view of a leaf that was freed"
                                                                           : "belongs to a tape that was reset";
}

/* Mark the nodes leading to out, check that each can still be differentiated (not released, inputs
 * alive and unchanged), and give every leaf reached a slot with the index of its last use. */
static nb_status mark(pass *p, nb_tensor *out)
{
    bool reads_grad = false;
    p->need[out->node->index] = NEED;
    for (size_t i = p->n; i-- > 0;) {
        if (!p->need[i]) continue;
        const nb_node *nd = p->tape->nodes[i];
        if (nd->flags & NB_NODE_RELEASED)
            return nb__fail_status(NB_ERR_STATE, "%s: node %zu (%s) was released by an earlier backward; "
                                   "pass NB_RETAIN_GRAPH to that backward to run another", p->who, i,
                                   nb__node_name(nd));
        for (int j = 0; j < nd->n_in; j++) {
            nb_tensor *x = nd->in[j];
            /* a result of this tape is of its current generation (a stale one is refused when an op
             * is recorded), but a view of a leaf goes with its leaf; anything else is checked against
             * the stamp the node recorded */
            const char *gone = NULL;
            if (x->tape != p->tape || (x->flags & NB_TF_LEAF_DATA)) {
                gone = input_gone(x, nd->in_stamp[j]);
                reads_grad |= (x->flags & NB_TF_GRAD_BUFFER) != 0; /* some leaf's .grad, or a view of it */
            }
            if (gone)
                return nb__fail_status(NB_ERR_STATE, "%s: input %d of node %zu (%s) %s after it was "
                                       "recorded", p->who, j, i, nb__node_name(nd), gone);
            if (*x->vp != nd->in_version[j])
                return nb__fail_status(NB_ERR_STATE, "%s: input %d %s of node %zu (%s) was modified in "
                                       "place after it was recorded", p->who, j, NB_SHP(x), i,
                                       nb__node_name(nd));
            if (x->tape == p->tape) {
                if (nb__needs_grad(x)) p->need[x->node->index] |= NEED;
                continue;
            }
            /* a leaf, or a constant of another tape: its entry in the node's row of leaf slots is its
             * slot, or -1 (entries for results of this tape are never read) */
            if (nb__needs_grad(x)) {
                int64_t s = slot_of_leaf(p, x);
                if (s < 0) return NB_ERR_NOMEM;
                p->lf[s].last = i;
                if (!p->lsoff[i]) {
                    /* this node's row of leaf slots, for the sweep */
                    if (p->n_lsl + (size_t)nd->n_in > p->cap_lsl) {
                        size_t cap = p->cap_lsl ? 2 * p->cap_lsl + (size_t)nd->n_in : 2 * p->n + (size_t)nd->n_in;
                        int64_t *a = nb__tape_alloc(p->tape, cap * sizeof *a);
                        if (!a || cap > INT32_MAX) return nb__fail_status(NB_ERR_NOMEM, "%s: out of memory", p->who);
                        if (p->n_lsl) memcpy(a, p->lsl, p->n_lsl * sizeof *a);
                        p->lsl = a;
                        p->cap_lsl = cap;
                    }
                    p->lsoff[i] = (int32_t)p->n_lsl + 1;
                    for (int k = 0; k < j; k++) p->lsl[p->n_lsl + (size_t)k] = -1;
                    p->n_lsl += (size_t)nd->n_in;
                }
                p->lsl[p->lsoff[i] - 1 + j] = s;
            } else if (p->lsoff[i]) {
                p->lsl[p->lsoff[i] - 1 + j] = -1;
            }
        }
    }
    for (int64_t s = 0; s < p->n_leaf; s++) p->need[p->lf[s].last] |= LAST;
    p->reads_grad = reads_grad;
    return NB_OK;
}

/* Store a pass's gradient g of leaf into its .grad. */
static nb_status store_leaf_grad(pass *p, nb_tensor *leaf, nb_tensor *g);

/* A leaf of the pass freed by user code that ran during it. */
static nb_status leaf_freed(const pass *p)
{
    return nb__fail_status(NB_ERR_STATE, "%s: a leaf that needs a gradient was freed during the backward "
                           "(by a hook or a custom op?)", p->who);
}

/* Leaf slot s has its pass total: run its gradient hook, and for nb_backward add the total into
 * .grad and call its post-accumulate hook. */
static nb_status finish_leaf(pass *p, leaf_slot *ls, bool store)
{
    ls->done = 1;
    nb_tensor *leaf = ls->leaf;
    if (!ls->g) return NB_OK;
    if (leaf->stamp != ls->stamp) return leaf_freed(p);
    nb_status st = NB_OK;
    if (!ls->direct) {
        if (leaf->hook && !(ls->g = run_hook(p, leaf, ls->g))) return nb_error_code();
        if (!store) return NB_OK;
        st = store_leaf_grad(p, leaf, ls->g);
        if (p->reads_grad) p->recheck = true; /* a node may read the .grad just written */
    } /* else its rule wrote the total into .grad already (nb__sink_grad: no hook, nb_backward) */
    if (st != NB_OK || !leaf->post_hook) return st;
    uint64_t errors = nb__error_count();
    p->recheck = true;
    st = leaf->post_hook(leaf, leaf->post_hook_user);
    if (!same_current(p)) return NB_ERR_STATE;
    if (st == NB_OK) return NB_OK;
    if (nb__error_count() == errors)
        nb__fail(st, "%s: the post-accumulate hook of leaf %s failed (%s)", p->who, NB_SHP(leaf),
                 nb_status_name(st));
    return nb_error_code() ? nb_error_code() : st;
}

/* Finish the leaves whose last use is node nd. */
static nb_status finish_leaves_of(pass *p, const nb_node *nd, bool store)
{
    for (int j = 0; j < nd->n_in; j++) {
        nb_tensor *x = nd->in[j];
        if (x->tape == p->tape) continue;
        int64_t s = leaf_slot_of_input(p, nd, j);
        if (s < 0) continue;
        leaf_slot *ls = &p->lf[s];
        if (ls->done || ls->last != nd->index) continue;
        nb_status st = finish_leaf(p, ls, store);
        if (st != NB_OK) return st;
    }
    return NB_OK;
}

/* Node nd's inputs, checked again as mark checked them, before its rule reads them: user code that ran
 * during the pass (a hook, a custom op's backward) may have freed a leaf or a view's leaf, reset
 * another tape, changed a tensor in place or switched a leaf's requires_grad; the pass itself may have
 * written a .grad that the node reads. */
static nb_status recheck(const pass *p, const nb_node *nd)
{
    for (int j = 0; j < nd->n_in; j++) {
        const nb_tensor *x = nd->in[j];
        const char *gone = x->tape == p->tape && !(x->flags & NB_TF_LEAF_DATA) ? NULL : input_gone(x, nd->in_stamp[j]);
        if (gone)
            return nb__fail_status(NB_ERR_STATE, "%s: input %d of node %zu (%s) %s during the backward (by a "
                                   "hook or a custom op?)", p->who, j, nd->index, nb__node_name(nd), gone);
        if (*x->vp != nd->in_version[j])
            return nb__fail_status(NB_ERR_STATE, "%s: input %d %s of node %zu (%s) was modified in place during "
                                   "the backward (a .grad the backward wrote, or a hook?)", p->who, j, NB_SHP(x),
                                   nd->index, nb__node_name(nd));
        if (x->tape != p->tape && nb__needs_grad(x) != (leaf_slot_of_input(p, nd, j) >= 0))
            return nb__fail_status(NB_ERR_STATE, "%s: input %d %s of node %zu (%s): its requires_grad changed "
                                   "during the backward (by a hook?)", p->who, j, NB_SHP(x), nd->index,
                                   nb__node_name(nd));
    }
    return NB_OK;
}

static nb_status sweep(pass *p, size_t top, bool store)
{
    nb_tensor *gin_small[8] = {NULL}; /* rules set the entries they fill; each is read once and cleared */
    for (size_t i = top + 1; i-- > 0;) {
        if (!p->need[i]) continue;
        /* read the node array afresh: rules recording under NB_CREATE_GRAPH may grow (move) it */
        nb_node *nd = p->tape->nodes[i];
        if (!p->g[i]) {
            nb_status st = p->need[i] & LAST ? finish_leaves_of(p, nd, store) : NB_OK;
            if (st != NB_OK) return st;
            continue;
        }
        nb_tensor **gin = gin_small;
        if (nd->n_in > 8) {
            gin = nb__tape_alloc(p->tape, (size_t)nd->n_in * sizeof *gin);
            if (!gin) return nb__fail_status(NB_ERR_NOMEM, "%s: out of memory", p->who);
            memset(gin, 0, (size_t)nd->n_in * sizeof *gin);
        }
        nb_tensor *g = p->g[i];
        if (nd->out->hook && !(g = run_hook(p, nd->out, g))) return nb_error_code();
        if (p->recheck) {
            nb_status st = recheck(p, nd);
            if (st != NB_OK) return st;
        }
        uint64_t errors = nb__error_count();
        nb__in_backward_of = nd;
        bool into = false;
        if (nd->op->backward_into && !(p->flags & NB_CREATE_GRAPH) && !nb__anomaly_on()) {
            nb_grad_sink sink = {p, nd};
            into = nd->op->backward_into(nd, g, &sink);
        }
        if (p->direct) end_direct(p, into);
        if (!into) nd->op->backward(nd, g, gin); /* a custom op's sets p->recheck (nb__t_recheck) */
        nb__in_backward_of = NULL;
        if (p->recheck && !same_current(p)) return NB_ERR_STATE;
        if (nb__error_count() != errors) return nb_error_code();
        for (int j = 0; j < nd->n_in && !into; j++) {
            nb_tensor *x = nd->in[j], *gx = gin[j];
            gin[j] = NULL; /* for the next node */
            /* the inputs that get a gradient are those mark gave a slot (results of this tape that
             * need one, and leaves with a slot in the node's row) */
            if (!gx || !nb__needs_grad(x)) continue;
            if (nb__anomaly_on() && !anomaly_in_backward(p, nd, j, gx)) return nb_error_code();
            if (gx->dtype != x->dtype || !nb__same_shape(gx, x))
                return nb__fail_status(NB_ERR_STATE, "%s: backward of %s (node %zu) gave %s %s for input "
                                       "%d of %s %s", p->who, nb__node_name(nd), i, nb_dtype_name(gx->dtype),
                                       NB_SHP(gx), j, nb_dtype_name(x->dtype), NB_SHP(x));
            nb_tensor **slot;
            uint8_t *owned;
            slot_of(p, nd, j, &slot, &owned);
            if (!slot)
                return nb__fail_status(NB_ERR_STATE, "%s: input %d %s of node %zu (%s) has no gradient slot "
                                       "(its requires_grad changed during the backward?)", p->who, j, NB_SHP(x),
                                       i, nb__node_name(nd));
            if (!accumulate(p, slot, owned, gx)) return nb_error_code() ? nb_error_code() : NB_ERR_NOMEM;
        }
        if (!(p->flags & NB_RETAIN_GRAPH)) nd->flags |= NB_NODE_RELEASED;
        nb_status st = p->need[i] & LAST ? finish_leaves_of(p, nd, store) : NB_OK;
        if (st != NB_OK) return st;
    }
    return NB_OK;
}

/* Add a pass's gradient g of leaf into its .grad. Without a graph the addition holds the leaf's
 * gradient lock (no user code runs under it): backwards on other threads that share the leaf add
 * theirs whole, one at a time. */
static nb_status store_leaf_grad(pass *p, nb_tensor *leaf, nb_tensor *g)
{
    if (!nb__grad_buffer(leaf)) return nb_error_code();
    if (!(p->flags & NB_CREATE_GRAPH)) {
        nb__grad_lock(leaf);
        /* a graph-less backward after a create-graph one: the values move on, the graph is stale */
        if (nb__grad_tape(leaf)) nb__tape_forget_leaf(nb__grad_tape(leaf), leaf);
        nb_status st = nb__add_inplace(leaf->grad, g);
        nb__grad_unlock(leaf);
        return st;
    }
    /* (create-graph backwards on a leaf: one thread at a time) */
    /* a differentiable gradient from another tape enters as its values */
    nb_tensor *prev = nb__grad_tape(leaf) == p->tape ? leaf->grad_graph : NULL;
    nb_tensor *sum = g;
    if (prev) {
        sum = nb_add(prev, g);
    } else {
        /* earlier, graph-less contributions enter as a constant copy */
        bool any = false;
        for (int64_t i = 0; i < leaf->grad->numel && !any; i++) any = nb__get(leaf->grad, i) != 0;
        if (any) sum = nb_add(nb_constant(leaf->dtype, leaf->ndim, leaf->shape, leaf->grad->data), g);
    }
    /* the differentiable gradient is a result of this tape (the tape lists the leaf to clear it) */
    if (sum && sum->tape != p->tape) sum = nb_affine(sum, 1.0, 0.0);
    if (!sum || !nb__tape_track_leaf(p->tape, leaf)) return nb_error_code() ? nb_error_code() : NB_ERR_NOMEM;
    leaf->grad_graph = sum;
    memcpy(leaf->grad->data, sum->data, (size_t)sum->numel * nb_dtype_size(sum->dtype));
    leaf->grad->version++; /* written (a node that recorded the buffer must see it; nb_tensor_has_grad) */
    return NB_OK;
}

static nb_status run(const char *who, nb_tensor *out, nb_tensor *seed, int n_wrt, nb_tensor *const *wrt,
                     nb_tensor **grads, unsigned flags)
{
    if (flags & NB_CREATE_GRAPH) flags |= NB_RETAIN_GRAPH;
    if (!out) return nb__fail_status(NB_ERR_ARG, "%s: output is NULL", who);
    if (!nb__live(who, out) || !nb__live_opt(who, seed)) return NB_ERR_STATE;
    if (!nb__is_float(out->dtype))
        return nb__fail_status(NB_ERR_DTYPE, "%s: output %s %s is not a floating-point tensor", who,
                               nb_dtype_name(out->dtype), NB_SHP(out));
    if (seed) {
        if (seed->dtype != out->dtype || !nb__same_shape(seed, out))
            return nb__fail_status(NB_ERR_SHAPE, "%s: seed %s %s does not match output %s %s", who,
                                   nb_dtype_name(seed->dtype), NB_SHP(seed), nb_dtype_name(out->dtype),
                                   NB_SHP(out));
    } else if (out->numel != 1) {
        return nb__fail_status(NB_ERR_SHAPE, "%s: output %s has %lld elements; a seed of its shape is "
                               "needed unless it has one element", who, NB_SHP(out),
                               (long long)out->numel);
    }
    if (grads)
        for (int i = 0; i < n_wrt; i++) grads[i] = NULL;
    /* a tensor that does not require grad has no recorded path to it: its gradient would be zeros
     * whatever the output computes from it (a leaf without the flag, a constant, a result made in a
     * no-grad scope), so it is refused, as PyTorch does, rather than answered with zeros */
    for (int i = 0; i < n_wrt; i++) {
        if (!wrt[i]) return nb__fail_status(NB_ERR_ARG, "%s: input %d is NULL", who, i);
        if (!nb__live(who, wrt[i])) return NB_ERR_STATE;
        if (!nb__needs_grad(wrt[i]))
            return nb__fail_status(NB_ERR_STATE, "%s: input %d %s %s does not require grad: its gradient is "
                                   "not computed (nb_tensor_set_requires_grad on a leaf before recording)",
                                   who, i, nb_dtype_name(wrt[i]->dtype), NB_SHP(wrt[i]));
    }

    nb_tape *tape = out->tape;
    if (!out->node && !grads) {
        if (!(out->flags & NB_TF_LEAF) || !nb__needs_grad(out))
            return nb__fail_status(NB_ERR_STATE, "%s: output %s does not require grad: no recorded "
                                   "operation leads to it", who, NB_SHP(out));
    }
    if (!tape) tape = nb__current_tape();
    if (!tape)
        return nb__fail_status(NB_ERR_STATE, "%s: the output is a leaf and no tape is current", who);

    nb_tape *prev_tape = nb__swap_current(tape);
    int saved_mode = nb__set_grad_mode((flags & NB_CREATE_GRAPH) != 0);
    nb_status st = NB_OK;
    pass p = {.who = who, .tape = tape, .flags = flags, .store = !grads};
    tape->busy++;
    bool *prev_recheck = nb__t_recheck;
    nb__t_recheck = &p.recheck;

    /* the seed enters as a copy on the tape, so no gradient handed back aliases the caller's tensor
     * (under NB_CREATE_GRAPH the copy is recorded: gradients can flow on into the seed) */
    seed = seed ? nb_affine(seed, 1.0, 0.0) : nb_full_like(out, 1.0);
    if (!seed) {
        st = nb_error_code();
        goto done;
    }

    if (out->node) {
        p.n = out->node->index + 1;
        p.need = nb__tape_alloc(tape, p.n);
        p.g = nb__tape_alloc(tape, p.n * sizeof *p.g);
        p.owned = nb__tape_alloc(tape, p.n);
        p.lsoff = nb__tape_alloc(tape, p.n * sizeof *p.lsoff);
        if (!p.need || !p.g || !p.owned || !p.lsoff) {
            st = nb__fail_status(NB_ERR_NOMEM, "%s: out of memory", who);
            goto done;
        }
        memset(p.need, 0, p.n);
        memset(p.g, 0, p.n * sizeof *p.g);
        memset(p.owned, 0, p.n);
        memset(p.lsoff, 0, p.n * sizeof *p.lsoff);
        if ((st = mark(&p, out)) != NB_OK) goto done;
    }
    if (out->node) {
        p.g[out->node->index] = seed;
        if ((st = sweep(&p, out->node->index, !grads)) != NB_OK) goto done;
    } else if (nb__needs_grad(out)) {
        int64_t s = slot_of_leaf(&p, out);
        if (s < 0) {
            st = nb_error_code();
            goto done;
        }
        p.lf[s].g = seed;
    }
    /* leaves not finished by the sweep (a leaf output) */
    for (int64_t s = 0; s < p.n_leaf; s++)
        if (!p.lf[s].done && (st = finish_leaf(&p, &p.lf[s], !grads)) != NB_OK) goto done;

    if (grads) {
        for (int i = 0; i < n_wrt; i++) {
            nb_tensor *x = wrt[i], *gx = NULL;
            if (x == out)
                gx = seed;
            else if (x->node && x->tape == tape && out->node && x->node->index < p.n)
                gx = p.g[x->node->index];
            else if (!x->node && find_leaf(&p, x) >= 0)
                gx = p.lf[find_leaf(&p, x)].g;
            if (!gx) gx = nb_zeros_like(x);
            if (!gx) {
                st = nb_error_code();
                goto done;
            }
            grads[i] = gx;
        }
    }

done:
    nb__t_recheck = prev_recheck;
    tape->busy--;
    nb__in_backward_of = NULL;
    nb__restore_grad_mode(saved_mode);
    nb__swap_current(prev_tape);
    if (st != NB_OK && grads)
        for (int i = 0; i < n_wrt; i++) grads[i] = NULL;
    return st;
}

nb_status nb_backward(nb_tensor *output, nb_tensor *seed, unsigned flags)
{
    return run("nb_backward", output, seed, 0, NULL, NULL, flags);
}

nb_status nb_grad(nb_tensor *output, nb_tensor *seed, int n_inputs, nb_tensor *const *inputs,
                  nb_tensor **grads, unsigned flags)
{
    if (n_inputs < 0 || (n_inputs > 0 && (!inputs || !grads)))
        return nb__fail_status(NB_ERR_ARG, "nb_grad: %d inputs with inputs=%p grads=%p", n_inputs,
                               (const void *)inputs, (void *)grads);
    return run("nb_grad", output, seed, n_inputs, inputs, grads, flags);
}
