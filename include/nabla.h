/**
 * @file
 * nabla: reverse-mode automatic differentiation for C.
 *
 * The model in five lines:
 *   - Leaves (parameters, inputs) are made with nb_tensor_* constructors; you own them and free them
 *     with nb_tensor_free. Their gradients (nb_tensor_grad) are owned by the leaf.
 *   - Ops are bare verbs (nb_add, nb_matmul, ...). Their results belong to the current tape's arena and
 *     are released together by nb_tape_reset or nb_tape_free. You never free an op result.
 *   - A tape becomes current for the calling thread with nb_tape_begin and stops being so with
 *     nb_tape_end. Every op with an input that requires grad appends a node to the current tape.
 *   - nb_backward walks the recorded nodes in reverse and accumulates into leaf gradients; nb_grad
 *     returns gradients as tensors instead (and, with NB_CREATE_GRAPH, records the backward too).
 *   - Errors are sticky: a failing call returns NULL (or a status) and records a message; a call given
 *     NULL returns NULL and keeps the first message, so a chain of calls can be checked once. An
 *     optional argument (a bias, a weight, a mask) given as NULL means "none": if it comes from a call
 *     that can fail, check that call (or nb_error_code() at the end of the chain), since the op cannot
 *     tell a failed argument from an absent one.
 *
 * Lifetimes, and what is checked (docs/architecture.md, "Lifetimes"):
 *   - An op result lives until its tape is reset (nb_tape_reset starts a new generation) or freed.
 *     Using a result after one reset of its tape, in any op, accessor, nb_backward / nb_grad (output,
 *     seed, inputs), hook setter or nb_tape_write_dot, fails with NB_ERR_STATE naming the call ("tensor
 *     belongs to a tape that was reset (recorded in generation 3, tape is at 4)"). After two or more
 *     resets the pointer may denote a newer result of the same tape, which it then reads (never other
 *     memory): that use is not detected. Results of a tape that was freed are freed memory; a tape
 *     whose results ops of another tape recorded cannot be freed until that tape is reset.
 *   - A backward (and the DOT export) refuses a graph that holds a leaf freed since it was recorded, or
 *     a result of another tape reset since: NB_ERR_STATE, always.
 *   - A freed leaf's pointer fails with NB_ERR_STATE while any leaf or tape is live, unless a new leaf
 *     has taken its header (then it is that leaf). A view made on a tape (reshape, slice, detach) of a
 *     leaf reads the leaf's data and goes with it: once the leaf is freed, using the view, or a backward
 *     through an op that recorded it, fails with NB_ERR_STATE. A view made on a tape of a result of
 *     another tape is a copy (that tape's reset cannot change it). A view made with no current tape
 *     (nb_reshape, nb_squeeze, nb_unsqueeze of a leaf) is a leaf of its own that keeps the data alive:
 *     base and views may be freed in any order.
 *   - Resetting or freeing a tape from a hook during a backward on it, or from a custom op's forward or
 *     backward (its own tape, or an input's), is refused (NB_ERR_STATE). What
 *     other user code run by a backward (gradient and post-accumulate hooks, a custom op's backward)
 *     does to the graph is checked before each later rule reads it: a leaf freed, another tape reset, a
 *     tensor changed in place, a leaf's requires_grad switched fail the backward with NB_ERR_STATE. So
 *     does a .grad that a node of the graph reads when the same backward writes it (clone it first).
 *   - A tape belongs to one thread at a time (nothing checks it: a tape used by two threads at once is
 *     a data race). Leaves may be shared by threads that record them on their own tapes: nb_grad writes
 *     nothing into a leaf, and nb_backward adds each pass's total into .grad under a lock per leaf, so
 *     concurrent backwards lose no contribution (their order, and so the last bits of the sum, vary).
 *     Reading or zeroing .grad, changing a leaf (an optimizer step, nb_tensor_fill, requires_grad,
 *     hooks), freeing it, and backwards with NB_CREATE_GRAPH on shared leaves need one thread at a time.
 *     Anomaly mode may be switched from any thread; set the allocator and the error handler before
 *     other threads use nabla.
 */
#ifndef NABLA_H
#define NABLA_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * @defgroup types Basic types
 * The version, element types, status codes, opaque handles and shape literals.
 * @{ */

/** The version of these headers: major, minor, patch. @{ */
#define NB_VERSION_MAJOR 0
#define NB_VERSION_MINOR 1
#define NB_VERSION_PATCH 0
/** @} */

/** Most dimensions a tensor may have. */
#define NB_MAX_DIMS 8

/* ---------------------------------------------------------------------------------------------- */
/* Basic types                                                                                     */
/* ---------------------------------------------------------------------------------------------- */

/** Element types. */
typedef enum nb_dtype {
    NB_F32 = 0, /**< float */
    NB_F64 = 1, /**< double */
    NB_I64 = 2, /**< int64_t: indices and labels; not differentiable */
    NB_DTYPE_COUNT /**< the number of dtypes (not a dtype) */
} nb_dtype;

/** What a fallible call returns; nb_error_message() has the first failure's message. */
typedef enum nb_status {
    NB_OK = 0,      /**< success */
    NB_ERR_ARG,     /**< a NULL or out-of-range argument */
    NB_ERR_SHAPE,   /**< shapes that do not fit together */
    NB_ERR_DTYPE,   /**< dtypes that do not fit together */
    NB_ERR_STATE,   /**< a call at the wrong time (no current tape, graph already released, ...) */
    NB_ERR_NOMEM,   /**< an allocation failed */
    NB_ERR_IO,      /**< a file could not be read or written */
    NB_ERR_FORMAT,  /**< a file's contents are malformed */
    NB_ERR_NUMERIC, /**< anomaly mode found a NaN or an infinity */
    NB_ERR_UNSUPPORTED, /**< a valid request this build cannot serve */
    NB_STATUS_COUNT /**< the number of status codes (not a status) */
} nb_status;

/** Opaque handles: a tensor (a leaf, owned by the caller, or an op result, owned by its tape) and a
 * tape (the recorded ops and the arena that holds their results). @{ */
typedef struct nb_tensor nb_tensor;
typedef struct nb_tape nb_tape;
/** @} */

/** Shape and axis literals: nb_tensor_zeros(NB_F64, NB_SHAPE(2, 3)) passes ndim=2 and {2, 3}. @{ */
#define NB_SHAPE(...) \
    (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]){__VA_ARGS__}
#define NB_AXES(...) \
    (int)(sizeof((const int[]){__VA_ARGS__}) / sizeof(int)), (const int[]){__VA_ARGS__}
/** @} */

/** Size in bytes of one element of dtype, 0 for an invalid dtype. */
size_t nb_dtype_size(nb_dtype dtype);
/** "f32", "f64", "i64"; "?" for an invalid dtype. */
const char *nb_dtype_name(nb_dtype dtype);

