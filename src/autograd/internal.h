/* Private structures of nabla: tensors, tape nodes, the op table, the arena. Not installed. */
#ifndef NB_INTERNAL_H
#define NB_INTERNAL_H

#include "nabla.h"

#include <stdbool.h>

#include "../ops/oplist.h"

/* ---- tensors ---------------------------------------------------------------------------------- */

enum {
    NB_TF_LEAF = 1u << 0,          /* made by a constructor, owned by the caller */
    NB_TF_REQUIRES_GRAD = 1u << 1, /* leaf: wants a gradient; op result: lies on a recorded graph */
    NB_TF_VIEW = 1u << 2,          /* leaf made by a view op without a tape: shares its base's data block
                                      and version counter (vp), never requires grad (nb__leaf_view) */
    NB_TF_LEAF_DATA = 1u << 3,     /* op result whose data is a leaf's: a view of a leaf made on a tape
                                      (base, base_stamp; see NB_STAMP_LEAF_DATA) */
    NB_TF_GRAD_BUFFER = 1u << 4,   /* leaf: another leaf's .grad, which backwards write in place */
};

struct nb_tensor {
    /* first cache line: what every op, accessor and the backward's mark read */
    nb_dtype dtype;
    int16_t ndim;
    uint16_t flags;
    uint32_t version;     /* bumped by every in-place change of a leaf */
    uint32_t grad_zeroed; /* leaves: grad->version when nb_tensor_zero_grad last cleared it */
    uint32_t *vp;     /* the version counter that guards this data: &version, or a view's base's */
    int64_t numel;
    void *data;
    nb_tape *tape;        /* owning tape of an op result; NULL for leaves */
    struct nb_node *node; /* the node that made it, when recorded */
    /* what identifies this tensor's lifetime: an op result's tape generation (tape->gen when it was
     * made; stale once the tape is reset; a view of a leaf has NB_STAMP_LEAF_DATA added, so that the
     * one compare of the fast path sends it to the check of its leaf), a leaf's serial (unique per
     * process; 0 once freed). Nodes record it per input and the backward compares. Nothing of a
     * backward pass is stored in a tensor. */
    uint64_t stamp;
    int64_t shape[NB_MAX_DIMS];
    const char *name;     /* leaves: an owned copy; op results: borrowed */
    nb_grad_hook hook;
    void *hook_user;
    union {
        struct { /* leaves */
            const void *owner; /* the container that owns it (nb_tensor_claim), or NULL */
            nb_post_accumulate_hook post_hook; /* called once .grad holds this pass's total */
            void *post_hook_user;
        };
        struct { /* op results with NB_TF_LEAF_DATA: a view (reshape, slice, detach) of a leaf's data */
            const nb_tensor *base; /* the leaf (through views of views too) */
            uint64_t base_stamp;   /* its stamp when viewed: the view is stale once the leaf is freed */
        };
    };
    /* leaves only */
    nb_tensor *grad;       /* accumulated values, owned (heap) */
    nb_tensor *grad_graph; /* after a create-graph backward: the differentiable gradient, a result of
                              the tape that tracks this leaf (nb__grad_tape) */
};
/* Added to the stamp of a view of a leaf (generations stay far below it). */
#define NB_STAMP_LEAF_DATA (UINT64_C(1) << 63)

/* The header stays within three cache lines (the arena rounds headers up to 64 bytes). */
_Static_assert(sizeof(struct nb_tensor) <= 192, "nb_tensor header over 192 bytes");

static inline bool nb__is_float(nb_dtype dt) { return dt == NB_F32 || dt == NB_F64; }
/* nb_dtype_size of a valid dtype, inline for the hot paths. */
static inline size_t nb__esize(nb_dtype dt) { return dt == NB_F32 ? 4 : 8; }

/* A caller-owned leaf of the given shape (x's element count) sharing leaf x's data and version counter,
 * for view ops called with no current tape; refused when x requires grad. The data block lives until
 * its last leaf is freed (tensor.c). */
nb_tensor *nb__leaf_view(const char *who, nb_tensor *x, int ndim, const int64_t *shape);

/* ---- ops -------------------------------------------------------------------------------------- */

/* The built-in ops, from the one list in src/ops/oplist.h. */
typedef enum nb_op_id {
#define NB__OP_ENUM(ID, fn, name, n_in, fw, bw, into, view) NB_OP_##ID,
    NB_OP_LIST(NB__OP_ENUM)
#undef NB__OP_ENUM
    NB_OP_COUNT
} nb_op_id;

typedef struct nb_attrs {
    int64_t i[NB_MAX_DIMS];
    double f[2];
    const void *p; /* op-specific pointer (custom ops: their nb_custom_op) */
} nb_attrs;

