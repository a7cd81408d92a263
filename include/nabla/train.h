/**
 * @file
 * nabla/train: what turns gradients into trained models. Optimizers, learning-rate schedules,
 * gradient clipping and early stopping work on a parameter collection (nb_params); datasets feed
 * batches onto the current tape; checkpoints are safetensors files. Included by nabla.h.
 *
 * Ownership: every object here is created by `nb_<object>_new` (or a reader) and freed by
 * `nb_<object>_free`, which accepts NULL. An optimizer, schedule or early stopper borrows the
 * collection (or optimizer) it was made for, which must outlive it. Fallible functions return a
 * status and record a message (nb_error_message).
 */
#ifndef NABLA_TRAIN_H
#define NABLA_TRAIN_H

#ifndef NABLA_H
#error "include <nabla.h>, not <nabla/train.h>"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------- */
/* Optimizers                                                                                      */
/* ---------------------------------------------------------------------------------------------- */
/**
 * @defgroup optim Optimizers
 * torch.optim's algorithms over a parameter collection, with parameter groups.
 * @{ */

/** Optimization algorithms, each as its torch.optim namesake. */
typedef enum nb_optim_kind {
    NB_SGD = 0, /**< SGD, with momentum, dampening and Nesterov */
    NB_ADAM,    /**< Adam (amsgrad) */
    NB_ADAMW,   /**< AdamW: decoupled weight decay */
    NB_RMSPROP, /**< RMSprop (centered, momentum) */
    NB_ADAGRAD, /**< Adagrad */
    NB_NADAM,   /**< NAdam as torch >= 2.0 (1.13 multiplies mu_product_next by one mu too many,
                     pytorch/pytorch#92699) */
    NB_RADAM,   /**< RAdam */
    NB_ADAMAX,  /**< Adamax */
    NB_ADADELTA, /**< Adadelta */
    NB_LBFGS, /**< full-batch: steps through nb_optim_step_closure */
    NB_OPTIM_KIND_COUNT /**< the number of kinds (not a kind) */
} nb_optim_kind;

/** L-BFGS line searches (torch.optim.LBFGS's line_search_fn None and "strong_wolfe"). */
enum { NB_LINE_SEARCH_NONE = 0 /**< none */, NB_LINE_SEARCH_STRONG_WOLFE = 1 /**< strong Wolfe */ };

/** Hyper-parameters, with the meaning (and, from nb_optim_defaults, the defaults) of torch.optim. */
typedef struct nb_optim_opts {
    double lr;            /**< learning rate */
    double weight_decay;  /**< L2 term added to the gradient; AdamW: decoupled decay lr * wd * p */
    double momentum;      /**< SGD, RMSprop */
    double dampening;     /**< SGD */
    int nesterov;         /**< SGD (needs momentum > 0 and dampening 0) */
    double beta1;         /**< Adam, AdamW, NAdam, RAdam, Adamax */
    double beta2;         /**< Adam, AdamW, NAdam, RAdam, Adamax */
    double eps;           /**< all but SGD and L-BFGS */
    int amsgrad;          /**< Adam, AdamW */
    double alpha;         /**< RMSprop smoothing constant */
    int centered;         /**< RMSprop */
    double lr_decay;      /**< Adagrad */
    double initial_accumulator; /**< Adagrad */
    double momentum_decay; /**< NAdam (torch's psi, default 4e-3) */
    double rho;           /**< Adadelta */
    /* L-BFGS (torch.optim.LBFGS) */
    int max_iter;         /**< iterations per step (default 20) */
    int max_eval;         /**< closure calls per step (default 25, torch's max_iter * 5 / 4) */
    double tolerance_grad;   /**< stop when max |g| <= this (default 1e-7) */
    double tolerance_change; /**< stop when the loss or the step change by less (default 1e-9) */
    int history_size;     /**< curvature pairs kept (default 100) */
    int line_search;      /**< NB_LINE_SEARCH_NONE (default) or NB_LINE_SEARCH_STRONG_WOLFE */
} nb_optim_opts;

