/**
 * @file
 * nabla/dist: data-parallel training over MPI processes ("ranks"). Every rank holds the whole model,
 * takes its own part of every batch (nb_batches_set_shard), and after backward the gradients are
 * averaged over the ranks, so every rank takes the same optimizer step. Included by nabla.h;
 * docs/distributed.md explains it.
 *
 * MPI is optional at build time (meson -Dmpi=auto|enabled|disabled). nb_dist_available() tells whether
 * this build has it; without it, every function here that needs MPI records an NB_ERR_UNSUPPORTED
 * error saying so and returns it (or NULL). nb_dist_launched() and the accessors work in both builds.
 *
 * A training step on every rank:
 *
 *     nb_ddp_set_samples(ddp, rows);         this rank's share of the global batch (uneven shards)
 *     nb_backward(loss, NULL, 0);            gradient buckets start reducing during the backward
 *     nb_ddp_finish(ddp);                    every rank now holds the same averaged gradients
 *     nb_optim_step(opt);
 *
 * Threads: nabla calls MPI only from the thread that calls these functions and nb_backward, and MPI
 * must provide MPI_THREAD_FUNNELED or more (nabla's own threads never call MPI).
 * Failures: a collective that one rank never joins does not hang the others for ever: every wait in
 * nabla gives up after a timeout (nb_dist_set_timeout, default 300 s or $NB_DIST_TIMEOUT), reports
 * NB_ERR_STATE, and marks the context broken. A rank that cannot go on calls nb_dist_abort, which ends
 * every rank of the job. Checkpoints are written by one rank, atomically (a failure or a kill leaves
 * any previous file intact).
 */
#ifndef NABLA_DIST_H
#define NABLA_DIST_H

#ifndef NABLA_H
#error "include <nabla.h>, not <nabla/dist.h>"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------- */
/* Processes                                                                                       */
/* ---------------------------------------------------------------------------------------------- */
/**
 * @defgroup dist Processes (MPI)
 * Starting MPI or adopting a communicator; rank, size, timeouts, ending the job.
 * @{ */

/** A group of ranks nabla talks over: its own duplicate of an MPI communicator. */
typedef struct nb_dist nb_dist;

/** 1 if this build of nabla has MPI, 0 if not. */
int nb_dist_available(void);
/** 1 if this process was started by an MPI launcher (mpirun/mpiexec of Open MPI or MPICH, or a
 * PMI/PMIx launcher such as srun), judged by the environment it sets; 0 for a plain start. Programs
 * call nb_dist_init only then, so that they run as a single process, without MPI, when started
 * alone. */
int nb_dist_launched(void);
/** Start MPI (MPI_Init_thread with MPI_THREAD_FUNNELED; if the program started it already, it must
 * provide FUNNELED or more) and make a context over all its processes (MPI_COMM_WORLD) in *out.
 * argc and argv may be NULL. Free it with nb_dist_free, which stops MPI if this call started it. */
nb_status nb_dist_init(int *argc, char ***argv, nb_dist **out);
/** A context over a communicator the program already has: comm points to an MPI_Comm (with mpi.h
 * included before nabla.h, nb_dist_from_mpi_comm takes the MPI_Comm itself). It is duplicated, so
 * nabla's messages never mix with the program's; MPI stays the program's to stop. */
nb_status nb_dist_from_comm(const void *comm, nb_dist **out);
/** Free the context (and stop MPI when nb_dist_init started it and this is the last context). Free
 * every nb_ddp made on it first (otherwise an error is recorded and the context kept). On a broken
 * context MPI is not stopped (that would wait for the ranks that are out of step): the process should
 * exit, and the launcher ends the job. NULL is ignored. */
void nb_dist_free(nb_dist *d);
/** This process's rank in 0..size-1 and the number of ranks; 0 and 1 for NULL (a program run
 * alone). @{ */
int nb_dist_rank(const nb_dist *d);
int nb_dist_size(const nb_dist *d);
/** @} */
/** The ranks on this machine (sharing its memory), this one included; 1 for NULL. To share the
 * cores out: nb_set_num_threads(cores / nb_dist_local_size(d)). */
int nb_dist_local_size(const nb_dist *d);
/** A pointer to the context's MPI_Comm (owned by it), for the program's own MPI calls; NULL for
 * NULL. */