typedef struct nb_node nb_node;

/* Forward kernel: fill out (already shaped and allocated) from in. */
typedef void (*nb_forward_fn)(nb_tensor *out, nb_tensor *const *in, const nb_attrs *attrs);
/* Backward rule, written with nabla ops: given gout = dL/d(out), set gin[i] = dL/d(in[i]) for every
 * input that needs it (nb__needs_grad); leave the others NULL. Results must have the input's shape. */
typedef void (*nb_backward_fn)(const nb_node *node, nb_tensor *gout, nb_tensor **gin);

/* The engine's gradient buffers, handed to a backward_into rule. */
typedef struct nb_grad_sink nb_grad_sink;
/* A writable buffer (input i's shape and dtype, owned by the engine) into which input i's gradient
 * is to be added; NULL on error. Only for inputs that need it. With fresh NULL the buffer holds zeros
 * if nothing was accumulated yet; otherwise *fresh tells whether the buffer is new and uninitialised,
 * in which case the caller must overwrite all of it (gemm with beta 0) instead of adding. */
nb_tensor *nb__sink_slot(nb_grad_sink *sink, int i, bool *fresh);
/* nb__sink_slot, except that on a graph-less nb_backward the buffer may be leaf input i's .grad itself,
 * when this node's contribution is the leaf's whole total in the pass (engine's can_write_grad): the
 * rule adds into it (*fresh is false), the leaf's gradient lock held until the rule returns, and the
 * engine then counts it as the leaf's store (version, post-accumulate hook). A rule takes at most one
 * such buffer (the others are ordinary); it must call nothing that takes a gradient lock. */
nb_tensor *nb__sink_grad(nb_grad_sink *sink, int i, bool *fresh);
/* Add g (input i's shape) to input i's gradient; g may be kept as is, so the caller must not change
 * it afterwards. False on error. */
bool nb__sink_add(nb_grad_sink *sink, int i, nb_tensor *g);
/* Fast path used when no graph is being created: add the gradients of the inputs that need them
 * directly into the sink's buffers (a slice adds into a region, a matmul accumulates with beta = 1),
 * instead of building separate tensors. Returns false, having written nothing, for cases it does not
 * serve; the engine then runs the ordinary rule. */
typedef bool (*nb_backward_into_fn)(const nb_node *node, nb_tensor *gout, nb_grad_sink *sink);

/* For ops whose result can share its input's memory: the address of the result's first element
 * inside in[0]'s buffer, or NULL when this instance needs a copy (then forward runs). */
typedef void *(*nb_view_fn)(nb_tensor *const *in, const nb_attrs *attrs);

typedef struct nb_opdef {
    const char *name;
    int n_inputs;          /* -1: any */
    nb_forward_fn forward; /* NULL for pure views and constants */
    nb_backward_fn backward; /* NULL: not differentiable (zero gradient) */
    nb_backward_into_fn backward_into; /* optional */
    nb_view_fn view;       /* optional */
} nb_opdef;

extern const nb_opdef nb__ops[NB_OP_COUNT]; /* made from oplist.h in optable.c */

enum { NB_NODE_RELEASED = 1u << 0 };

struct nb_node {
    const nb_opdef *op;
    nb_tensor *out;
    nb_tensor **in;
    uint64_t *in_stamp;   /* each input's stamp when recorded: a freed leaf or a reset tape's result
                             no longer matches */
    uint32_t *in_version;
    int n_in;
    uint32_t flags;
    size_t index;
    nb_attrs attrs;
};

/* The tape on which a leaf's differentiable gradient lives (it lists the leaf, to clear it at reset). */
static inline nb_tape *nb__grad_tape(const nb_tensor *leaf) { return leaf->grad_graph ? leaf->grad_graph->tape : NULL; }
static inline bool nb__needs_grad(const nb_tensor *t) { return t && (t->flags & NB_TF_REQUIRES_GRAD); }

/* Run op on in with attrs into a new tensor of the given dtype and shape on the current tape,
 * recording a node when grad mode is on and an input requires grad. `who` names the public function
 * for error messages. NULL on error. */
nb_tensor *nb__apply(const char *who, nb_op_id op, int n_in, nb_tensor *const *in, const nb_attrs *attrs,
                     nb_dtype dtype, int ndim, const int64_t *shape);
/* y += x for tensors of equal shape and float dtype (backward accumulation). */
nb_status nb__add_inplace(nb_tensor *y, const nb_tensor *x);
/* A new uninitialised tensor on the current tape (no node); dtype and shape are validated. */
nb_tensor *nb__tape_tensor(const char *who, nb_dtype dtype, int ndim, const int64_t *shape);
/* The same for shapes an op has already derived from valid inputs: no validation (the hot path). */
nb_tensor *nb__tape_result(nb_tape *tape, const char *who, nb_dtype dtype, int ndim, const int64_t *shape);