/** torch.optim's defaults for kind (lr 1e-3 for Adam/AdamW/RAdam, 2e-3 NAdam/Adamax, 1e-2 SGD/RMSprop/
 * Adagrad, 1 Adadelta/L-BFGS). */
nb_optim_opts nb_optim_defaults(nb_optim_kind kind);

/** An optimizer: its options, per-parameter state and step counts (opaque). */
typedef struct nb_optim nb_optim;

/** An optimizer over the trainable tensors of params (opts NULL: the defaults), all in one group.
 * Its per-parameter state is allocated here, once. */
nb_optim *nb_optim_new(nb_optim_kind kind, nb_params *params, const nb_optim_opts *opts);

/** A parameter group (torch.optim's param_groups): the parameters whose names start with prefix
 * (NULL: none by name) and the n_params tensors listed, with their own options (all fields: start from
 * a copy of the optimizer's and change what differs) and a frozen flag. */
typedef struct nb_optim_group {
    const char *prefix;       /**< parameters whose names start with it (NULL: none by name) */
    int n_params;             /**< entries of params */
    nb_tensor *const *params; /**< parameters listed one by one */
    nb_optim_opts opts;       /**< the group's options, all fields */
    int frozen;               /**< 1: the group is not updated */
} nb_optim_group;

/** An optimizer with groups: group 0 holds the parameters no spec selects, with opts (NULL: the
 * defaults); group k = 1..n_groups those that specs[k - 1] selects. A parameter selected twice, a
 * listed tensor that is not a trainable parameter of params, or a spec that selects nothing is
 * refused; so are groups for L-BFGS (one group, as in torch). specs are copied. */
nb_optim *nb_optim_new_groups(nb_optim_kind kind, nb_params *params, const nb_optim_opts *opts, int n_groups,
                              const nb_optim_group *specs);
/** Frees the optimizer and its state. NULL is ignored. */
void nb_optim_free(nb_optim *opt);
/** One update of every parameter that has a gradient: a single fused pass over the parameter, its
 * gradient and its state. A parameter is skipped, its state and count kept, when it has no gradient
 * since the last zero_grad (nb_tensor_has_grad: PyTorch's None), when it does not require grad
 * (nb_tensor_set_requires_grad(p, 0) freezes it: unfreezing continues from the kept state) or when
 * its group is frozen. Refused for L-BFGS. */
nb_status nb_optim_step(nb_optim *opt);
/** What nb_optim_step_closure calls: zero the gradients, build the loss on the current tape, run
 * nb_backward, reset the tape if it likes, and store the loss in *loss; a failure status stops the
 * step (the parameters are left as the optimizer had them then: never between two trial points).
 * L-BFGS does not look for NaN or infinity in the loss or the gradients (torch.optim.LBFGS neither,
 * and nabla follows it step for step, to NaN parameters): return a failure status for them (with
 * nb_set_anomaly_mode(1) the first op or backward rule that makes one fails). */
typedef nb_status (*nb_optim_closure)(void *user, double *loss);
/** One step that may evaluate the loss again (torch's step(closure)): L-BFGS calls closure up to
 * max_eval times, every other kind once before its update. *loss (may be NULL) gets the first
 * evaluation's loss. */
nb_status nb_optim_step_closure(nb_optim *opt, nb_optim_closure closure, void *user, double *loss);
/** Zero the gradients of the optimizer's parameters (nb_tensor_zero_grad: buffers kept). */
void nb_optim_zero_grad(nb_optim *opt);
/** Group 0's lr; nb_optim_set_lr sets every group's (a NULL optimizer or an lr that is not >= 0, NaN
 * included, records NB_ERR_ARG and changes nothing). @{ */
double nb_optim_lr(const nb_optim *opt);
void nb_optim_set_lr(nb_optim *opt, double lr);
/** @} */
/** Steps taken (restored by nb_checkpoint_load). */
int64_t nb_optim_steps(const nb_optim *opt);
/** The optimizer's algorithm. */
nb_optim_kind nb_optim_get_kind(const nb_optim *opt);
/** "sgd", "adam", "adamw", "rmsprop", "adagrad", "nadam", "radam", "adamax", "adadelta", "lbfgs"
 * ("?" for an unknown kind). */