/* ---------------------------------------------------------------------------------------------- */
/* Errors                                                                                          */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup errors Errors
 * Sticky, per-thread error state: the first failure's status and message.
 * @{ */

/** The first error recorded on this thread since the last nb_error_clear: its status (NB_OK if none). */
nb_status nb_error_code(void);
/** Its message, such as "nb_matmul: [32,784] x [512,256]: inner dimensions 784 and 512 differ";
 * "" if none. The string is owned by the library and valid until the next nb_error_clear. */
const char *nb_error_message(void);
/** Forget the recorded error on this thread. */
void nb_error_clear(void);
/** "NB_ERR_SHAPE" and so on. */
const char *nb_status_name(nb_status status);

/** Called once for every error that is recorded (not for calls that merely pass a NULL along).
 * Process-wide; NULL restores the default, which does nothing. @{ */
typedef void (*nb_error_handler)(nb_status status, const char *message, void *user);
void nb_set_error_handler(nb_error_handler handler, void *user);
/** @} */
/** Ready-made handlers: print the message to stderr; print it and abort(). @{ */
void nb_error_handler_print(nb_status status, const char *message, void *user);
void nb_error_handler_abort(nb_status status, const char *message, void *user);
/** @} */

/* ---------------------------------------------------------------------------------------------- */
/* Memory                                                                                          */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup memory Memory
 * Where nabla's heap memory comes from.
 * @{ */

/** Every heap allocation nabla makes goes through these: the tensors, tapes and engine, the layers,
 * optimizers, datasets and readers (zlib's inflate state and the safetensors header included). Not
 * through them: OpenBLAS's own buffers, and the stdio buffer of a FILE you pass to a print function.
 * Set before creating any object, and keep it until every object is freed; NULL (or a NULL function)
 * restores malloc/realloc/free. The library never asks for 0 bytes (it asks for 1), and frees and
 * reallocates naming the size of the block as it was last allocated; alloc and realloc return NULL on
 * failure (realloc leaving the block as it was), which the library reports as NB_ERR_NOMEM. */
typedef struct nb_allocator {
    void *(*alloc)(size_t size, void *user);                                   /**< as malloc */
    void *(*realloc)(void *ptr, size_t old_size, size_t new_size, void *user); /**< as realloc */
    void (*free)(void *ptr, size_t size, void *user);                          /**< as free */
    void *user; /**< passed to each function */
} nb_allocator;
/** Use allocator's functions (copied) for every later allocation; NULL: malloc/realloc/free. */
void nb_set_allocator(const nb_allocator *allocator);

/** The library's allocator, for code built on nabla (src/nn and src/train use only these): each call
 * goes to the functions set with nb_set_allocator. They record no error: report a NULL yourself
 * (NB_ERR_NOMEM). A size of 0 is served as 1 byte. Free a block with nb_dealloc giving the size it
 * was allocated with (for nb_calloc: n * size; after nb_realloc: new_size). */
void *nb_alloc(size_t size);
/** n * size zeroed bytes; NULL when the product overflows. */
void *nb_calloc(size_t n, size_t size);
/** Resize a block of old_size bytes to new_size (p NULL: nb_alloc(new_size)); on failure NULL, and
 * the block is unchanged and still yours. */
void *nb_realloc(void *p, size_t old_size, size_t new_size);
/** Free a block of size bytes. NULL is ignored. */
void nb_dealloc(void *p, size_t size);
/** A copy of s (NULL when s is NULL or memory runs out); free with nb_dealloc(copy, strlen(s) + 1). */
char *nb_strdup(const char *s);

/** @}
 * @defgroup threads Threads
 * How many threads nabla's own kernels and its matrix products use: one knob for both.
 * @{ */
/** The one thread knob: n threads for nabla's own kernels (OpenMP) and for OpenBLAS's matrix products
 * together (and the calling thread's OpenMP default). n < 1 restores the default, read once at start
 * from NB_NUM_THREADS, else OMP_NUM_THREADS, else OPENBLAS_NUM_THREADS, else every core. Small tensors
 * stay on the calling thread. nabla's kernels give bit-identical results for any thread count;
 * OpenBLAS's products may differ in the last bits between thread counts. Idle threads spin for a while
 * (OpenMP's default): where other programs want the cores, start the program with
 * OMP_WAIT_POLICY=passive, or extra threads make it slower. */
void nb_set_num_threads(int n);
/** The current setting of that knob. */
int nb_num_threads(void);
/** Flush denormal floats to zero (on != 0) or compute with them (0, the default), as
 * torch.set_flush_denormal: the calling thread and the threads of the OpenMP pool that nabla's kernels
 * and an OpenMP OpenBLAS use (at the current nb_num_threads; threads started later inherit the calling
 * thread's mode). Values below 1.2e-38 (float32) or 2.2e-308 (float64) become 0, in inputs and results:
 * gradcheck and fixtures want the default; training loses nothing and can run much faster where
 * optimizer moments decay into denormals (the Fashion-MNIST CNN: 15 instead of 19 s per epoch). Returns
 * 1 where the CPU has the mode (x86-64), else 0 and changes nothing. */
int nb_set_flush_denormal(int on);

/* ---------------------------------------------------------------------------------------------- */
/* Random numbers: explicit, seeded state (xoshiro256**). Copy the struct to fork a stream.        */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup rng Random numbers
 * Explicit, seeded generator state (xoshiro256**); copy the struct to fork a stream.
 * @{ */

/** A generator's state: seed it with nb_rng_seed; every draw advances it. */
typedef struct nb_rng {
    uint64_t s[4]; /**< the state words */
} nb_rng;

/** Seed the state; the same seed gives the same stream on every platform. */
void nb_rng_seed(nb_rng *rng, uint64_t seed);
/** The next 64 random bits. */
uint64_t nb_rng_u64(nb_rng *rng);
/** Uniform in [0, 1) with 53 random bits. */
double nb_rng_uniform(nb_rng *rng);
/** Standard normal (Box-Muller; one draw consumes two uniforms). */
double nb_rng_normal(nb_rng *rng);
/** Uniform integer in [0, n); n > 0. Unbiased. */
uint64_t nb_rng_below(nb_rng *rng, uint64_t n);
/** Shuffle a[0..n) in place (Fisher-Yates: every order equally likely). */
void nb_rng_shuffle(nb_rng *rng, int64_t *a, int64_t n);

/* ---------------------------------------------------------------------------------------------- */
/* Leaf tensors: owned by the caller, freed with nb_tensor_free                                    */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup tensors Leaf tensors
 * Tensors owned by the caller (parameters, inputs), freed with nb_tensor_free.
 * @{ */

/** Each returns a new contiguous row-major tensor that the caller owns, or NULL on error.
 * ndim is 0..NB_MAX_DIMS; every extent must be >= 0. Filled with zeros, ones, value. @{ */
nb_tensor *nb_tensor_zeros(nb_dtype dtype, int ndim, const int64_t *shape);
nb_tensor *nb_tensor_ones(nb_dtype dtype, int ndim, const int64_t *shape);
nb_tensor *nb_tensor_full(nb_dtype dtype, int ndim, const int64_t *shape, double value);
/** @} */
/** Elements left uninitialised, for code that writes every one before reading any (file readers,
 * copies): it saves filling a large tensor twice. */
nb_tensor *nb_tensor_empty(nb_dtype dtype, int ndim, const int64_t *shape);
/** Copies numel elements of dtype from data (at the call; data stays yours). */
nb_tensor *nb_tensor_from_data(nb_dtype dtype, int ndim, const int64_t *shape, const void *data);
/** 1-D: start, start+step, ... while < stop (> stop for a negative step). */
nb_tensor *nb_tensor_arange(nb_dtype dtype, double start, double stop, double step);
/** Uniform in [low, high) and normal(mean, std), drawn in row-major order from rng. @{ */
nb_tensor *nb_tensor_uniform(nb_dtype dtype, int ndim, const int64_t *shape, double low, double high,
                             nb_rng *rng);
nb_tensor *nb_tensor_normal(nb_dtype dtype, int ndim, const int64_t *shape, double mean, double std,
                            nb_rng *rng);
/** @} */
/** A caller-owned deep copy of any tensor (a leaf or an op result): data only, no gradient, no graph. */
nb_tensor *nb_tensor_clone(const nb_tensor *t);
/** Frees a leaf and its gradient. NULL is ignored; an op result is refused (it belongs to its tape),
 * and so is a leaf that a container owns (see nb_tensor_claim): it is freed with its container. A
 * tape that recorded the leaf may still be live: its backward then fails with NB_ERR_STATE. The data
 * of a leaf that has views made without a tape (nb_reshape) lives until the last of them is freed;
 * the freed leaf's pointer is refused (NB_ERR_STATE) all the same. */
void nb_tensor_free(nb_tensor *t);
/** Ownership of leaves by containers (nb_params, nb_dataset, nb_optim's state, nb_safetensors; your
 * own containers can use it too): a leaf has at most one owner, so it cannot be freed twice by two
 * containers, or by its container and you. owner is any non-NULL address naming the container.
 * Claim an unowned leaf (NB_ERR_STATE if it has an owner, this one included, or is an op result). */
nb_status nb_tensor_claim(nb_tensor *t, const void *owner);
/** Give up owner's claim, before the owner frees the leaf (NB_ERR_STATE if owner does not hold it). */
nb_status nb_tensor_unclaim(nb_tensor *t, const void *owner);
/** The owner of a leaf, or NULL (unowned leaves and op results). */
const void *nb_tensor_owner(const nb_tensor *t);

/* ---------------------------------------------------------------------------------------------- */
/* Tensor accessors (any tensor)                                                                   */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup accessors Tensor accessors
 * Shape, data, gradient and name of any tensor (a leaf or an op result).
 * @{ */

/** The element type (NB_DTYPE_COUNT for NULL). */
nb_dtype nb_tensor_dtype(const nb_tensor *t);
/** The number of dimensions, 0..NB_MAX_DIMS (-1 for NULL). */
int nb_tensor_ndim(const nb_tensor *t);
/** Extent of dimension dim; negative dim counts from the end; -1 on a bad argument. */
int64_t nb_tensor_dim(const nb_tensor *t, int dim);
/** Pointer to ndim extents, owned by the tensor. */
const int64_t *nb_tensor_shape(const nb_tensor *t);
/** The number of elements (1 for a 0-d tensor; 0 for NULL). */
int64_t nb_tensor_numel(const nb_tensor *t);
/** The element buffer (row-major, contiguous), owned by the tensor and valid as long as it is.
 * Writing through it into a tensor that a tape has recorded makes that tape's backward wrong; call
 * nb_tensor_mark_dirty after writing into a leaf, a tape constant or a view of either, so that the
 * next backward through a node that saved it reports it instead. A tape constant (nb_zeros,
 * nb_constant, ...) may be written freely before an op uses it. */
void *nb_tensor_data(nb_tensor *t);
/** The same buffer, read-only. */
const void *nb_tensor_cdata(const nb_tensor *t);
/** Element at a flat row-major index, converted to double; NaN on a bad argument. */
double nb_tensor_get(const nb_tensor *t, int64_t index);
/** The single element of a one-element tensor; NaN otherwise (with an error recorded). */
double nb_tensor_item(const nb_tensor *t);
/** Store value at a flat index of a leaf. */
nb_status nb_tensor_set(nb_tensor *t, int64_t index, double value);
/** Copy numel elements of the tensor's dtype from data into a leaf. */
nb_status nb_tensor_copy_from(nb_tensor *t, const void *data);
/** Fill a leaf with value. */
nb_status nb_tensor_fill(nb_tensor *t, double value);
/** y += alpha * x, elementwise, for a leaf y and a tensor x of the same shape and dtype. */
nb_status nb_tensor_axpy(nb_tensor *y, double alpha, const nb_tensor *x);
/** Record that a leaf's data was changed in place, so that a backward through a node that saved it
 * reports an error rather than a wrong gradient. The in-place functions above call it. Any tensor may
 * be marked: a view shares its base's counter, so marking either marks both. */
void nb_tensor_mark_dirty(nb_tensor *t);

/** Leaves only: whether backward computes a gradient for this tensor. Turning it on is refused
 * (NB_ERR_STATE) for a view made without a tape (nb_tensor_is_view: it is not recorded on its base, so
 * its gradient would reach nothing) and for a leaf that has such views alive (their uses would not
 * reach its gradient; the message counts them): make views of a leaf that requires grad on the tape. */
nb_status nb_tensor_set_requires_grad(nb_tensor *t, int requires_grad);
/** Whether ops with this input are recorded (a leaf's flag, or an op result on the graph). */
int nb_tensor_requires_grad(const nb_tensor *t);
/** Whether the tensor is a leaf (made by a constructor, owned by the caller). */
int nb_tensor_is_leaf(const nb_tensor *t);
/** Whether the tensor is a view made without a tape: a leaf made by nb_reshape, nb_squeeze or
 * nb_unsqueeze of a leaf while no tape was current, sharing that leaf's data and version counter. */
int nb_tensor_is_view(const nb_tensor *t);
/** The accumulated gradient of a leaf, owned by the leaf; NULL until a backward reaches it. After a
 * backward with NB_CREATE_GRAPH it is a tensor on that tape, itself differentiable, valid until the
 * tape is reset. */
nb_tensor *nb_tensor_grad(const nb_tensor *t);
/** Set the gradient of a leaf to zero (keeps its buffer, so steady-state steps do not allocate). */
void nb_tensor_zero_grad(nb_tensor *t);
/** Whether a backward has written the leaf's gradient since its last nb_tensor_zero_grad (since its
 * creation if never zeroed): a gradient that zero_grad left at zero counts as none, like PyTorch's
 * None after zero_grad(set_to_none=True). Optimizers skip parameters without one. */
int nb_tensor_has_grad(const nb_tensor *t);
/** The gradient buffer of a leaf that requires grad, allocated as zeros if no backward has reached it
 * yet: for code that writes gradients itself (nabla/dist.h averages them over processes). It counts as
 * a gradient (nb_tensor_has_grad) once written and marked with nb_tensor_mark_dirty. NULL on error. */
nb_tensor *nb_tensor_ensure_grad(nb_tensor *t);
/** A name shown in graph exports and error messages. The string is copied for leaves; for op results
 * it must outlive the tape's current recording. */
nb_status nb_tensor_set_name(nb_tensor *t, const char *name);
/** The name given by nb_tensor_set_name, or NULL. */
const char *nb_tensor_name(const nb_tensor *t);

/** Formats "[2,3]" into buf (always NUL-terminated) and returns buf. */
char *nb_shape_str(const nb_tensor *t, char *buf, size_t size);
/** Prints "label = " (if label is not NULL), dtype and shape, then the values laid out as PyTorch
 * prints them: nested brackets per dimension, one row per line, aligned columns, 4 decimals (or
 * scientific notation, or "3." for whole numbers, as PyTorch chooses), rows wrapped at 80 columns.
 * With more than max_elems elements (0: 1000, PyTorch's threshold) only the first and last 3 entries
 * of each dimension are shown, around "...". A 0-d tensor prints on one line. */
void nb_tensor_print(const nb_tensor *t, const char *label, FILE *f, int64_t max_elems);
/** The compact one-line form, "label = f64[2,3] [ 1 2 3; 4 5 6 ]", %.6g per value, at most max_elems
 * values (0: all). */
void nb_tensor_print_line(const nb_tensor *t, const char *label, FILE *f, int64_t max_elems);

/* ---------------------------------------------------------------------------------------------- */
/* Tapes                                                                                           */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup tapes Tapes
 * Recording ops and owning their results, released all at once; no-grad scopes.
 * @{ */

/** A new empty tape (its arena grows in chunks as needed). Free with nb_tape_free. */
nb_tape *nb_tape_new(void);
/** Frees a tape and everything made on it. NULL is ignored. Refused (NB_ERR_STATE, nothing freed) while
 * it is current on this thread, while a backward or a custom op runs on it, and while ops recorded on
 * another tape hold its results as inputs (reset or free that tape first). A tape current on another
 * thread must not be freed (not detected reliably). */
void nb_tape_free(nb_tape *tape);
/** Make tape the current tape of this thread; begin/end pairs nest (end restores the one before, and
 * refuses a tape that is not the current one). Both are refused for a tape on which a backward or a
 * custom op runs (from a hook or the op); a tape that a hook or a custom op's forward begins and does
 * not end is ended for it, and the backward (or the op) fails with NB_ERR_STATE. @{ */
nb_status nb_tape_begin(nb_tape *tape);
nb_status nb_tape_end(nb_tape *tape);
/** @} */
/** The current tape of this thread, or NULL. */
nb_tape *nb_tape_current(void);
/** Release every node and op result on the tape at once; the arena's memory is kept for reuse, so a
 * steady-state step allocates nothing. Results kept from before are stale (see the top of this file).
 * Refused (NB_ERR_STATE, nothing released) while a backward runs on the tape (from a hook). */
void nb_tape_reset(nb_tape *tape);
/** Nodes recorded, and bytes of arena in use / reserved. @{ */
size_t nb_tape_node_count(const nb_tape *tape);
size_t nb_tape_bytes_used(const nb_tape *tape);
size_t nb_tape_bytes_reserved(const nb_tape *tape);
/** @} */
/** The tape's generation: 1 when made, bumped by every nb_tape_reset. Op results remember the
 * generation they were made in (error messages about stale results quote both). */
uint64_t nb_tape_generation(const nb_tape *tape);
/** Name of the op of node i ("matmul"), NULL if out of range; its output tensor. @{ */
const char *nb_tape_node_op(const nb_tape *tape, size_t i);
nb_tensor *nb_tape_node_output(const nb_tape *tape, size_t i);
/** @} */

/** Scratch memory (64-byte aligned) on the current tape's arena, released with the tape's other
 * contents at reset: for per-step arrays in layers and custom ops. NULL, with an error, when no tape
 * is current or memory runs out. */
void *nb_scratch(size_t bytes);

/** No-grad scope for this thread: ops still run (results on the current tape) but record nothing.
 * Scopes nest. @{ */
void nb_no_grad_begin(void);
void nb_no_grad_end(void);
/** @} */
/** Whether ops are recorded on this thread now (1 outside every no-grad scope). */
int nb_grad_enabled(void);

/* ---------------------------------------------------------------------------------------------- */
/* Backward                                                                                        */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup backward Backward
 * Gradients, accumulated into leaves (nb_backward) or returned as tensors (nb_grad).
 * @{ */

/** Flags of nb_backward and nb_grad. */
enum {
    NB_RETAIN_GRAPH = 1u << 0, /**< keep the graph for another backward over it */
    NB_CREATE_GRAPH = 1u << 1, /**< record the backward itself, for gradients of gradients (implies
                                  NB_RETAIN_GRAPH) */
};

/** Accumulate d(output)/d(leaf) * seed into every leaf that requires grad and leads to output.
 * seed: NULL means 1 and is allowed for a one-element output only; otherwise a tensor of output's
 * shape and dtype. Without NB_RETAIN_GRAPH the nodes used are released: a second backward through
 * them is an error. */
nb_status nb_backward(nb_tensor *output, nb_tensor *seed, unsigned flags);

/** Functional form: grads[i] = d(output)/d(inputs[i]) * seed, as tensors on output's tape, without
 * touching any leaf gradient. inputs may be leaves or op results that require grad; one that does not
 * (a leaf without the flag, a tape constant, a result made in a no-grad scope) is refused with
 * NB_ERR_STATE, since its gradient is not computed. An input that output does not depend on through
 * recorded ops (ops without a gradient, such as nb_sign, count as constant) gets zeros. With
 * NB_CREATE_GRAPH the gradients are themselves differentiable. */
nb_status nb_grad(nb_tensor *output, nb_tensor *seed, int n_inputs, nb_tensor *const *inputs,
                  nb_tensor **grads, unsigned flags);

/* ---------------------------------------------------------------------------------------------- */
/* Tape constants: results on the current tape, no gradient                                        */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup constants Tape constants
 * Tensors made on the current tape that need no gradient: masks, targets, fixed inputs.
 * @{ */

/** A tape constant of zeros, ones or value: owned by the current tape (released by its reset; never
 * free it), requiring no grad; NULL with an error when no tape is current. Its buffer
 * (nb_tensor_data) may be written until an op uses it; after that, see nb_tensor_mark_dirty. @{ */
nb_tensor *nb_zeros(nb_dtype dtype, int ndim, const int64_t *shape);
nb_tensor *nb_ones(nb_dtype dtype, int ndim, const int64_t *shape);
nb_tensor *nb_full(nb_dtype dtype, int ndim, const int64_t *shape, double value);
/** @} */
/** A tape constant, as nb_zeros, holding a copy of numel elements of dtype read from data during the
 * call: data stays yours and may change or be freed right after. */
nb_tensor *nb_constant(nb_dtype dtype, int ndim, const int64_t *shape, const void *data);
/** A tape constant of x's dtype and shape: zeros, or value. @{ */
nb_tensor *nb_zeros_like(const nb_tensor *x);
nb_tensor *nb_full_like(const nb_tensor *x, double value);
/** @} */
/** The same data, cut off from the graph (a view: no copy). */
nb_tensor *nb_detach(nb_tensor *x);

/* ---------------------------------------------------------------------------------------------- */
/* Differentiable ops. Each returns its result on the current tape, or NULL on error.              */
/* Binary elementwise ops broadcast as NumPy does; both inputs must have the same dtype.           */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup ops Differentiable ops
 * Each returns its result on the current tape, or NULL on error. Binary elementwise ops broadcast as
 * NumPy does; both inputs must have the same dtype. */
/** @addtogroup ops
 * Integers: nb_add, nb_sub, nb_mul, nb_neg, nb_abs, nb_sign, nb_maximum, nb_minimum, the comparisons,
 * nb_where, nb_sum, nb_max, nb_min, nb_argmax and the everyday ops below also take i64 tensors and give
 * i64 results, which are never recorded. add, sub, mul, neg, abs and sum wrap on overflow (two's
 * complement: -INT64_MIN is INT64_MIN), as in PyTorch. nb_div,
 * nb_pow and nb_mean refuse i64 (no integer division: nb_cast to f64 first). */

/**
 * @defgroup ops_elementwise Elementwise ops
 * @ingroup ops
 * Arithmetic, functions and activations, element by element.
 * @{ */
nb_tensor *nb_add(nb_tensor *a, nb_tensor *b); /**< a + b */
nb_tensor *nb_sub(nb_tensor *a, nb_tensor *b); /**< a - b */
nb_tensor *nb_mul(nb_tensor *a, nb_tensor *b); /**< a * b */
nb_tensor *nb_div(nb_tensor *a, nb_tensor *b); /**< a / b */

/** Scalar forms: x + s, x * s, s - x, x / s, s / x (float32 tensors compute in float32). @{ */
nb_tensor *nb_add_scalar(nb_tensor *x, double s);
nb_tensor *nb_mul_scalar(nb_tensor *x, double s);
nb_tensor *nb_rsub_scalar(double s, nb_tensor *x);
nb_tensor *nb_div_scalar(nb_tensor *x, double s);
/** @} */
/** a * x + b in one op. */
nb_tensor *nb_affine(nb_tensor *x, double a, double b);

nb_tensor *nb_neg(nb_tensor *x);  /**< -x */
nb_tensor *nb_exp(nb_tensor *x);  /**< e^x */
nb_tensor *nb_log(nb_tensor *x);  /**< natural logarithm */
nb_tensor *nb_tanh(nb_tensor *x); /**< hyperbolic tangent */
/** 1 / (1 + exp(-x)), computed without overflow for any x. */
nb_tensor *nb_sigmoid(nb_tensor *x);
/** max(x, 0); the gradient at 0 is 0. NaN stays NaN and passes the gradient on, as in PyTorch. */
nb_tensor *nb_relu(nb_tensor *x);

/** @}
 * @defgroup ops_compare Comparisons and selection
 * @ingroup ops
 * Masks from comparisons, and choosing elements by a mask.
 * @{ */
/** Comparisons: 1 where true, 0 where false, in the inputs' dtype (i64 inputs: i64 0/1, which nb_sum
 * counts: nb_sum_all(nb_eq(nb_argmax(logits, 1, 0), labels)) is the number of correct predictions).
 * Not differentiable. */
nb_tensor *nb_eq(nb_tensor *a, nb_tensor *b); /**< a == b */
nb_tensor *nb_ne(nb_tensor *a, nb_tensor *b); /**< a != b */
nb_tensor *nb_lt(nb_tensor *a, nb_tensor *b); /**< a < b */
nb_tensor *nb_le(nb_tensor *a, nb_tensor *b); /**< a <= b */
nb_tensor *nb_gt(nb_tensor *a, nb_tensor *b); /**< a > b */
nb_tensor *nb_ge(nb_tensor *a, nb_tensor *b); /**< a >= b */

/** @}
 * @defgroup ops_matmul Matrix products
 * @ingroup ops
 * Batched matrix products on OpenBLAS.
 * @{ */
/** Matrix product with NumPy semantics: a [..., m, k] x b [..., k, n] -> [..., m, n], where the leading
 * (batch) dims broadcast; a 1-D a is a row vector and a 1-D b a column vector, and that dim is
 * dropped from the result. */
nb_tensor *nb_matmul(nb_tensor *a, nb_tensor *b);
/** op(a) op(b), where NB_TRANS_A / NB_TRANS_B in flags transpose the last two dims of a or b (no copy
 * is made: BLAS reads the transpose). Both operands need at least 2 dims. */
enum { NB_TRANS_A = 1u << 0 /**< transpose a */, NB_TRANS_B = 1u << 1 /**< transpose b */ };
/** op(a) op(b), with flags as above. */
nb_tensor *nb_matmul_ex(nb_tensor *a, nb_tensor *b, unsigned flags);
/** c + op(a) op(b), c broadcast to the product's shape, in one pass (BLAS adds the product into a
 * copy of c): a linear layer's x W^T + b, or a recurrent step's gx + h W^T. */
nb_tensor *nb_addmm(nb_tensor *c, nb_tensor *a, nb_tensor *b, unsigned flags);

/** @}
 * @defgroup ops_reduce Reductions and softmax
 * @ingroup ops
 * Sums, means, extrema, variances and normalisations over axes.
 * @{ */
/** Sum / mean over the listed axes (negative axes count from the end); naxes = 0 reduces all axes.
 * keepdim keeps reduced axes with extent 1. float32 sums accumulate in double. @{ */
nb_tensor *nb_sum(nb_tensor *x, int naxes, const int *axes, int keepdim);
nb_tensor *nb_mean(nb_tensor *x, int naxes, const int *axes, int keepdim);
/** @} */
/** Sum / mean of every element, as a 0-d tensor. @{ */
nb_tensor *nb_sum_all(nb_tensor *x);
nb_tensor *nb_mean_all(nb_tensor *x);
/** @} */
/** Sum a broadcast result back to shape (the reduction that undoes broadcasting). */
nb_tensor *nb_sum_to(nb_tensor *x, int ndim, const int64_t *shape);

/** @}
 * @defgroup ops_shape Shapes
 * @ingroup ops
 * Reshaping, transposing, broadcasting, casting, slicing, joining, splitting, padding.
 * @{ */
/** The same elements in a new shape (numel must match; one extent may be -1 and is inferred).
 * No copy is made: on the current tape, a view recorded like any op. With no current tape and x a
 * leaf (a view of a dataset tensor, say), a leaf view that you own and free with nb_tensor_free,
 * sharing x's data and version counter (writes through either are seen by both, and by any backward
 * that recorded either); freeing x first keeps the data alive for the view. Such a view never
 * requires grad, so a leaf that requires grad is refused (NB_ERR_STATE): reshape it on the tape. A
 * dataset may own it (nb_dataset_new); a parameter collection may not (it needs a gradient). With no
 * tape, an op result is refused. */
nb_tensor *nb_reshape(nb_tensor *x, int ndim, const int64_t *shape);
/** Swap two dimensions (a copy in the new row-major order). */
nb_tensor *nb_transpose(nb_tensor *x, int dim0, int dim1);
/** Reorder dimensions: result dim i is x's dim perm[i]. */
nb_tensor *nb_permute(nb_tensor *x, int ndim, const int *perm);
/** Broadcast x to shape (NumPy rules). */
nb_tensor *nb_broadcast_to(nb_tensor *x, int ndim, const int64_t *shape);
/** Convert to another dtype (differentiable between f32 and f64). */
nb_tensor *nb_cast(nb_tensor *x, nb_dtype dtype);

/** @}
 * @addtogroup ops_elementwise
 * @{ */
/* More elementwise ops. */
nb_tensor *nb_pow(nb_tensor *a, nb_tensor *b);      /**< a ^ b (broadcast); d/db = a^b log a, 0 where a = 0 */
/** Elementwise max and min: ties share the gradient equally; a NaN in either input gives NaN, and both
 * inputs the whole gradient there (as in PyTorch). @{ */
nb_tensor *nb_maximum(nb_tensor *a, nb_tensor *b);
nb_tensor *nb_minimum(nb_tensor *a, nb_tensor *b);
/** @} */
nb_tensor *nb_sub_scalar(nb_tensor *x, double s);   /**< x - s */
nb_tensor *nb_rdiv_scalar(double s, nb_tensor *x);  /**< s / x */
nb_tensor *nb_pow_scalar(nb_tensor *x, double p);   /**< x ^ p */
nb_tensor *nb_sqrt(nb_tensor *x);                   /**< square root */
nb_tensor *nb_abs(nb_tensor *x);                    /**< gradient sign(x), 0 at 0 */
nb_tensor *nb_sign(nb_tensor *x);                   /**< -1, 0, 1; not differentiable */
nb_tensor *nb_sin(nb_tensor *x);                    /**< sine */
nb_tensor *nb_cos(nb_tensor *x);                    /**< cosine */
nb_tensor *nb_erf(nb_tensor *x);                    /**< the error function */
nb_tensor *nb_log1p(nb_tensor *x);                  /**< log(1 + x), accurate near 0 */
nb_tensor *nb_expm1(nb_tensor *x);                  /**< e^x - 1, accurate near 0 */
nb_tensor *nb_leaky_relu(nb_tensor *x, double slope); /**< x where x > 0, else slope x */
nb_tensor *nb_elu(nb_tensor *x, double alpha);      /**< x where x > 0, else alpha (e^x - 1) */
nb_tensor *nb_softplus(nb_tensor *x);               /**< log(1 + e^x), stable for any x */
nb_tensor *nb_gelu(nb_tensor *x);                   /**< exact: x Phi(x) */
nb_tensor *nb_clamp(nb_tensor *x, double lo, double hi); /**< gradient 1 inside [lo, hi], 0 outside */
nb_tensor *nb_reciprocal(nb_tensor *x);             /**< 1 / x */
nb_tensor *nb_square(nb_tensor *x);                 /**< x^2 */
/** @}
 * @addtogroup ops_compare
 * @{ */
/** cond ? a : b elementwise, cond a mask (non-zero is true) of the same dtype; all three broadcast.
 * Differentiable in a and b. All three may be i64. */
nb_tensor *nb_where(nb_tensor *cond, nb_tensor *a, nb_tensor *b);

/** @}
 * @addtogroup ops_reduce
 * @{ */
/** Reductions over axes (naxes = 0: all). max/min send the gradient to the first maximal (minimal)
 * element of each reduced group. @{ */
nb_tensor *nb_max(nb_tensor *x, int naxes, const int *axes, int keepdim);
nb_tensor *nb_min(nb_tensor *x, int naxes, const int *axes, int keepdim);
/** @} */
/** log(sum(exp(x))) over the axes, shifted by the maximum so that it is finite for any finite input.
 * Over an empty axis it is -inf (the log of an empty sum) with an empty gradient, as in PyTorch. */
nb_tensor *nb_logsumexp(nb_tensor *x, int naxes, const int *axes, int keepdim);
/** Variance with `correction` subtracted from the count (1: unbiased, as torch.var's default): the sum
 * of squared deviations divided by max(0, count - correction), so NaN or infinity when count <=
 * correction (an empty axis too), as in PyTorch. */
nb_tensor *nb_var(nb_tensor *x, int naxes, const int *axes, int correction, int keepdim);
/** The standard deviation: sqrt of nb_var. */
nb_tensor *nb_std(nb_tensor *x, int naxes, const int *axes, int correction, int keepdim);
/** Index of the first maximal (minimal) element along axis, as an i64 tensor. Not differentiable. @{ */
nb_tensor *nb_argmax(nb_tensor *x, int axis, int keepdim);
nb_tensor *nb_argmin(nb_tensor *x, int axis, int keepdim);
/** @} */
/** Softmax and log-softmax along axis, stable for inputs of any finite magnitude. @{ */
nb_tensor *nb_softmax(nb_tensor *x, int axis);
nb_tensor *nb_log_softmax(nb_tensor *x, int axis);
/** @} */

/** @}
 * @addtogroup ops_shape
 * @{ */
/* Shape and indexing. All are differentiable in their tensor inputs (never in indices). */
/** x[..., start:stop:step, ...] along axis; negative start/stop count from the end and are clamped as
 * in Python; step > 0. */
nb_tensor *nb_slice(nb_tensor *x, int axis, int64_t start, int64_t stop, int64_t step);
/** Join n tensors along an existing axis (all other extents equal). */
nb_tensor *nb_concat(int n, nb_tensor *const *xs, int axis);
/** Join n tensors of equal shape along a new axis. */
nb_tensor *nb_stack(int n, nb_tensor *const *xs, int axis);
/** Split along axis into pieces of the given sizes (summing to the extent); outs[i] receives piece i. */
nb_status nb_split(nb_tensor *x, int axis, int n, const int64_t *sizes, nb_tensor **outs);
/** Split into n pieces of ceil(extent / n) (the last may be smaller; fewer if the extent is short:
 * the rest of outs is set to NULL); returns the number of pieces, or -1. */
int nb_chunk(nb_tensor *x, int n, int axis, nb_tensor **outs);
/** Remove an extent-1 axis / insert one (views; with no current tape and a leaf x, a leaf view that
 * you free, as nb_reshape). @{ */
nb_tensor *nb_squeeze(nb_tensor *x, int axis);
nb_tensor *nb_unsqueeze(nb_tensor *x, int axis);
/** @} */
/** Pad with a constant: pads[2*i], pads[2*i+1] elements before and after along dim i (ndim pairs). */
nb_tensor *nb_pad(nb_tensor *x, const int64_t *pads, double value);
/** @}
 * @defgroup ops_index Indexing
 * @ingroup ops
 * Selecting, gathering and scattering by i64 indices; one-hot rows.
 * @{ */
/** x's slices along axis at the i64 1-D indices idx (repeats allowed): the result has idx's length
 * there. Backward adds up the gradients of repeated indices. */
nb_tensor *nb_index_select(nb_tensor *x, int axis, nb_tensor *idx);
/** torch.gather: out[i][j][k] = x[i][idx[i][j][k]][k] for axis 1, idx i64 with x's ndim. */
nb_tensor *nb_gather(nb_tensor *x, int axis, nb_tensor *idx);
/** The adjoint of gather: zeros of shape with src added at idx along axis (repeats accumulate). */
nb_tensor *nb_scatter_add(int ndim, const int64_t *shape, int axis, nb_tensor *idx, nb_tensor *src);
/** One-hot rows of i64 labels: idx [...] -> [..., num_classes] in dtype. Not differentiable. */
nb_tensor *nb_one_hot(nb_tensor *idx, int64_t num_classes, nb_dtype dtype);

/** @}
 * @defgroup ops_everyday Everyday ops
 * @ingroup ops
 * Flipping, rolling, tiling, running sums and products, sorting, masking, triangles, einsum.
 * @{ */
/* Everyday ops: f32, f64 and i64 (einsum: f32 and f64). Results in the current tape's arena. */
/** x reversed along the listed axes (naxes = 0: all of them). */
nb_tensor *nb_flip(nb_tensor *x, int naxes, const int *axes);
/** x shifted by shift places along axis, what falls off the end coming back at the start (torch.roll
 * over one dim; a negative shift goes the other way). For several axes, roll once per axis. */
nb_tensor *nb_roll(nb_tensor *x, int64_t shift, int axis);
/** x tiled reps[d] times along dim d, as torch's x.repeat(reps): nreps >= x's ndim, x's dims aligned to
 * the end of reps (a longer reps adds leading dims). */
nb_tensor *nb_repeat(nb_tensor *x, int nreps, const int64_t *reps);
/** The same, fewer counts than dims allowed: the missing leading counts are 1 (torch.tile). */
nb_tensor *nb_tile(nb_tensor *x, int nreps, const int64_t *reps);
/** Running sum / product along axis (f32 accumulates in double; i64 wraps on overflow). The gradient
 * of cumprod is exact with zeros in x, to every order, and its graph under NB_CREATE_GRAPH is a few
 * tensors of x's size however many zeros x holds. @{ */
nb_tensor *nb_cumsum(nb_tensor *x, int axis);
nb_tensor *nb_cumprod(nb_tensor *x, int axis);
/** @} */
/** The positions along axis that sort x (i64, not differentiable), ascending or descending; stable:
 * equal elements keep their order in x, in both directions; NaN sorts above every number. */
nb_tensor *nb_argsort(nb_tensor *x, int axis, int descending);
/** x sorted along axis, differentiable (the gradient goes back to where each value came from; equal
 * elements are ordered as nb_argsort does); *indices, if not NULL, receives the positions. */
nb_tensor *nb_sort(nb_tensor *x, int axis, int descending, nb_tensor **indices);
/** The k largest (largest = 0: smallest) elements along axis, in sorted order, 0 <= k <= the extent;
 * among equal values the lower position comes first; differentiable; *indices as in nb_sort. */
nb_tensor *nb_topk(nb_tensor *x, int64_t k, int axis, int largest, nb_tensor **indices);
/** x with value wherever mask is non-zero; mask (any dtype) broadcasts to x's shape. Differentiable in x
 * (0 where filled). For i64 x, value must be an integer. */
nb_tensor *nb_masked_fill(nb_tensor *x, nb_tensor *mask, double value);
/** The matrices of the last two dims with the elements below (triu) or above (tril) the diagonal
 * zeroed: triu keeps column - row >= diagonal, tril keeps column - row <= diagonal (0: the main one).
 * @{ */
nb_tensor *nb_triu(nb_tensor *x, int64_t diagonal);
nb_tensor *nb_tril(nb_tensor *x, int64_t diagonal);
/** @} */
/** Einstein summation of 1 or 2 operands, as torch.einsum: "ij,jk->ik", "bij,bkj->bik", "i,j->ij",
 * "ij->ji", "ij->", "...ij,...jk->...ik". Without "->" the output is the "..." dims then the letters
 * used once, sorted. Extent-1 dims broadcast. A letter repeated within one operand (a diagonal or a
 * trace) is refused. Made of sums, permutes, reshapes and one matmul: differentiable to any order. */
nb_tensor *nb_einsum(const char *subscripts, int n, nb_tensor *const *xs);

/** @}
 * @defgroup ops_recurrent Fused recurrent steps
 * @ingroup ops
 * The pointwise part of an LSTM or GRU step as one op: one pass forward, one backward; the same
 * values as the equations written with nb_sigmoid, nb_tanh, nb_mul and nb_add.
 * @{ */
/** LSTM: gates [..., 4H] are the pre-activations of the input, forget, cell and output gates
 * (PyTorch's order), c [..., H] the cell state; returns [2, ..., H] holding h' = o tanh(c') and
 * c' = f c + i g (i, f, o = sigmoid, g = tanh); nb_slice along axis 0 gives each as a view. */
nb_tensor *nb_lstm_gates(nb_tensor *gates, nb_tensor *c);
/** GRU: xg = x W_ih^T + b_ih and hg = h W_hh^T + b_hh, both [..., 3H] (reset, update, new parts), h
 * [..., H]; returns h' = (1 - z) n + z h with r = sigmoid(xr + hr), z = sigmoid(xz + hz),
 * n = tanh(xn + r hn). */
nb_tensor *nb_gru_gates(nb_tensor *xg, nb_tensor *hg, nb_tensor *h);

/** @}
 * @defgroup ops_dropout Dropout
 * @ingroup ops
 * Random masks drawn from an explicit generator.
 * @{ */
/** A tape constant: each element 1 / (1 - p) with probability 1 - p, else 0. It takes exactly one draw
 * from rng (nb_rng_u64), the key of a counter-based stream: element i is a pure function of the key
 * and i, so the mask does not depend on the number of threads that make it. */
nb_tensor *nb_dropout_mask(nb_dtype dtype, int ndim, const int64_t *shape, double p, nb_rng *rng);
/** x * nb_dropout_mask(x's dtype and shape, p, rng), bit for bit, in one pass: inverted dropout (the
 * mask is remade from its key for the backward, never stored). Takes one draw from rng; p = 0
 * returns a view of x and draws nothing. */
nb_tensor *nb_dropout(nb_tensor *x, double p, nb_rng *rng);

/* ---------------------------------------------------------------------------------------------- */
/* Convolutional networks: convolutions, pooling, per-channel normalisation                        */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup ops_cnn Convolutions, pooling, normalisation
 * @ingroup ops
 * Tensors are [N, C, H, W] (2-D ops) or [N, C, L] (1-D ops), float32 or float64, all differentiable
 * to any order; 1-D ops read index 0 of the option arrays.
 * @{ */

/** Geometry of a convolution, per spatial dim (index 0 height, 1 width). */
typedef struct nb_conv_opts {
    int64_t stride[2];         /**< >= 1 */
    int64_t padding[2];        /**< zeros added before and after, >= 0 */
    int64_t dilation[2];       /**< spacing of the kernel's taps, >= 1 */
    int64_t groups;            /**< >= 1, dividing both channel counts (groups = C: depthwise) */
    int64_t output_padding[2]; /**< transposed convolutions: extra output positions at the end, smaller
                                    than the stride or the dilation */
    int same_padding;          /**< convolutions with stride 1: pad so that the output has the input's
                                    extents (padding ignored; an odd total puts the extra one after) */
} nb_conv_opts;
/** Stride 1, no padding, dilation 1, one group. A zeroed struct is invalid (stride 0): start from this. */
nb_conv_opts nb_conv_defaults(void);

/** Cross-correlation, as torch.nn.functional.conv2d: x [N, C, H, W], weight [O, C / groups, kh, kw],
 * bias [O] or NULL -> [N, O, Ho, Wo], Ho = (H + 2 padding - dilation (kh - 1) - 1) / stride + 1.
 * opts NULL: nb_conv_defaults(). */
nb_tensor *nb_conv2d(nb_tensor *x, nb_tensor *weight, nb_tensor *bias, const nb_conv_opts *opts);
/** The same in 1-D: x [N, C, L], weight [O, C / groups, k], bias [O] or NULL -> [N, O, Lo]. */
nb_tensor *nb_conv1d(nb_tensor *x, nb_tensor *weight, nb_tensor *bias, const nb_conv_opts *opts);
/** The adjoint of conv2d in its input (torch's conv_transpose2d): x [N, C, H, W], weight
 * [C, O / groups, kh, kw], bias [O] or NULL -> [N, O, Ho, Wo], Ho = (H - 1) stride - 2 padding +
 * dilation (kh - 1) + output_padding + 1. */
nb_tensor *nb_conv_transpose2d(nb_tensor *x, nb_tensor *weight, nb_tensor *bias, const nb_conv_opts *opts);
/** The same in 1-D: x [N, C, L], weight [C, O / groups, k], bias [O] or NULL -> [N, O, Lo]. */
nb_tensor *nb_conv_transpose1d(nb_tensor *x, nb_tensor *weight, nb_tensor *bias, const nb_conv_opts *opts);
/** The gradient of conv2d's weight (torch.nn.grad.conv2d_weight): for x [N, C, H, W] and grad_out
 * [N, O, Ho, Wo] (conv2d's output extents for a kh x kw kernel and opts) -> [O, C / groups, kh, kw]. */
nb_tensor *nb_conv2d_weight(nb_tensor *x, nb_tensor *grad_out, int64_t kh, int64_t kw, const nb_conv_opts *opts);

/** Pooling windows. A zeroed struct (or NULL) gives the defaults. */
typedef struct nb_pool_opts {
    int64_t stride[2];   /**< 0: the kernel size (PyTorch's default) */
    int64_t padding[2];  /**< at most half the kernel; max pooling pads with -infinity */
    int64_t dilation[2]; /**< max pooling only; 0: 1 */
    int ceil_mode;       /**< round the output extents up (a window starting in the right padding is
                              dropped) */
    int exclude_pad;     /**< average pooling: divide by the input elements in the window only
                              (count_include_pad = False) */
} nb_pool_opts;
/** The defaults: stride = kernel, no padding, dilation 1, floor, padding counted. */
nb_pool_opts nb_pool_defaults(void);

/** Max pooling [N, C, H, W] -> [N, C, Ho, Wo] over kh x kw windows, Ho as for conv2d (ceil_mode:
 * rounded up). The gradient goes to the first maximum of each window (a NaN counts as the maximum). */
nb_tensor *nb_max_pool2d(nb_tensor *x, int64_t kh, int64_t kw, const nb_pool_opts *opts);
/** The same, and *indices receives an i64 tensor [N, C, Ho, Wo] on the tape: each maximum's flat
 * position h W + w in its plane, as torch's return_indices. */
nb_tensor *nb_max_pool2d_with_indices(nb_tensor *x, int64_t kh, int64_t kw, const nb_pool_opts *opts,
                                      nb_tensor **indices);
/** Max pooling in 1-D: [N, C, L] -> [N, C, Lo] over windows of k. */
nb_tensor *nb_max_pool1d(nb_tensor *x, int64_t k, const nb_pool_opts *opts);
/** Average pooling over kh x kw (1-D: k) windows; the divisor is the window's size including padding
 * (exclude_pad: without it). @{ */
nb_tensor *nb_avg_pool2d(nb_tensor *x, int64_t kh, int64_t kw, const nb_pool_opts *opts);
nb_tensor *nb_avg_pool1d(nb_tensor *x, int64_t k, const nb_pool_opts *opts);
/** @} */
/** Adaptive average pooling to oh x ow outputs (1-D: size), window i spanning floor(i H / oh) to
 * ceil((i + 1) H / oh) (oh = ow = 1: global average pooling). @{ */
nb_tensor *nb_adaptive_avg_pool2d(nb_tensor *x, int64_t oh, int64_t ow);
nb_tensor *nb_adaptive_avg_pool1d(nb_tensor *x, int64_t size);
/** @} */

/** Per-channel statistics of x [N, C, ...] (at least 2 dims): [2, C], row 0 the mean and row 1 the
 * biased variance of each channel over every other dim. */
nb_tensor *nb_channel_moments(nb_tensor *x);
/** (x - mean) / sqrt(var + eps) * weight + bias per channel of x [N, C, ...], with stats [2, C] holding
 * mean and var (from nb_channel_moments: batch normalisation in training mode; running statistics:
 * evaluation mode). weight, bias [C] or NULL (1 and 0). Differentiable in all four. */
nb_tensor *nb_channel_norm(nb_tensor *x, nb_tensor *stats, nb_tensor *weight, nb_tensor *bias, double eps);
/** Batch normalisation with x's own statistics (training mode): the values of
 * nb_channel_norm(x, nb_channel_moments(x), weight, bias, eps) from one fused op, each channel's passes
 * running while its values are in cache. stats (may be NULL) receives the [2, C] mean and biased
 * variance as a constant on the tape (for running statistics); the result stays differentiable in x,
 * weight and bias to any order. An input with no values (batch 0) gives an empty result, NaN statistics
 * and zero gradients for weight and bias, as torch.nn.functional.batch_norm. */
nb_tensor *nb_batch_norm_train(nb_tensor *x, nb_tensor *weight, nb_tensor *bias, double eps, nb_tensor **stats);
/** nb_max_pool2d(nb_relu(nb_batch_norm_train(x, weight, bias, eps, stats)), kh, kw, NULL) in one op: x
 * [N, C, H, W] -> [N, C, H / kh, W / kw], windows kh x kw of stride kh x kw (no padding, the last rows or
 * columns that fill no window are left out). The same values, statistics and gradients (to any order) as
 * that composition, with a third of its memory traffic: the block a conv-bn-relu-pool network repeats. */
nb_tensor *nb_batch_norm_relu_max_pool2d(nb_tensor *x, nb_tensor *weight, nb_tensor *bias, double eps, int64_t kh,
                                         int64_t kw, nb_tensor **stats);

/* ---------------------------------------------------------------------------------------------- */
/* Custom ops                                                                                      */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup custom Custom ops
 * New ops defined outside the library: a forward over raw buffers and a backward.
 * @{ */

/** An op defined outside the library. forward fills out (already allocated with the shape and dtype
 * given to nb_custom) from the inputs' buffers. Give one of the two backwards:
 *   backward:     build gin[i] (input i's shape, or NULL if not needed) from nabla ops; then
 *                 gradients of gradients work through the op.
 *   backward_raw: fill the preallocated gin[i] buffers (NULL where not needed) directly; then a
 *                 backward with NB_CREATE_GRAPH through the op fails with a clear error.
 * Each returns NB_OK or an error status (record a message with nb_error_set). The struct and user
 * must outlive the tapes that record the op. */
typedef struct nb_custom_op {
    const char *name; /**< shown in errors and graph exports (borrowed) */
    /** required: fill out from in */
    nb_status (*forward)(void *user, int n_in, const nb_tensor *const *in, nb_tensor *out);
    /** composed backward (or NULL): gin[i] made with nabla ops */
    nb_status (*backward)(void *user, int n_in, nb_tensor *const *in, nb_tensor *out, nb_tensor *gout,
                          nb_tensor **gin);
    /** raw backward (or NULL): fill the buffers gin[i] */
    nb_status (*backward_raw)(void *user, int n_in, const nb_tensor *const *in, const nb_tensor *out,
                              const nb_tensor *gout, nb_tensor *const *gin);
    void *user; /**< passed to each function */
} nb_custom_op;

/** Apply a custom op to n_in inputs (at most 16), producing a result of the given dtype and shape on
 * the current tape. */
nb_tensor *nb_custom(const nb_custom_op *op, int n_in, nb_tensor *const *in, nb_dtype dtype, int ndim,
                     const int64_t *shape);
/** Record an error from user code (a custom op, a gradient hook), as the library does. */
void nb_error_set(nb_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---------------------------------------------------------------------------------------------- */
/* Looking inside                                                                                  */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup inspect Looking inside
 * Graph export, anomaly detection and gradient hooks.
 * @{ */

/** Write the graph recorded on tape as Graphviz DOT: the nodes leading to output (all nodes if output
 * is NULL), each with its op, output shape and dtype; leaves and constants as boxes (with their
 * names); edges from inputs to outputs. */
nb_status nb_tape_write_dot(const nb_tape *tape, const nb_tensor *output, FILE *f);

/** Anomaly mode (process-wide, off by default): after every op in forward and every backward rule,
 * look for NaN or infinity and fail with NB_ERR_NUMERIC naming the op, its node index, and (in
 * backward) the forward op the rule belongs to. Slows everything down; for debugging. */
void nb_set_anomaly_mode(int on);
/** Whether anomaly mode is on. */
int nb_anomaly_mode(void);

/** A gradient hook: called during backward with the gradient arriving at t (the total of the pass);
 * returns the gradient to use instead (grad itself to keep it, or a new tensor of the same shape and
 * dtype made with nabla ops; a tensor of another tape, or a leaf, is copied onto the backward's tape),
 * or NULL to fail the backward. Do not write into grad's buffer: it may be
 * the gradient of other tensors too, which would change with it (not detected); make a new tensor.
 * One hook per tensor; NULL removes it. For an op result the hook lasts as long as the tensor. */
typedef nb_tensor *(*nb_grad_hook)(nb_tensor *grad, void *user);
/** Set t's gradient hook (see nb_grad_hook); user is passed to it. Refused for a view made without a
 * tape (it has no gradient). */
nb_status nb_tensor_set_hook(nb_tensor *t, nb_grad_hook hook, void *user);

/** A post-accumulate hook of a leaf: nb_backward calls it once per pass in which it added to the
 * leaf's gradient, as soon as the leaf's total for the pass is complete and added into
 * nb_tensor_grad(leaf) (while the rest of the backward still runs: the leaf's last use on the tape
 * has been processed). Leaves are finished in decreasing order of the tape position of their first
 * use, so the same program calls the hooks in the same order every time. Gradient communication
 * overlaps backward this way (nabla/dist.h). A status other than NB_OK fails the backward with it
 * (record a message with nb_error_set). nb_grad does not call it. Leaves only; NULL removes it. */
typedef nb_status (*nb_post_accumulate_hook)(nb_tensor *leaf, void *user);
/** Set leaf's post-accumulate hook (see nb_post_accumulate_hook); user is passed to it. Refused for a
 * view made without a tape (it has no gradient). */
nb_status nb_tensor_set_post_accumulate_hook(nb_tensor *leaf, nb_post_accumulate_hook hook, void *user);

/* ---------------------------------------------------------------------------------------------- */
/* Gradient checking                                                                               */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup gradcheck Gradient checking
 * Backward against central finite differences, to first and second order.
 * @{ */

/** Builds one output from the inputs using nabla ops. Called many times; must be deterministic. */
typedef nb_tensor *(*nb_func)(void *user, nb_tensor *const *inputs);

/** Most inputs a checked function may have. */
#define NB_GRADCHECK_MAX_INPUTS 32

/** Options of the checks; NULL gives the defaults. */
typedef struct nb_gradcheck_opts {
    double eps;  /**< central-difference step (default 1e-6, also for eps <= 0) */
    double atol; /**< pass when |analytic - numeric| <= atol + rtol * |numeric| (default 1e-5; negative:
                      the default, so that 0 is a valid tolerance) */
    double rtol; /**< (default 1e-3; negative: the default) */
    uint64_t seed; /**< gradgradcheck: seed of the random output weights (default 0) */
} nb_gradcheck_opts;

/** What a check found for one input. */
typedef struct nb_gradcheck_input_report {
    int checked;          /**< 0 if the input does not require grad (then it is held constant) */
    int ok;               /**< 1 when every element passed */
    double max_abs_err;   /**< largest |analytic - numeric| over the Jacobian block */
    double max_rel_err;   /**< largest |analytic - numeric| / max(|numeric|, tiny) */
    int64_t worst_index;  /**< flat index of the input element with the largest violation */
    int64_t worst_output; /**< flat index of the output element there */
    double analytic;      /**< the value from backward at that spot */
    double numeric;       /**< the finite difference there */
} nb_gradcheck_input_report;

/** The result of nb_gradcheck or nb_gradgradcheck, printed by nb_gradcheck_report_print. */
typedef struct nb_gradcheck_report {
    int ok;            /**< the check passed */
    int completed;     /**< the comparison ran (0: the function or a backward failed; see message) */
    int deterministic; /**< two backward passes gave identical Jacobians */
    int n_inputs;      /**< entries of input[] used */
    nb_gradcheck_input_report input[NB_GRADCHECK_MAX_INPUTS]; /**< one per input */
    char message[512]; /**< a summary line, or why the check could not run */
} nb_gradcheck_report;

/** Compare the Jacobian from backward with central finite differences, for every float64 input that
 * requires grad. inputs are caller-owned leaves; their values are restored on return. opts NULL
 * gives PyTorch's defaults. report may be NULL. Returns NB_OK when the check passes, NB_ERR_NUMERIC
 * when it fails, another status when it could not run. Uses private tapes: no tape need be current. */
nb_status nb_gradcheck(nb_func f, void *user, int n_inputs, nb_tensor *const *inputs,
                       const nb_gradcheck_opts *opts, nb_gradcheck_report *report);
/** The same check applied to the gradient: the function x -> d<f(x), v>/dx, with v a fixed random
 * tensor, differentiated through NB_CREATE_GRAPH. */
nb_status nb_gradgradcheck(nb_func f, void *user, int n_inputs, nb_tensor *const *inputs,
                           const nb_gradcheck_opts *opts, nb_gradcheck_report *report);
/** Print a report, one line per input. */
void nb_gradcheck_report_print(const nb_gradcheck_report *report, FILE *f);

/** @} */

#ifdef __cplusplus
}
#endif

#include "nabla/nn.h"
#include "nabla/train.h"
#include "nabla/dist.h"

#endif /* NABLA_H */