/* ---- tape ------------------------------------------------------------------------------------- */

typedef struct nb_arena_chunk nb_arena_chunk;

typedef struct nb_arena {
    nb_arena_chunk *head;   /* first chunk */
    nb_arena_chunk *cur;    /* chunk being filled */
    size_t used;      /* bytes used in all chunks before cur, plus cur's fill */
    size_t reserved;  /* bytes of all chunks */
    size_t peak;      /* largest `used` since creation: the size a reset coalesces to */
} nb_arena;

void *nb__arena_alloc(nb_arena *a, size_t size);
void nb__arena_reset(nb_arena *a);
void nb__arena_free(nb_arena *a);

/* Op result headers live apart from the arena, in two regions of fixed-size slots used in turn by
 * the tape's generations (even generations in hdr[0], odd ones in hdr[1]); their memory is kept until
 * nb_tape_free. A result kept across one reset therefore still reads its own header (stamp included),
 * and any header pointer of a live tape reads some result's header, never other bytes. */
typedef struct nb_hslab nb_hslab;
/* A slot: a header, then room for the data of a small result (up to NB_INLINE_BYTES), so that a small
 * result is one contiguous block (64-byte aligned) and takes nothing from the arena. */
#define NB_INLINE_BYTES 64
typedef struct nb_hslot {
    nb_tensor t;
    _Alignas(64) unsigned char data[NB_INLINE_BYTES];
} nb_hslot;
typedef struct nb_hregion {
    nb_hslab *head, *cur;
    nb_hslot *next;  /* the next free slot of cur */
    size_t left;     /* free slots left in cur */
    size_t slots;    /* slots in all slabs */
} nb_hregion;

struct nb_tape {
    nb_arena arena;
    nb_hregion hdr[2];
    nb_hregion *hcur; /* &hdr[gen & 1] */
    uint64_t gen;     /* generation: 1 when made, bumped by every reset; results carry it as stamp */
    int busy;         /* backward passes, and custom ops' forwards and backwards, running on this tape or
                         reading its results (a reset or free from their user code is refused) */
    nb_node **nodes;
    size_t n_nodes, cap_nodes;
    nb_tape *prev;  /* the tape that was current before nb_tape_begin */
    int active;     /* begun and not yet ended */
    /* leaves whose grad_graph points into this tape (cleared on reset) */
    nb_tensor **graph_leaves;
    size_t n_graph_leaves, cap_graph_leaves;
    /* the tapes whose results this generation's nodes hold as inputs, each once (released by reset and
     * free); `held` counts the tapes holding this one (atomic): nb_tape_free refuses while any does */
    nb_tape **holds;
    size_t n_holds, cap_holds;
    int held;
};

extern _Thread_local nb_tape *nb__t_current;
static inline nb_tape *nb__current_tape(void) { return nb__t_current; }
/* Make t current without begin/end bookkeeping (backward runs on the output's tape); returns the
 * previous one. */
nb_tape *nb__swap_current(nb_tape *t);
/* After user code (a hook, a custom op) that should have left t current: true if it did; else the tapes
 * it began and left begun are ended, t is made current again, and false is returned. */
bool nb__unwind_to(nb_tape *t);
/* Set grad mode for internal work; returns the previous no-grad depth for nb__restore_grad_mode. */
int nb__set_grad_mode(bool enabled);
void nb__restore_grad_mode(int saved);
static inline void *nb__tape_alloc(nb_tape *t, size_t size) { return nb__arena_alloc(&t->arena, size); }
/* A header slot for a new op result of tape t (uninitialised); NULL when out of memory. */
nb_tensor *nb__tape_header_slow(nb_tape *t);
static inline nb_tensor *nb__tape_header(nb_tape *t)
{
    nb_hregion *h = t->hcur;
    if (!h->left) return nb__tape_header_slow(t);
    h->left--;
    return &(h->next++)->t;
}
/* leaf's .grad, made if it has none (zeros, owned by the leaf, NB_TF_GRAD_BUFFER; safe against other
 * threads doing the same); NULL when out of memory. */
nb_tensor *nb__grad_buffer(nb_tensor *leaf);
/* Hold / release the lock of leaf's gradient (a backward adding into .grad, zero_grad). */
void nb__grad_lock(const nb_tensor *leaf);
void nb__grad_unlock(const nb_tensor *leaf);
/* A tape was made or freed (the leaf header pool is released once no leaf and no tape is live). */
void nb__pool_tape_count(int delta);
void nb__tape_forget_leaf(nb_tape *t, nb_tensor *leaf);
bool nb__tape_track_leaf(nb_tape *t, nb_tensor *leaf);