const char *nb_optim_kind_name(nb_optim_kind kind);
/** The optimizer's state tensors (exp_avg, momentum buffers...), owned by it, named
 * "<param>.<state>" ("fc.weight.exp_avg", say) for checkpoints. L-BFGS keeps per parameter its
 * slices of d, prev_flat_grad, old_dirs and old_stps ([history_size, numel], a ring), and under the
 * first parameter's name ro [history_size] and scalars (t, H_diag, prev_loss, n_iter, func_evals,
 * history length, ring start). Their count, the i-th, its name. @{ */
int nb_optim_state_count(const nb_optim *opt);
nb_tensor *nb_optim_state_tensor(const nb_optim *opt, int i);
const char *nb_optim_state_name(const nb_optim *opt, int i);
/** @} */
/** Set the step counter, and every parameter's own count, to steps. */
nb_status nb_optim_set_steps(nb_optim *opt, int64_t steps);
/** The parameters the optimizer updates (the trainable f32/f64 tensors of its collection, in order), and
 * each one's own count of updates: a parameter without a gradient at a step is skipped, as in PyTorch,
 * so its count (and Adam's bias correction) can lag the optimizer's. Checkpoints keep these counts. @{ */
int nb_optim_param_count(const nb_optim *opt);
int64_t nb_optim_param_steps(const nb_optim *opt, int i);
nb_status nb_optim_set_param_steps(nb_optim *opt, int i, int64_t steps);
/** @} */

/** Groups: how many (1 + n_groups), the group of parameter i (-1 if out of range), a group's lr,
 * options and frozen flag (NaN / -1 / NB_ERR_ARG for a bad index). Checkpoints keep them. @{ */
int nb_optim_group_count(const nb_optim *opt);
int nb_optim_param_group(const nb_optim *opt, int i);
double nb_optim_group_lr(const nb_optim *opt, int group);
nb_status nb_optim_group_set_lr(nb_optim *opt, int group, double lr);
nb_status nb_optim_group_opts(const nb_optim *opt, int group, nb_optim_opts *out);
/** @} */
/** New options for a group, checked as nb_optim_new's; the fields that decide which state exists
 * (momentum zero or not for SGD/RMSprop, amsgrad, centered, history_size, line_search) cannot
 * change. */
nb_status nb_optim_group_set_opts(nb_optim *opt, int group, const nb_optim_opts *opts);
/** Whether group is frozen (-1 for a bad index). */
int nb_optim_group_frozen(const nb_optim *opt, int group);
/** A frozen group's parameters are not updated; their state and counts are kept. */
nb_status nb_optim_group_set_frozen(nb_optim *opt, int group, int frozen);