const void *nb_dist_comm(const nb_dist *d);
/** Seconds every wait in nabla may take before it fails (> 0). */
nb_status nb_dist_set_timeout(nb_dist *d, double seconds);
/** The timeout in seconds (0 for NULL). */
double nb_dist_timeout(const nb_dist *d);
/** Whether a collective on d failed or timed out: the ranks are out of step and only nb_dist_abort or
 * exiting is left. */
int nb_dist_broken(const nb_dist *d);
/** Wait until every rank has called it. */
nb_status nb_dist_barrier(nb_dist *d);
/** Print "nabla: rank R of N: message" to stderr and end every process of the job (MPI_Abort on
 * MPI_COMM_WORLD, exit status 1): for a rank that cannot go on, so that the others do not wait for
 * it. With NULL (a program run alone) or without MPI it only prints and returns an error. */
nb_status nb_dist_abort(nb_dist *d, const char *message);

/* ---------------------------------------------------------------------------------------------- */
/* Collectives                                                                                     */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup dist_collectives Collectives
 * Metrics, decisions, broadcasts and checkpoints over the ranks.
 * @{ */

/** How nb_dist_allreduce combines the ranks' values. */
typedef enum nb_dist_op {
    NB_DIST_SUM = 0,  /**< the sum, added in rank order */
    NB_DIST_MAX,      /**< the largest (NaN if any is NaN) */
    NB_DIST_MIN,      /**< the smallest (NaN if any is NaN) */
    NB_DIST_OP_COUNT  /**< the number of ops */
} nb_dist_op;

/** Combine n doubles over the ranks, in place; every rank gets the same bits (each gathers all values
 * and combines them in rank order). For metrics and decisions (loss sums, correct counts, a stop
 * flag), so that early stopping, plateau schedules and the best checkpoint are decided identically
 * everywhere. Meant for a few values. */
nb_status nb_dist_allreduce(nb_dist *d, double *values, int n, nb_dist_op op);
/** Every rank's status combined: NB_OK if every rank passed NB_OK; otherwise, on every rank, the
 * status of the lowest failing rank, with its message (the other ranks record "rank R failed: ...").
 * A rank that had an error calls it too, so that the others stop with it instead of waiting. */
nb_status nb_dist_agree(nb_dist *d, nb_status st);
/** Copy root's values of leaf t into t on every rank (same dtype and shape on every rank, checked). */
nb_status nb_dist_broadcast(nb_dist *d, nb_tensor *t, int root);
/** Copy root's values of every tensor of p (parameters and buffers) to every rank: the same start
 * everywhere. The collections must have the same names, dtypes and shapes on every rank (checked). */
nb_status nb_dist_broadcast_params(nb_dist *d, nb_params *p, int root);
/** Copy root's optimizer state (state tensors, step counts, learning rate) to every rank. */
nb_status nb_dist_broadcast_optim(nb_dist *d, nb_optim *opt, int root);
/** NB_OK if every rank holds bit-identical tensors in p (a 64-bit hash of each compared), else
 * NB_ERR_STATE naming the first tensor that differs, on every rank. */
nb_status nb_dist_check_params(nb_dist *d, const nb_params *p);
/** nb_checkpoint_save on rank 0 only; every rank returns rank 0's status (and message). */
nb_status nb_dist_checkpoint_save(nb_dist *d, const char *path, const nb_params *p, const nb_optim *opt,
                                  int64_t step);
/** nb_checkpoint_load on rank 0, then the parameters, optimizer state and step broadcast to every
 * rank (the file need only exist on rank 0's machine). A checkpoint from a run with any number of
 * ranks (or none) loads. On failure every rank returns rank 0's status and nothing is changed. */
nb_status nb_dist_checkpoint_load(nb_dist *d, const char *path, nb_params *p, nb_optim *opt, int64_t *step);

/* ---------------------------------------------------------------------------------------------- */
/* Gradient averaging (data-parallel training)                                                     */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup ddp Gradient averaging
 * Data-parallel training: buckets of gradients reduced during the backward.
 * @{ */

/** Averages the gradients of a collection's trainable parameters over the ranks. The parameters are
 * packed in reverse registration order (about the order backward finishes them) into flat buckets of
 * one dtype: the first up to first_bucket_bytes, the others up to bucket_bytes (a parameter larger
 * than a bucket gets one of its own). During nb_backward, each parameter's post-accumulate hook marks
 * it final; a bucket whose parameters are all final is started (copied into its buffer and reduced
 * with a non-blocking MPI_Iallreduce) once every bucket before it was started, so every rank starts
 * them in the same order. nb_ddp_finish starts the rest (a parameter with no gradient in this step on
 * this rank counts as zeros), waits, and writes the averages back into the gradients. */
typedef struct nb_ddp nb_ddp;

/** Options of nb_ddp_new; a zeroed struct (or NULL) gives the defaults. */
typedef struct nb_ddp_opts {
    int64_t first_bucket_bytes; /**< default (0): 1 MiB, small, so that the first bucket starts early */
    int64_t bucket_bytes;       /**< default (0): 25 MiB */
    int no_overlap;             /**< 1: start every bucket in nb_ddp_finish, none during backward */
} nb_ddp_opts;

/** A gradient averager for params over d (both borrowed: they must outlive it). Collective: every
 * rank calls it with a collection of the same names, dtypes and shapes, and, so that the replicas
 * stay equal, the same values (checked: seed them alike or call nb_dist_broadcast_params first). It
 * sets the post-accumulate hook of every trainable parameter (replacing any other) until freed. */
nb_ddp *nb_ddp_new(nb_dist *d, nb_params *params, const nb_ddp_opts *opts);
/** Remove the hooks and free. Call nb_ddp_finish first if a backward ran since the last one. NULL is
 * ignored. */
void nb_ddp_free(nb_ddp *g);
/** Gradient accumulation: with sync 0 the backward passes only accumulate locally (nothing is sent);
 * turn it back on (1, the default) before the last micro-step's backward, then call nb_ddp_finish. */
nb_status nb_ddp_set_sync(nb_ddp *g, int sync);
/** This rank's weight in the average, set before the backward: with a mean loss over its rows, pass
 * the number of rows (0 for an empty part); every gradient becomes sum_r n_r g_r / sum_r n_r, the mean
 * over the global batch even when parts are uneven. Default 1 on every rank: the plain average. */
nb_status nb_ddp_set_samples(nb_ddp *g, double n);
/** Finish the step's reduction: start the buckets not started yet, wait (with the timeout), and write
 * each average into its parameter's gradient (allocating it where this rank had none; a parameter
 * that no rank gave a gradient keeps none, so optimizers skip it as without MPI). Call it on every
 * rank after the backward (the last micro-step's) and before the optimizer step. */
nb_status nb_ddp_finish(nb_ddp *g);

/** Buckets, for inspection and tests: their number. */
int nb_ddp_bucket_count(const nb_ddp *g);
/** The bucket of the collection's tensor param_index; -1 for a buffer or an integer tensor. */
int nb_ddp_bucket_of(const nb_ddp *g, int param_index);
/** A bucket's gradient bytes. */
int64_t nb_ddp_bucket_bytes(const nb_ddp *g, int bucket);

/** What the reductions cost, summed since nb_ddp_new or the last reset. */
typedef struct nb_ddp_stats {
    int64_t steps;               /**< nb_ddp_finish calls that reduced */
    int64_t buckets_in_backward; /**< buckets started from the hooks, during backward */
    int64_t buckets_at_finish;   /**< buckets started by nb_ddp_finish */
    int64_t bytes;               /**< bytes reduced per rank (buffers, flags and weights included) */
    double hook_seconds;         /**< time in the hooks: packing, starting, progressing (MPI_Test) */
    double finish_seconds;       /**< time in nb_ddp_finish: packing and starting the rest, unpacking */
    double wait_seconds;         /**< the part of finish_seconds spent waiting for MPI */
} nb_ddp_stats;
/** Copy the counters into *stats (zeros for NULL). */
void nb_ddp_get_stats(const nb_ddp *g, nb_ddp_stats *stats);
/** Set the counters to zero. */
void nb_ddp_reset_stats(nb_ddp *g);

/** @} */

#ifdef __cplusplus
}
#endif

/* Typed form for programs that include mpi.h before nabla.h (the same MPI nabla was built with). */
#ifdef MPI_VERSION
/** nb_dist_from_comm taking the MPI_Comm itself. */
static inline nb_status nb_dist_from_mpi_comm(MPI_Comm comm, nb_dist **out) { return nb_dist_from_comm(&comm, out); }
#endif

#endif /* NABLA_DIST_H */