/* ---- memory ----------------------------------------------------------------------------------- */

void *nb__malloc(size_t size);
void *nb__calloc(size_t size);
void *nb__realloc(void *p, size_t old_size, size_t new_size);
void nb__free(void *p, size_t size);

/* ---- errors ----------------------------------------------------------------------------------- */

/* Record an error (kept only if none is pending); always returns NULL so `return nb__fail(...)`. */
void *nb__fail(nb_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
nb_status nb__fail_status(nb_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Number of errors recorded on this thread (kept or not): compare before and after a call to learn
 * whether it failed even when an older error is pending. */
extern _Thread_local uint64_t nb__t_error_count;
static inline uint64_t nb__error_count(void) { return nb__t_error_count; }

/* The name of a node's op (a custom op's own name). */
const char *nb__node_name(const nb_node *n);
/* ---- lifetimes -------------------------------------------------------------------------------- */

/* Record NB_ERR_STATE for a tensor that is no longer usable (a result of a tape reset since it was
 * made, or a freed leaf), naming `who`; returns false. */
bool nb__stale_fail(const char *who, const nb_tensor *t);
/* Whether t may be used: an op result of its tape's current generation, or a leaf not freed. Reads
 * only t's header and its tape's generation: cheap enough for every op and accessor. */
bool nb__leaf_data_usable(const nb_tensor *t);
static inline bool nb__usable(const nb_tensor *t)
{
    const nb_tape *tp = t->tape;
    /* a view of a leaf (its stamp never equals a generation) also needs its leaf alive */
    return tp ? t->stamp == tp->gen || nb__leaf_data_usable(t) : (t->flags & NB_TF_LEAF) != 0;
}
/* nb__usable, recording the error (naming who) when not. */
static inline bool nb__live(const char *who, const nb_tensor *t)
{
    return nb__usable(t) || nb__stale_fail(who, t);
}
/* The same for an optional argument: NULL passes. */
static inline bool nb__live_opt(const char *who, const nb_tensor *t) { return !t || nb__live(who, t); }
/* Anomaly mode: scan t for NaN/inf; on one, record NB_ERR_NUMERIC with a message built from `what`
 * and return false. */
bool nb__anomaly_check(const nb_tensor *t, const char *what);
extern int nb__anomaly_flag;
/* Whether anomaly mode is on: a relaxed atomic load (any thread may switch it; a plain load on x86). */
static inline bool nb__anomaly_on(void) { return __atomic_load_n(&nb__anomaly_flag, __ATOMIC_RELAXED) != 0; }
/* The running backward pass's flag "user code ran: check later nodes' inputs again" (NULL outside a
 * pass); a custom op's backward sets it after calling the user's function. */
extern _Thread_local bool *nb__t_recheck;
/* Set by the backward engine while a rule runs, so anomaly messages name the node. */
extern _Thread_local const nb_node *nb__in_backward_of;

/* "[2,3]" of a shape, in one of a few rotating thread-local buffers (for messages). */
const char *nb__shape_str(int ndim, const int64_t *shape);
#define NB_SHP(t) nb__shape_str((t)->ndim, (t)->shape)

/* ---- shape helpers ---------------------------------------------------------------------------- */

int64_t nb__numel(int ndim, const int64_t *shape);
static inline bool nb__same_shape(const nb_tensor *a, const nb_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}
/* Broadcast shapes a and b into out (ndim returned through out_ndim); false if they do not fit. */
bool nb__broadcast_shapes(int na, const int64_t *a, int nb, const int64_t *b, int *out_ndim,
                          int64_t *out);
/* A shape given by (or computed from) user input: 0..NB_MAX_DIMS dims, extents >= 0, element count
 * without overflow. Ops whose result extents come from the user check them with this; results
 * derived from valid inputs need no check. */
bool nb__check_shape(const char *who, int ndim, const int64_t *shape);
/* Normalise a possibly-negative axis; -1 if out of range. */
int nb__axis(int axis, int ndim);
/* Check that a tensor argument is usable by op `who` (not NULL is checked by the caller). */
bool nb__check_float(const char *who, const nb_tensor *t);

/* ---- numerics shared by kernels and gradcheck ------------------------------------------------- */

double nb__get(const nb_tensor *t, int64_t i);
/* Every element of t = v (converted to t's dtype). */
void nb__fill(nb_tensor *t, double v);
void nb__set(nb_tensor *t, int64_t i, double v);

#endif