/* ---------------------------------------------------------------------------------------------- */
/* Learning-rate schedules                                                                         */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup sched Learning-rate schedules
 * torch.optim.lr_scheduler's schedules, stepped once per epoch (or per step).
 * @{ */

/** Every schedule sets each group's lr from that group's base (its lr when the schedule is made), as
 * torch's schedulers scale each group's initial_lr. An epoch is whatever the caller steps by. */
typedef enum nb_sched_kind {
    NB_SCHED_STEP = 0,    /**< lr = base * gamma^(floor(epoch / step_size)) */
    NB_SCHED_MULTISTEP,   /**< lr = base * gamma^(number of milestones <= epoch) */
    NB_SCHED_EXPONENTIAL, /**< lr = base * gamma^epoch */
    NB_SCHED_COSINE,      /**< linear warm-up from base * warmup_start over warmup epochs, then cosine
                             annealing to eta_min at t_max */
    NB_SCHED_PLATEAU,     /**< lr *= factor after `patience` epochs without improvement of the metric */
    NB_SCHED_LAMBDA,      /**< lr = base * fn(epoch, group, fn_user) (torch's LambdaLR) */
    NB_SCHED_ONECYCLE,    /**< torch's OneCycleLR over total_steps steps: the base is the peak (max_lr);
                             from base / div_factor up to base, then down to base / div_factor /
                             final_div_factor; optionally cycles SGD/RMSprop momentum or beta1 */
    NB_SCHED_WARM_RESTARTS, /**< torch's CosineAnnealingWarmRestarts: cosine from base to eta_min over
                               t_0 epochs, restarting, each period t_mult times the last */
    NB_SCHED_KIND_COUNT /**< the number of kinds (not a kind) */
} nb_sched_kind;

/** Most milestones of NB_SCHED_MULTISTEP. */
#define NB_SCHED_MAX_MILESTONES 32

/** LAMBDA's factor of the base lr at epoch for group (>= 0 and finite, else the step fails). */
typedef double (*nb_sched_fn)(int64_t epoch, int group, void *user);

/** Options of nb_sched_new: start from nb_sched_defaults(kind); each field names the kinds it serves. */
typedef struct nb_sched_opts {
    int64_t step_size;                               /**< STEP */
    double gamma;                                    /**< STEP, MULTISTEP, EXPONENTIAL */
    int n_milestones;                                /**< MULTISTEP */
    int64_t milestones[NB_SCHED_MAX_MILESTONES];     /**< MULTISTEP: increasing epochs */
    int64_t t_max;                                   /**< COSINE: total epochs, warm-up included */
    double eta_min;                                  /**< COSINE, WARM_RESTARTS */
    int64_t warmup;                                  /**< COSINE: warm-up epochs (0: none) */
    double warmup_start;                             /**< COSINE: first warm-up factor (0.1, say) */
    int maximize;                                    /**< PLATEAU: the metric improves upwards */
    double factor;                                   /**< PLATEAU (default 0.1) */
    int64_t patience;                                /**< PLATEAU (default 10) */
    double threshold;                                /**< PLATEAU, relative (default 1e-4) */
    int64_t cooldown;                                /**< PLATEAU */
    double min_lr;                                   /**< PLATEAU */
    nb_sched_fn fn;                                  /**< LAMBDA */
    void *fn_user;                                   /**< LAMBDA: passed to fn */
    int64_t total_steps;                             /**< ONECYCLE: steps of the cycle */
    double pct_start;                                /**< ONECYCLE: share of the rising phase (0.3) */
    int anneal_linear;                               /**< ONECYCLE: linear instead of cosine */
    int three_phase;                                 /**< ONECYCLE: torch's three_phase */
    double div_factor;                               /**< ONECYCLE (25) */
    double final_div_factor;                         /**< ONECYCLE (1e4) */
    int cycle_momentum;                              /**< ONECYCLE (default 1) */
    double base_momentum;                            /**< ONECYCLE (0.85) */
    double max_momentum;                             /**< ONECYCLE (0.95) */
    int64_t t_0;                                     /**< WARM_RESTARTS: first period (>= 1) */
    int64_t t_mult;                                  /**< WARM_RESTARTS: its growth (>= 1) */
} nb_sched_opts;

/** torch.optim.lr_scheduler's defaults where it has them. */
nb_sched_opts nb_sched_defaults(nb_sched_kind kind);

/** A learning-rate schedule driving an optimizer (opaque). */
typedef struct nb_sched nb_sched;

/** A schedule driving opt's learning rates from their current values (the bases); it sets them for
 * epoch 0 now. ONECYCLE with cycle_momentum needs an optimizer with beta1 (Adam, AdamW, NAdam,
 * RAdam, Adamax; momenta in [0, 1)) or with momentum > 0 (SGD, RMSprop; momenta > 0, where torch
 * also takes 0: their momentum buffer exists only for a momentum > 0), and sets it to max_momentum. */
nb_sched *nb_sched_new(nb_sched_kind kind, nb_optim *opt, const nb_sched_opts *opts);
/** Frees the schedule (the optimizer keeps its last lr). NULL is ignored. */
void nb_sched_free(nb_sched *s);
/** End of an epoch: advance and set the optimizer's lr; metric is read by PLATEAU only. Returns the
 * new lr of group 0 (NaN on error: ONECYCLE past total_steps, a bad LAMBDA factor). */
double nb_sched_step(nb_sched *s, double metric);
/** Jump to epoch (torch's step(epoch)): any epoch >= 0 for WARM_RESTARTS, fractional ones included
 * (epoch + batch / batches), whole epochs for the other kinds but PLATEAU. Returns as nb_sched_step. */
double nb_sched_set_epoch(nb_sched *s, double epoch);

/* ---------------------------------------------------------------------------------------------- */
/* Clipping and early stopping                                                                     */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup clip Clipping and early stopping
 * Gradient clipping, and stopping when a metric stops improving (best weights kept).
 * @{ */

/** Scale every gradient of params by max_norm / (norm + 1e-6) when the global L2 norm exceeds
 * max_norm; returns the norm before clipping (NaN on error). */
double nb_clip_grad_norm(nb_params *params, double max_norm);
/** Clamp every gradient element to [-clip, clip]. */
nb_status nb_clip_grad_value(nb_params *params, double clip);

/** An early stopper: a metric's best value and a copy of the parameters there (opaque). */
typedef struct nb_early_stop nb_early_stop;

/** Watches a metric once per epoch; keeps a copy of params at the best value. */
nb_early_stop *nb_early_stop_new(nb_params *params, int64_t patience, double min_delta, int maximize);
/** Frees the stopper and its copy. NULL is ignored. */
void nb_early_stop_free(nb_early_stop *es);
/** Report this epoch's metric: returns 1 when training should stop (no improvement by more than
 * min_delta for `patience` epochs), 0 to go on, -1 on error. */
int nb_early_stop_update(nb_early_stop *es, double metric);
/** Copy the best parameters back into the collection. */
nb_status nb_early_stop_restore(nb_early_stop *es);
/** The best metric reported so far. */
double nb_early_stop_best(const nb_early_stop *es);
int64_t nb_early_stop_best_epoch(const nb_early_stop *es); /**< 0-based; -1 before any update */

/* ---------------------------------------------------------------------------------------------- */
/* Data                                                                                            */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup data Data
 * Datasets, shuffled batches on the current tape, IDX files, byte vocabularies.
 * @{ */

/** A dataset: inputs and optional targets, one sample per row (opaque). */
typedef struct nb_dataset nb_dataset;

/** Samples are the rows (dim 0) of inputs and targets (targets may be NULL; same row count). The
 * dataset takes ownership of both leaves (nb_tensor_claim; also when it fails, so a constructor call
 * can be passed straight in) and frees them with itself. Leaves that require grad, op results and 0-d
 * tensors are refused, and so are leaves that have an owner already (a collection, another
 * dataset...): those, and op results, are left untouched when it fails. A view made without a tape is
 * a leaf like any other: nb_dataset_new(nb_reshape(x, NB_SHAPE(n, 1, 28, 28)), y) with no current tape
 * owns the view, which keeps x's data alive whether x is freed before or after the dataset. */
nb_dataset *nb_dataset_new(nb_tensor *inputs, nb_tensor *targets);
/** Frees the dataset (and the leaves it owns; a split view owns none). NULL is ignored. */
void nb_dataset_free(nb_dataset *d);
/** The number of samples (-1 for NULL). */
int64_t nb_dataset_size(const nb_dataset *d);
/** The underlying tensors (all rows, owned by the dataset they came from). @{ */
nb_tensor *nb_dataset_inputs(const nb_dataset *d);
nb_tensor *nb_dataset_targets(const nb_dataset *d);
/** @} */
/** A seeded random split into two views of d (no data copied): val gets round(fraction * size)
 * samples. The views borrow d's tensors: free them before d. */
nb_status nb_dataset_split(const nb_dataset *d, double val_fraction, uint64_t seed, nb_dataset **train,
                           nb_dataset **val);

/** An iterator over a dataset's batches, epoch after epoch (opaque). */
typedef struct nb_batches nb_batches;

/** Batches over d (borrowed: it must outlive the batches), shuffled with a seeded stream when shuffle is set (a new order every epoch, the
 * same orders for the same seed); drop_last skips a final short batch. */
nb_batches *nb_batches_new(const nb_dataset *d, int64_t batch_size, int shuffle, int drop_last, uint64_t seed);
/** Frees the iterator (not the dataset). NULL is ignored. */
void nb_batches_free(nb_batches *b);
/** The next batch of the epoch as constants on the current tape (rows gathered, nothing else
 * copied): returns 1 with *x (and *y when targets exist) set, 0 at the end of the epoch (the next
 * call starts a new epoch), -1 on error. */
int nb_batches_next(nb_batches *b, nb_tensor **x, nb_tensor **y);
/** Batches of variable-length sequences. d's inputs hold one padded sequence per row ([N, T, ...],
 * padding after each sequence's end) and lengths[i] in 1..T is the length of sample i of d (copied).
 * Each epoch the samples are shuffled (when shuffle is set), sorted by length within windows of
 * `window` batches (ties keep the shuffled order; a window of at least the number of batches sorts the
 * whole epoch), cut into batches, and the full batches shuffled again (a shorter last batch stays last):
 * sequences of similar length share a batch, so little work goes into padding. nb_batches_next then
 * returns x cut to the batch's longest sequence along dim 1 (targets are returned whole), and
 * nb_batches_lengths the batch's lengths. */
nb_batches *nb_batches_by_length(const nb_dataset *d, const int64_t *lengths, int64_t batch_size, int64_t window,
                                 int shuffle, uint64_t seed);
/** The lengths of the last batch's sequences (by_length batches; NULL for others), and its size. */
const int64_t *nb_batches_lengths(const nb_batches *b, int64_t *count);
/** The rows of the last batch returned, as row indices of nb_dataset_inputs(d) (for a split view:
 * rows of the parent's tensors), and its size. */
const int64_t *nb_batches_indices(const nb_batches *b, int64_t *count);
/** The number of batches in an epoch (-1 for NULL). */
int64_t nb_batches_per_epoch(const nb_batches *b);
/** Data-parallel sharding (nabla/dist.h): from now on nb_batches_next returns only part `rank` of
 * `nranks` of each batch, rows [rank * n / nranks, (rank + 1) * n / nranks) of a batch of n. Every rank
 * makes the same batcher (same data, batch_size and seed), so all draw the same shuffle and the ranks
 * together see exactly the batches one unsharded batcher returns. A part is empty (a batch of 0 rows,
 * still returned as 1) when a batch has fewer rows than ranks; parts differ by at most one row when
 * nranks does not divide n (weight the gradients: nb_ddp_set_samples). Call before the first batch. */
nb_status nb_batches_set_shard(nb_batches *b, int rank, int nranks);
/** Rows of the last batch over all shards (its own rows: nb_batches_indices), 0 before the first; and
 * where this shard's rows start among them (0 unsharded). With these a rank can draw per-sample
 * randomness (dropout masks) for the whole global batch from a stream every rank shares, and use its
 * rows: then N ranks draw exactly what one process draws. -1 for NULL. @{ */
int64_t nb_batches_global_count(const nb_batches *b);
int64_t nb_batches_shard_offset(const nb_batches *b);
/** @} */
/** Skip n batches, drawing the shuffles nb_batches_next would (an epoch's end is not counted): to
 * resume a run from a checkpoint taken after n steps. */
nb_status nb_batches_skip(nb_batches *b, int64_t n);

/** Read an IDX file (MNIST format; gzip-compressed or raw) into a new leaf of dtype: unsigned-byte
 * data is converted and, for f32/f64, multiplied by scale (1/255, say); other IDX types keep their
 * values (floating IDX data cannot be read as i64).
 * Validates the magic number, the dimensions and the file length; a path that is not a regular file
 * (a FIFO, a device, a folder) is refused at once (NB_ERR_IO). Memory grows with the data actually
 * read, whatever the header claims. */
nb_status nb_idx_read(const char *path, nb_dtype dtype, double scale, nb_tensor **out);

/** A vocabulary of bytes: ids 0..size-1 (opaque). */
typedef struct nb_vocab nb_vocab;

/** The distinct bytes of text, in byte order. */
nb_vocab *nb_vocab_build(const char *text, size_t len);
/** Frees the vocabulary. NULL is ignored. */
void nb_vocab_free(nb_vocab *v);
/** The number of ids. */
int nb_vocab_size(const nb_vocab *v);
/** Id of byte c, -1 if it is not in the vocabulary. */
int nb_vocab_id(const nb_vocab *v, unsigned char c);
/** Byte of id, -1 if out of range. */
int nb_vocab_char(const nb_vocab *v, int id);
/** Encode len bytes into ids (fails on a byte not in the vocabulary); decode n ids into n bytes. @{ */
nb_status nb_vocab_encode(const nb_vocab *v, const char *text, size_t len, int64_t *ids);
nb_status nb_vocab_decode(const nb_vocab *v, const int64_t *ids, size_t n, char *text);
/** @} */

/* ---------------------------------------------------------------------------------------------- */
/* Checkpoints (safetensors)                                                                       */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup checkpoints Checkpoints
 * safetensors files: a model with its optimizer, or any file's tensors.
 * @{ */

/** Write tensors (F32/F64/I64) with their names, and optional string metadata, as a safetensors
 * file. Atomic: the data goes to a temporary file in the same folder ("<path>.tmp.<pid>.XXXXXX",
 * locked while it is written), is fsync'ed and renamed over path, so a failure leaves any previous
 * file intact. The temporary files of saves to path that were killed midway are removed by the next
 * save to path (never one a live writer holds). */
nb_status nb_safetensors_save(const char *path, int n, const char *const *names, nb_tensor *const *tensors,
                              int n_meta, const char *const *meta_keys, const char *const *meta_values);

/** Any safetensors file of F32/F64/I64 tensors, read and validated as nb_checkpoint_load does (but
 * without a model to match): to look into a checkpoint, or to take weights saved elsewhere (PyTorch's
 * safetensors, say) and copy them where they belong. The handle owns the tensors (leaves, claimed:
 * add a copy to a collection, nb_tensor_clone) and strings; free it with nb_safetensors_free. */
typedef struct nb_safetensors nb_safetensors;
/** Read and validate path; *out gets a new handle (NULL on failure). */
nb_status nb_safetensors_read(const char *path, nb_safetensors **out);
/** Frees the handle and every tensor and string of it. NULL is ignored. */
void nb_safetensors_free(nb_safetensors *f);
/** The number of tensors in the file. */
int nb_safetensors_count(const nb_safetensors *f);
/** The i-th tensor (in the file's order) and its name; NULL when out of range. @{ */
const char *nb_safetensors_name(const nb_safetensors *f, int i);
nb_tensor *nb_safetensors_tensor(const nb_safetensors *f, int i);
/** @} */
/** The tensor named name, or NULL (no error recorded). */
nb_tensor *nb_safetensors_find(const nb_safetensors *f, const char *name);
/** The __metadata__ value of key, or NULL. */
const char *nb_safetensors_meta(const nb_safetensors *f, const char *key);

/** The parameters of params, the state of opt (may be NULL) and the step counter in one file. */
nb_status nb_checkpoint_save(const char *path, const nb_params *params, const nb_optim *opt, int64_t step);
/** Load what nb_checkpoint_save wrote: with opt, its state, step counts and groups' options too (lr,
 * weight decay, momentum, betas, eps, frozen: the saved run's last values, as torch's
 * load_state_dict; set the lr after loading to train on with another). Everything is validated
 * first (header against file size, offsets inside the data and not overlapping, shape x dtype size
 * equal to the byte range, names, dtypes and shapes matching the model; the header's JSON strictly,
 * see src/train/checkpoint.c); on any failure nothing of params or opt is changed. A path that is
 * not a regular file is refused at once (NB_ERR_IO). Tensors need not be aligned in the file. step
 * may be NULL. */
nb_status nb_checkpoint_load(const char *path, nb_params *params, nb_optim *opt, int64_t *step);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* NABLA_TRAIN_H */
