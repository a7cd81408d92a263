/* Data-parallel training over MPI (include/nabla/dist.h). Written against nabla.h and MPI only.
 *
 * Every wait goes through wait_reqs: non-blocking MPI calls polled with MPI_Test until they
 * complete or the context's timeout passes, so that no rank waits for ever on a rank that failed.
 * Gradient averaging (nb_ddp) packs the gradients of its parameters, in reverse registration order,
 * into flat buckets and reduces each with one MPI_Iallreduce (split only beyond INT_MAX elements).
 * A bucket's buffer holds, after the gradients, one "has a gradient" flag per parameter and this
 * rank's weight, so the sum brings back, with the weighted gradient sum, how many ranks had each
 * gradient and the total weight: averages stay exact for uneven shards and for parameters that some
 * ranks did not use, without another message. */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>
#include <nabla.h>

#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__GNUC__)
#define DIST_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DIST_PRINTF(a, b)
#endif

struct nb_dist {
    MPI_Comm comm;     /* our own duplicate */
    int rank, size;
    int local_size;    /* ranks on this machine */
    int from_init;     /* made by nb_dist_init */
    int thread_level;  /* what MPI provides */
    double timeout;    /* seconds */
    int broken;        /* a collective failed or timed out: the ranks are out of step */
    int users;         /* live nb_ddp objects */
};

static int started_mpi;   /* nb_dist_init called MPI_Init_thread (then the last context stops it) */
static int live_contexts;

/* Most elements in one MPI call (its counts are int). */
#define PIECE ((int64_t)1 << 30)

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static nb_status fail(nb_status st, const char *fmt, ...) DIST_PRINTF(2, 3);
static nb_status fail(nb_status st, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    nb_error_set(st, "%s", msg);
    return st;
}

/* An MPI call failed: the ranks can no longer be trusted to be in step. */
static nb_status mpi_fail(nb_dist *d, int rc, const char *who, const char *what)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error %d", rc);
    if (d) d->broken = 1;
    return fail(NB_ERR_IO, "%s: rank %d: %s failed: %s", who, d ? d->rank : -1, what, s);
}

/* Whether d can take a collective now. */
static nb_status usable(nb_dist *d, const char *who)
{
    if (!d) return fail(NB_ERR_ARG, "%s: context is NULL", who);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return fail(NB_ERR_STATE, "%s: MPI was stopped already (MPI_Finalize)", who);
    if (d->broken)
        return fail(NB_ERR_STATE, "%s: rank %d: an earlier collective on this context failed or timed out; the "
                    "ranks are out of step: end the job (nb_dist_abort)", who, d->rank);
    if (d->thread_level < MPI_THREAD_SERIALIZED) {
        int main_thread = 0;
        MPI_Is_thread_main(&main_thread);
        if (!main_thread)
            return fail(NB_ERR_STATE, "%s: called from a thread other than the one that started MPI (it "
                        "provides MPI_THREAD_FUNNELED)", who);
    }
    return NB_OK;
}

/* Sets *done when every request of req[n] has completed (each completed one becomes MPI_REQUEST_NULL);
 * each test drives MPI's progress. One MPI_Test at a time rather than MPI_Testall with
 * MPI_STATUSES_IGNORE, which gcc 12 takes for an overflow with MPICH's prototype. */
static int test_all(int n, MPI_Request *req, int *done)
{
    *done = 1;
    for (int i = 0; i < n; i++) {
        if (req[i] == MPI_REQUEST_NULL) continue;
        int flag = 0, rc = MPI_Test(&req[i], &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return rc;
        if (!flag) {
            *done = 0;
            break;
        }
    }
    return MPI_SUCCESS;
}

/* Poll n requests until all complete; fail after the context's timeout. *waited (may be NULL) adds
 * the seconds spent. */
static nb_status wait_reqs(nb_dist *d, int n, MPI_Request *req, const char *who, const char *what, double *waited)
{
    double start = wall(), t = start;
    nb_status st = NB_OK;
    for (long spin = 0;; spin++) {
        int done = 0;
        int rc = test_all(n, req, &done);
        if (rc != MPI_SUCCESS) {
            st = mpi_fail(d, rc, who, "MPI_Test");
            break;
        }
        if (done) break;
        if ((spin & 31) == 0) t = wall();
        if (t - start > d->timeout) {
            d->broken = 1;
            st = fail(NB_ERR_STATE, "%s: rank %d of %d: %s: no answer from the other ranks after %.3g s (the "
                      "timeout; did a rank fail or stop calling the same collectives?); end the job with "
                      "nb_dist_abort", who, d->rank, d->size, what, d->timeout);
            break;
        }
        /* spin for the first millisecond, then give the core away: ranks may share cores */
        if (t - start > 0.02) {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        } else if (t - start > 0.001) {
            sched_yield();
        }
    }
    if (waited) *waited += wall() - start;
    return st;
}

/* ---- contexts --------------------------------------------------------------------------------- */

int nb_dist_available(void) { return 1; }

static double default_timeout(void)
{
    const char *s = getenv("NB_DIST_TIMEOUT");
    if (s && *s) {
        char *end;
        double v = strtod(s, &end);
        if (!*end && v > 0) return v;
    }
    return 300.0;
}

/* A context over a duplicate of comm. */
static nb_status make(MPI_Comm comm, int from_init, const char *who, nb_dist **out)
{
    nb_dist *d = nb_calloc(1, sizeof *d);
    if (!d) return fail(NB_ERR_NOMEM, "%s: out of memory", who);
    int rc = MPI_Comm_dup(comm, &d->comm);
    if (rc != MPI_SUCCESS) {
        nb_dealloc(d, sizeof *d);
        return mpi_fail(NULL, rc, who, "MPI_Comm_dup");
    }
    MPI_Comm_set_errhandler(d->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(d->comm, &d->rank);
    MPI_Comm_size(d->comm, &d->size);
    MPI_Comm local;
    d->local_size = 1;
    if (MPI_Comm_split_type(d->comm, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &local) == MPI_SUCCESS) {
        MPI_Comm_size(local, &d->local_size);
        MPI_Comm_free(&local);
    }
    MPI_Query_thread(&d->thread_level);
    d->from_init = from_init;
    d->timeout = default_timeout();
    live_contexts++;
    *out = d;
    return NB_OK;
}

nb_status nb_dist_init(int *argc, char ***argv, nb_dist **out)
{
    const char *who = "nb_dist_init";
    if (!out) return fail(NB_ERR_ARG, "%s: out is NULL", who);
    *out = NULL;
    int initialized = 0, finalized = 0, provided = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized) return fail(NB_ERR_STATE, "%s: MPI was stopped already; it cannot start twice in a process", who);
    if (!initialized) {
        int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return mpi_fail(NULL, rc, who, "MPI_Init_thread");
        started_mpi = 1;
    } else {
        MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_FUNNELED)
        return fail(NB_ERR_UNSUPPORTED, "%s: MPI provides thread level %d, below MPI_THREAD_FUNNELED (nabla's "
                    "threads need it; start MPI with MPI_Init_thread)", who, provided);
    return make(MPI_COMM_WORLD, 1, who, out);
}

nb_status nb_dist_from_comm(const void *comm, nb_dist **out)
{
    const char *who = "nb_dist_from_comm";
    if (!out || !comm) return fail(NB_ERR_ARG, "%s: %s is NULL", who, !out ? "out" : "comm");
    *out = NULL;
    int initialized = 0, finalized = 0, provided = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized)
        return fail(NB_ERR_STATE, "%s: MPI is not running (start it first, or use nb_dist_init)", who);
    MPI_Query_thread(&provided);
    if (provided < MPI_THREAD_FUNNELED)
        return fail(NB_ERR_UNSUPPORTED, "%s: MPI provides thread level %d, below MPI_THREAD_FUNNELED (nabla's "
                    "threads need it; start MPI with MPI_Init_thread)", who, provided);
    MPI_Comm c = *(const MPI_Comm *)comm;
    if (c == MPI_COMM_NULL) return fail(NB_ERR_ARG, "%s: comm is MPI_COMM_NULL", who);
    return make(c, 0, who, out);
}

void nb_dist_free(nb_dist *d)
{
    if (!d) return;
    if (d->users > 0) {
        fail(NB_ERR_STATE, "nb_dist_free: %d gradient averager(s) still use this context; free them first "
             "(the context is kept)", d->users);
        return;
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && !d->broken) MPI_Comm_free(&d->comm);
    if (--live_contexts == 0 && started_mpi && !finalized && !d->broken) MPI_Finalize();
    nb_dealloc(d, sizeof *d);
}

int nb_dist_rank(const nb_dist *d) { return d ? d->rank : 0; }
int nb_dist_size(const nb_dist *d) { return d ? d->size : 1; }
int nb_dist_local_size(const nb_dist *d) { return d ? d->local_size : 1; }
const void *nb_dist_comm(const nb_dist *d) { return d ? &d->comm : NULL; }
double nb_dist_timeout(const nb_dist *d) { return d ? d->timeout : 0; }
int nb_dist_broken(const nb_dist *d) { return d ? d->broken : 0; }

nb_status nb_dist_set_timeout(nb_dist *d, double seconds)
{
    if (!d || !(seconds > 0))
        return fail(NB_ERR_ARG, "nb_dist_set_timeout: %s", !d ? "context is NULL" : "seconds must be > 0");
    d->timeout = seconds;
    return NB_OK;
}

nb_status nb_dist_barrier(nb_dist *d)
{
    const char *who = "nb_dist_barrier";
    nb_status st = usable(d, who);
    if (st != NB_OK) return st;
    MPI_Request r;
    int rc = MPI_Ibarrier(d->comm, &r);
    if (rc != MPI_SUCCESS) return mpi_fail(d, rc, who, "MPI_Ibarrier");
    return wait_reqs(d, 1, &r, who, "barrier", NULL);
}

nb_status nb_dist_abort(nb_dist *d, const char *message)
{
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    fprintf(stderr, "nabla: rank %d of %d: %s\n", nb_dist_rank(d), nb_dist_size(d), message ? message : "(no message)");
    fflush(stderr);
    if (!d || !initialized || finalized) return fail(NB_ERR_ARG, "nb_dist_abort: no running MPI context to end");
    /* the whole job: MPICH ends only the calling process when given another communicator */
    MPI_Abort(MPI_COMM_WORLD, 1);
    return fail(NB_ERR_STATE, "nb_dist_abort: MPI_Abort returned");
}

/* ---- collectives ------------------------------------------------------------------------------ */

/* 64-bit hashes (not cryptographic: they compare replicas). */
static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

static uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, c + i, 8);
        h = mix(h, w);
    }
    uint64_t w = 0;
    for (; i < n; i++) w = w << 8 | c[i];
    return mix(h, w ^ (uint64_t)n);
}

static uint64_t hash_str(uint64_t h, const char *s) { return hash_bytes(h, s ? s : "", s ? strlen(s) : 0); }

/* A tensor's dtype and shape. */
static uint64_t hash_layout(uint64_t h, const nb_tensor *t)
{
    h = mix(h, (uint64_t)nb_tensor_dtype(t));
    h = mix(h, (uint64_t)nb_tensor_ndim(t));
    for (int i = 0; i < nb_tensor_ndim(t); i++) h = mix(h, (uint64_t)nb_tensor_shape(t)[i]);
    return h;
}

/* Compare n hashes over the ranks: differ[i] (may be NULL) is set where some rank's hash i differs.
 * Returns NB_OK with *any set when a hash differs anywhere (the same answer on every rank). */
static nb_status compare_hashes(nb_dist *d, int n, const uint64_t *h, int *differ, int *any, const char *who)
{
    *any = 0;
    size_t vbytes = (size_t)(2 * n + 1) * sizeof(uint64_t);
    uint64_t *v = nb_alloc(vbytes);
    if (!v) return fail(NB_ERR_NOMEM, "%s: out of memory", who);
    /* min over {h, ~h} gives min(h) and ~max(h) in one reduction */
    for (int i = 0; i < n; i++) {
        v[2 * i] = h[i];
        v[2 * i + 1] = ~h[i];
    }
    MPI_Request r;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, v, 2 * n, MPI_UINT64_T, MPI_MIN, d->comm, &r);
    nb_status st = rc == MPI_SUCCESS ? wait_reqs(d, 1, &r, who, "comparing the replicas", NULL)
                                     : mpi_fail(d, rc, who, "MPI_Iallreduce");
    for (int i = 0; st == NB_OK && i < n; i++) {
        int diff = v[2 * i] != ~v[2 * i + 1];
        if (differ) differ[i] = diff;
        *any |= diff;
    }
    nb_dealloc(v, vbytes);
    return st;
}

/* One hash of a collection's structure: names, kinds, dtypes, shapes. */
static uint64_t params_layout(const nb_params *p)
{
    uint64_t h = mix(0, (uint64_t)nb_params_count(p));
    for (int i = 0; i < nb_params_count(p); i++) {
        h = hash_str(h, nb_params_name(p, i));
        h = mix(h, (uint64_t)nb_params_trainable(p, i));
        h = hash_layout(h, nb_params_tensor(p, i));
    }
    return h;
}

static nb_status same_layout(nb_dist *d, uint64_t h, const char *who, const char *what)
{
    int any = 0;
    nb_status st = compare_hashes(d, 1, &h, NULL, &any, who);
    if (st == NB_OK && any) st = fail(NB_ERR_SHAPE, "%s: the %s differ between the ranks", who, what);
    return st;
}

nb_status nb_dist_allreduce(nb_dist *d, double *values, int n, nb_dist_op op)
{
    const char *who = "nb_dist_allreduce";
    nb_status st = usable(d, who);
    if (st != NB_OK) return st;
    if (n < 0 || (n > 0 && !values) || (unsigned)op >= NB_DIST_OP_COUNT)
        return fail(NB_ERR_ARG, "%s: %d values at %p, op %d", who, n, (void *)values, (int)op);
    if (n == 0) return NB_OK;
    if ((int64_t)n * d->size > INT_MAX) return fail(NB_ERR_ARG, "%s: %d values x %d ranks is too many", who, n, d->size);
    /* every rank gathers every rank's values and combines them in rank order: the same bits
     * everywhere, whatever algorithm the MPI library picks (meant for a few values) */
    size_t abytes = (size_t)n * (size_t)d->size * sizeof(double);
    double *all = nb_alloc(abytes);
    if (!all) return fail(NB_ERR_NOMEM, "%s: out of memory", who);
    MPI_Request r;
    int rc = MPI_Iallgather(values, n, MPI_DOUBLE, all, n, MPI_DOUBLE, d->comm, &r);
    st = rc == MPI_SUCCESS ? wait_reqs(d, 1, &r, who, "allreduce", NULL) : mpi_fail(d, rc, who, "MPI_Iallgather");
    if (st == NB_OK) {
        for (int i = 0; i < n; i++) {
            double acc = all[i];
            for (int k = 1; k < d->size; k++) {
                double v = all[(size_t)k * (size_t)n + (size_t)i];
                acc = op == NB_DIST_SUM ? acc + v : op == NB_DIST_MAX ? (v > acc || v != v ? v : acc)
                                                                      : (v < acc || v != v ? v : acc);
            }
            values[i] = acc;
        }
    }
    nb_dealloc(all, abytes);
    return st;
}

/* The status of root (with its message) on every rank. */
static nb_status agree_from(nb_dist *d, nb_status st, int root, const char *who)
{
    struct {
        int status;
        char msg[1000];
    } m = {(int)st, ""};
    if (d->rank == root && st != NB_OK) snprintf(m.msg, sizeof m.msg, "%s", nb_error_message());
    MPI_Request r;
    int rc = MPI_Ibcast(&m, (int)sizeof m, MPI_BYTE, root, d->comm, &r);
    nb_status w = rc == MPI_SUCCESS ? wait_reqs(d, 1, &r, who, "sharing a status", NULL)
                                    : mpi_fail(d, rc, who, "MPI_Ibcast");
    if (w != NB_OK) return w;
    m.msg[sizeof m.msg - 1] = 0;
    if (m.status == NB_OK || d->rank == root) return (nb_status)m.status;
    if (m.status <= NB_OK || m.status >= NB_STATUS_COUNT) m.status = NB_ERR_STATE;
    return fail((nb_status)m.status, "%s: rank %d failed: %s", who, root, m.msg[0] ? m.msg : nb_status_name((nb_status)m.status));
}

nb_status nb_dist_agree(nb_dist *d, nb_status st)
{
    const char *who = "nb_dist_agree";
    nb_status u = usable(d, who);
    if (u != NB_OK) return u;
    int lowest = st != NB_OK ? d->rank : INT_MAX;
    MPI_Request r;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, &lowest, 1, MPI_INT, MPI_MIN, d->comm, &r);
    u = rc == MPI_SUCCESS ? wait_reqs(d, 1, &r, who, "finding the failed ranks", NULL)
                          : mpi_fail(d, rc, who, "MPI_Iallreduce");
    if (u != NB_OK) return u;
    if (lowest == INT_MAX) return NB_OK;
    return agree_from(d, st, lowest, who);
}

/* Start broadcasting n bytes at p from root, in pieces; *k requests used so far in req. */
static int bcast_bytes(nb_dist *d, void *p, int64_t n, int root, MPI_Request *req, int *k)
{
    for (int64_t off = 0; off < n; off += PIECE) {
        int64_t c = n - off < PIECE ? n - off : PIECE;
        int rc = MPI_Ibcast((char *)p + off, (int)c, MPI_BYTE, root, d->comm, &req[(*k)++]);
        if (rc != MPI_SUCCESS) return rc;
    }
    return MPI_SUCCESS;
}

static int64_t bytes_of(const nb_tensor *t) { return nb_tensor_numel(t) * (int64_t)nb_dtype_size(nb_tensor_dtype(t)); }
static int pieces(int64_t n) { return (int)((n + PIECE - 1) / PIECE); }

/* Broadcast n leaves from root (layouts already known to agree). */
static nb_status bcast_tensors(nb_dist *d, int n, nb_tensor *const *t, int root, const char *who)
{
    int nreq = 0;
    for (int i = 0; i < n; i++) nreq += pieces(bytes_of(t[i]));
    size_t rbytes = (size_t)(nreq + 1) * sizeof(MPI_Request);
    MPI_Request *req = nb_alloc(rbytes);
    if (!req) return fail(NB_ERR_NOMEM, "%s: out of memory", who);
    int k = 0, rc = MPI_SUCCESS;
    for (int i = 0; i < n && rc == MPI_SUCCESS; i++) rc = bcast_bytes(d, nb_tensor_data(t[i]), bytes_of(t[i]), root, req, &k);
    nb_status st = rc == MPI_SUCCESS ? wait_reqs(d, k, req, who, "broadcast", NULL) : mpi_fail(d, rc, who, "MPI_Ibcast");
    nb_dealloc(req, rbytes);
    if (st == NB_OK && d->rank != root)
        for (int i = 0; i < n; i++) nb_tensor_mark_dirty(t[i]);
    return st;
}

static nb_status check_root(nb_dist *d, int root, const char *who)
{
    if (root < 0 || root >= d->size) return fail(NB_ERR_ARG, "%s: root %d is not a rank (0..%d)", who, root, d->size - 1);
    return NB_OK;
}

nb_status nb_dist_broadcast(nb_dist *d, nb_tensor *t, int root)
{
    const char *who = "nb_dist_broadcast";
    nb_status st = usable(d, who);
    if (st != NB_OK || (st = check_root(d, root, who)) != NB_OK) return st;
    if (!t || !nb_tensor_is_leaf(t)) return fail(NB_ERR_ARG, "%s: %s", who, !t ? "tensor is NULL" : "an op result; only leaves can be overwritten");
    if ((st = same_layout(d, hash_layout(0, t), who, "tensors' dtypes or shapes")) != NB_OK) return st;
    return bcast_tensors(d, 1, &t, root, who);
}

nb_status nb_dist_broadcast_params(nb_dist *d, nb_params *p, int root)
{
    const char *who = "nb_dist_broadcast_params";
    nb_status st = usable(d, who);
    if (st != NB_OK || (st = check_root(d, root, who)) != NB_OK) return st;
    if (!p) return fail(NB_ERR_ARG, "%s: collection is NULL", who);
    if ((st = same_layout(d, params_layout(p), who, "parameter collections (names, dtypes or shapes)")) != NB_OK) return st;
    int n = nb_params_count(p);
    size_t tbytes = (size_t)(n + 1) * sizeof(nb_tensor *);
    nb_tensor **t = nb_alloc(tbytes);
    if (!t) return fail(NB_ERR_NOMEM, "%s: out of memory", who);
    for (int i = 0; i < n; i++) t[i] = nb_params_tensor(p, i);
    st = bcast_tensors(d, n, t, root, who);
    nb_dealloc(t, tbytes);
    return st;
}

nb_status nb_dist_broadcast_optim(nb_dist *d, nb_optim *opt, int root)
{
    const char *who = "nb_dist_broadcast_optim";
    nb_status st = usable(d, who);
    if (st != NB_OK || (st = check_root(d, root, who)) != NB_OK) return st;
    if (!opt) return fail(NB_ERR_ARG, "%s: optimizer is NULL", who);
    int ns = nb_optim_state_count(opt), np = nb_optim_param_count(opt);
    uint64_t h = mix(mix(mix(0, (uint64_t)nb_optim_get_kind(opt)), (uint64_t)ns), (uint64_t)np);
    for (int i = 0; i < ns; i++) h = hash_layout(hash_str(h, nb_optim_state_name(opt, i)), nb_optim_state_tensor(opt, i));
    if ((st = same_layout(d, h, who, "optimizers (kind, state names, dtypes or shapes)")) != NB_OK) return st;
    /* the counts and the learning rate, then the state tensors */
    size_t mbytes = (size_t)(np + 2) * sizeof(int64_t), tbytes = (size_t)(ns + 1) * sizeof(nb_tensor *);
    int64_t *meta = nb_alloc(mbytes);
    nb_tensor **t = nb_alloc(tbytes);
    if (!meta || !t) {
        nb_dealloc(meta, mbytes);
        nb_dealloc(t, tbytes);
        return fail(NB_ERR_NOMEM, "%s: out of memory", who);
    }
    double lr = nb_optim_lr(opt);
    meta[0] = nb_optim_steps(opt);
    memcpy(&meta[1], &lr, sizeof lr);
    for (int i = 0; i < np; i++) meta[2 + i] = nb_optim_param_steps(opt, i);
    MPI_Request r;
    int rc = MPI_Ibcast(meta, np + 2, MPI_INT64_T, root, d->comm, &r);
    st = rc == MPI_SUCCESS ? wait_reqs(d, 1, &r, who, "broadcast", NULL) : mpi_fail(d, rc, who, "MPI_Ibcast");
    for (int i = 0; i < ns; i++) t[i] = nb_optim_state_tensor(opt, i);
    if (st == NB_OK) st = bcast_tensors(d, ns, t, root, who);
    if (st == NB_OK && d->rank != root) {
        memcpy(&lr, &meta[1], sizeof lr);
        nb_optim_set_lr(opt, lr);
        st = nb_optim_set_steps(opt, meta[0]);
        for (int i = 0; st == NB_OK && i < np; i++) st = nb_optim_set_param_steps(opt, i, meta[2 + i]);
    }
    nb_dealloc(meta, mbytes);
    nb_dealloc(t, tbytes);
    return st;
}

nb_status nb_dist_check_params(nb_dist *d, const nb_params *p)
{
    const char *who = "nb_dist_check_params";
    nb_status st = usable(d, who);
    if (st != NB_OK) return st;
    if (!p) return fail(NB_ERR_ARG, "%s: collection is NULL", who);
    if ((st = same_layout(d, params_layout(p), who, "parameter collections (names, dtypes or shapes)")) != NB_OK) return st;
    int n = nb_params_count(p), any = 0;
    size_t hbytes = (size_t)(n + 1) * sizeof(uint64_t), dbytes = (size_t)(n + 1) * sizeof(int);
    uint64_t *h = nb_alloc(hbytes);
    int *differ = nb_alloc(dbytes);
    if (!h || !differ) {
        nb_dealloc(h, hbytes);
        nb_dealloc(differ, dbytes);
        return fail(NB_ERR_NOMEM, "%s: out of memory", who);
    }
    for (int i = 0; i < n; i++) {
        const nb_tensor *t = nb_params_tensor(p, i);
        h[i] = hash_bytes(0, nb_tensor_cdata(t), (size_t)bytes_of(t));
    }
    st = compare_hashes(d, n, h, differ, &any, who);
    if (st == NB_OK && any) {
        int i = 0, count = 0;
        while (!differ[i]) i++;
        for (int j = 0; j < n; j++) count += differ[j];
        st = fail(NB_ERR_STATE, "%s: %d of %d tensors differ between the ranks, the first %s", who, count, n,
                  nb_params_name(p, i));
    }
    nb_dealloc(h, hbytes);
    nb_dealloc(differ, dbytes);
    return st;
}

nb_status nb_dist_checkpoint_save(nb_dist *d, const char *path, const nb_params *p, const nb_optim *opt, int64_t step)
{
    const char *who = "nb_dist_checkpoint_save";
    nb_status st = usable(d, who);
    if (st != NB_OK) return st;
    if (d->rank == 0) st = nb_checkpoint_save(path, p, opt, step);
    return agree_from(d, st, 0, who);
}

nb_status nb_dist_checkpoint_load(nb_dist *d, const char *path, nb_params *p, nb_optim *opt, int64_t *step)
{
    const char *who = "nb_dist_checkpoint_load";
    nb_status st = usable(d, who);
    if (st != NB_OK) return st;
    if (!p) return fail(NB_ERR_ARG, "%s: collection is NULL", who);
    int64_t at = 0;
    if (d->rank == 0) st = nb_checkpoint_load(path, p, opt, &at);
    if ((st = agree_from(d, st, 0, who)) != NB_OK) return st;
    if ((st = nb_dist_broadcast_params(d, p, 0)) != NB_OK) return st;
    if (opt && (st = nb_dist_broadcast_optim(d, opt, 0)) != NB_OK) return st;
    MPI_Request r;
    int rc = MPI_Ibcast(&at, 1, MPI_INT64_T, 0, d->comm, &r);
    st = rc == MPI_SUCCESS ? wait_reqs(d, 1, &r, who, "broadcast", NULL) : mpi_fail(d, rc, who, "MPI_Ibcast");
    if (st == NB_OK && step) *step = at;
    return st;
}

/* ---- gradient averaging ----------------------------------------------------------------------- */

typedef struct ddp_param {
    struct nb_ddp *g;
    nb_tensor *t;
    int index;      /* in the collection */
    int bucket;
    int slot;       /* position within its bucket */
    int64_t offset; /* its first element in the bucket's buffer */
    int64_t numel;
    int ready;      /* its gradient is final in this step (the hook ran) */
} ddp_param;

typedef struct ddp_bucket {
    nb_dtype dtype;
    int first, count; /* parameters g->p[first .. first + count) */
    int64_t numel;    /* gradient elements; the buffer adds count flags and one weight */
    void *buf;        /* [numel + count + 1] of dtype */
    int ready;        /* its parameters final so far */
    int started, done;
    int n_req;
    MPI_Request *req;
} ddp_bucket;

struct nb_ddp {
    nb_dist *d;
    nb_params *params;
    int n_tensors;  /* the collection's size when made (checked at finish) */
    int cap;        /* entries allocated in bucket_of, p and b: n_tensors + 1 */
    int *bucket_of; /* [n_tensors] */
    ddp_param *p;   /* trainable parameters in reverse registration order */
    int np;
    ddp_bucket *b;
    int nb;
    int next;       /* first bucket not started */
    int tested;     /* first started bucket not known to be complete */
    int sync;
    int active;     /* a hook ran or a bucket started since the last finish */
    int broken;
    double weight;
    nb_ddp_opts o;
    nb_ddp_stats stats;
    int hooked;
};

static int64_t buf_len(const ddp_bucket *b) { return b->numel + b->count + 1; }
static size_t esize(nb_dtype dt) { return nb_dtype_size(dt); }

/* dst[n] = w * src[n] (zeros for src NULL); one source for both float types. */
#define DEF_PACK(T, SFX)                                                                               \
    static void pack_##SFX(T *dst, const T *src, int64_t n, double w)                                  \
    {                                                                                                  \
        if (!src) {                                                                                    \
            memset(dst, 0, (size_t)n * sizeof(T));                                                     \
        } else if (w == 1.0) {                                                                         \
            memcpy(dst, src, (size_t)n * sizeof(T));                                                   \
        } else {                                                                                       \
            for (int64_t i = 0; i < n; i++) dst[i] = (T)(w * src[i]);                                  \
        }                                                                                              \
    }                                                                                                  \
    /* dst[n] = src[n] / total */                                                                      \
    static void unpack_##SFX(T *dst, const T *src, int64_t n, T total)                                 \
    {                                                                                                  \
        for (int64_t i = 0; i < n; i++) dst[i] = src[i] / total;                                       \
    }
DEF_PACK(float, f32)
DEF_PACK(double, f64)

static void set_elem(ddp_bucket *b, int64_t i, double v)
{
    if (b->dtype == NB_F32) ((float *)b->buf)[i] = (float)v;
    else ((double *)b->buf)[i] = v;
}

static double get_elem(const ddp_bucket *b, int64_t i)
{
    return b->dtype == NB_F32 ? (double)((const float *)b->buf)[i] : ((const double *)b->buf)[i];
}

/* Copy the bucket's gradients (times the weight), flags and weight into its buffer and start its
 * reduction. */
static nb_status start_bucket(nb_ddp *g, int k, const char *who)
{
    ddp_bucket *b = &g->b[k];
    for (int j = 0; j < b->count; j++) {
        ddp_param *q = &g->p[b->first + j];
        /* a gradient left at zero by nb_tensor_zero_grad counts as none, as for the optimizers */
        nb_tensor *gr = nb_tensor_has_grad(q->t) ? nb_tensor_grad(q->t) : NULL;
        if (gr && !nb_tensor_is_leaf(gr)) {
            g->broken = 1;
            return fail(NB_ERR_UNSUPPORTED, "%s: the gradient of %s comes from a backward with NB_CREATE_GRAPH; "
                        "averaging it over ranks would cut its graph (not supported)", who,
                        nb_params_name(g->params, q->index));
        }
        const void *src = gr ? nb_tensor_cdata(gr) : NULL;
        if (b->dtype == NB_F32) pack_f32((float *)b->buf + q->offset, src, q->numel, g->weight);
        else pack_f64((double *)b->buf + q->offset, src, q->numel, g->weight);
        set_elem(b, b->numel + j, gr ? 1.0 : 0.0);
    }
    set_elem(b, b->numel + b->count, g->weight);
    MPI_Datatype type = b->dtype == NB_F32 ? MPI_FLOAT : MPI_DOUBLE;
    int64_t len = buf_len(b);
    for (int i = 0; i < b->n_req; i++) {
        int64_t off = (int64_t)i * PIECE, c = len - off < PIECE ? len - off : PIECE;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)b->buf + (size_t)off * esize(b->dtype), (int)c, type, MPI_SUM,
                                g->d->comm, &b->req[i]);
        if (rc != MPI_SUCCESS) {
            g->broken = 1;
            return mpi_fail(g->d, rc, who, "MPI_Iallreduce");
        }
    }
    b->started = 1;
    g->active = 1;
    g->stats.bytes += len * (int64_t)esize(b->dtype);
    return NB_OK;
}

/* Let MPI progress the started reductions (one test drives the library's progress engine). */
static nb_status progress(nb_ddp *g, const char *who)
{
    while (g->tested < g->next) {
        ddp_bucket *b = &g->b[g->tested];
        int done = 0;
        int rc = test_all(b->n_req, b->req, &done);
        if (rc != MPI_SUCCESS) {
            g->broken = 1;
            return mpi_fail(g->d, rc, who, "MPI_Test");
        }
        if (!done) break;
        b->done = 1;
        g->tested++;
    }
    return NB_OK;
}

/* The post-accumulate hook of every parameter: its gradient for this step is final. */
static nb_status grad_ready(nb_tensor *leaf, void *user)
{
    const char *who = "nb_ddp (post-accumulate hook)";
    ddp_param *q = user;
    nb_ddp *g = q->g;
    if (!g->sync) return NB_OK;
    double t0 = wall();
    nb_status st = usable(g->d, who);
    if (st != NB_OK) return st;
    if (g->broken) return fail(NB_ERR_STATE, "%s: an earlier error left this averager out of step", who);
    if (q->ready) {
        g->broken = 1;
        return fail(NB_ERR_STATE, "%s: %s got a second gradient before nb_ddp_finish (for gradient accumulation, "
                    "turn sync off with nb_ddp_set_sync for every micro-step but the last)", who,
                    nb_params_name(g->params, q->index));
    }
    q->ready = 1;
    g->active = 1;
    g->b[q->bucket].ready++;
    if (!g->o.no_overlap) {
        /* start buckets in their fixed order: bucket k only once 0..k-1 have started */
        while (st == NB_OK && g->next < g->nb && g->b[g->next].ready == g->b[g->next].count) {
            st = start_bucket(g, g->next, who);
            if (st == NB_OK) {
                g->next++;
                g->stats.buckets_in_backward++;
            }
        }
        if (st == NB_OK) st = progress(g, who);
    }
    g->stats.hook_seconds += wall() - t0;
    return st;
}

/* The bucket buffers and their request arrays. */
static void free_buffers(nb_ddp *g)
{
    for (int k = 0; g->b && k < g->nb; k++) {
        nb_dealloc(g->b[k].buf, (size_t)buf_len(&g->b[k]) * esize(g->b[k].dtype));
        nb_dealloc(g->b[k].req, (size_t)g->b[k].n_req * sizeof *g->b[k].req);
    }
}

/* The averager's own arrays and itself. */
static void free_arrays(nb_ddp *g)
{
    nb_dealloc(g->bucket_of, (size_t)g->cap * sizeof *g->bucket_of);
    nb_dealloc(g->p, (size_t)g->cap * sizeof *g->p);
    nb_dealloc(g->b, (size_t)g->cap * sizeof *g->b);
    nb_dealloc(g, sizeof *g);
}

static void reset_step(nb_ddp *g)
{
    for (int i = 0; i < g->np; i++) g->p[i].ready = 0;
    for (int k = 0; k < g->nb; k++) g->b[k].ready = g->b[k].started = g->b[k].done = 0;
    g->next = g->tested = 0;
    g->active = 0;
}

nb_ddp *nb_ddp_new(nb_dist *d, nb_params *params, const nb_ddp_opts *opts)
{
    const char *who = "nb_ddp_new";
    if (usable(d, who) != NB_OK) return NULL;
    if (!params) {
        fail(NB_ERR_ARG, "%s: collection is NULL", who);
        return NULL;
    }
    nb_ddp_opts o = opts ? *opts : (nb_ddp_opts){0};
    if (o.first_bucket_bytes <= 0) o.first_bucket_bytes = (int64_t)1 << 20;
    if (o.bucket_bytes <= 0) o.bucket_bytes = (int64_t)25 << 20;
    int n = nb_params_count(params);
    nb_ddp *g = nb_calloc(1, sizeof *g);
    if (g) {
        g->cap = n + 1;
        g->bucket_of = nb_calloc((size_t)g->cap, sizeof *g->bucket_of);
        g->p = nb_calloc((size_t)g->cap, sizeof *g->p);
        g->b = nb_calloc((size_t)g->cap, sizeof *g->b);
    }
    if (!g || !g->bucket_of || !g->p || !g->b) goto nomem;
    g->d = d;
    g->params = params;
    g->n_tensors = n;
    g->o = o;
    g->sync = 1;
    g->weight = 1.0;
    /* trainable float parameters, last registered first: backward finishes them about in this order */
    for (int i = n - 1; i >= 0; i--) {
        g->bucket_of[i] = -1;
        nb_tensor *t = nb_params_tensor(params, i);
        nb_dtype dt = nb_tensor_dtype(t);
        if (!nb_params_trainable(params, i) || (dt != NB_F32 && dt != NB_F64)) continue;
        g->p[g->np++] = (ddp_param){.g = g, .t = t, .index = i, .numel = nb_tensor_numel(t)};
    }
    /* buckets: fill up to the cap (the first one's smaller), one dtype each; a parameter larger than
     * the cap gets its own */
    for (int i = 0; i < g->np; i++) {
        ddp_param *q = &g->p[i];
        nb_dtype dt = nb_tensor_dtype(q->t);
        int64_t bytes = q->numel * (int64_t)esize(dt);
        ddp_bucket *b = g->nb ? &g->b[g->nb - 1] : NULL;
        int64_t cap = g->nb <= 1 ? o.first_bucket_bytes : o.bucket_bytes;
        if (!b || b->dtype != dt || (b->count > 0 && (b->numel * (int64_t)esize(dt) + bytes > cap))) {
            b = &g->b[g->nb++];
            b->dtype = dt;
            b->first = i;
        }
        q->bucket = g->nb - 1;
        q->slot = b->count++;
        q->offset = b->numel;
        b->numel += q->numel;
        g->bucket_of[q->index] = q->bucket;
    }
    for (int k = 0; k < g->nb; k++) {
        ddp_bucket *b = &g->b[k];
        b->n_req = pieces(buf_len(b));
        b->buf = nb_alloc((size_t)buf_len(b) * esize(b->dtype));
        b->req = nb_alloc((size_t)b->n_req * sizeof *b->req);
        if (!b->buf || !b->req) goto nomem;
        for (int i = 0; i < b->n_req; i++) b->req[i] = MPI_REQUEST_NULL;
    }
    /* every rank must cut the same buckets from the same values */
    uint64_t h = mix(mix(params_layout(params), (uint64_t)o.first_bucket_bytes), (uint64_t)o.bucket_bytes);
    h = mix(h, (uint64_t)o.no_overlap);
    if (same_layout(d, h, who, "parameter collections or bucket sizes") != NB_OK) goto fail;
    if (nb_dist_check_params(d, params) != NB_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", nb_error_message());
        nb_error_clear();
        fail(NB_ERR_STATE, "%s: the replicas start from different values (seed them alike or call "
             "nb_dist_broadcast_params first): %s", who, msg);
        goto fail;
    }
    if (d->size > 1) {
        for (int i = 0; i < g->np; i++)
            if (nb_tensor_set_post_accumulate_hook(g->p[i].t, grad_ready, &g->p[i]) != NB_OK) goto fail;
        g->hooked = 1;
    }
    d->users++;
    return g;
nomem:
    fail(NB_ERR_NOMEM, "%s: out of memory for the buckets of %d tensors", who, n);
fail:
    if (g) {
        for (int i = 0; i < g->np; i++) nb_tensor_set_post_accumulate_hook(g->p[i].t, NULL, NULL);
        free_buffers(g);
        free_arrays(g);
    }
    return NULL;
}

void nb_ddp_free(nb_ddp *g)
{
    if (!g) return;
    int leak = 0;
    if (g->next > 0) {
        /* reductions under way write into the buffers: let them end first */
        int finalized = 0;
        MPI_Finalized(&finalized);
        for (int k = 0; k < g->next && !leak; k++)
            if (finalized || g->d->broken || wait_reqs(g->d, g->b[k].n_req, g->b[k].req, "nb_ddp_free", "a reduction", NULL) != NB_OK)
                leak = 1; /* MPI may still write into them: keep the buffers */
    }
    if (g->hooked)
        for (int i = 0; i < g->np; i++) nb_tensor_set_post_accumulate_hook(g->p[i].t, NULL, NULL);
    g->d->users--;
    if (!leak) free_buffers(g);
    free_arrays(g); /* (with leak, the buffers stay: they are no longer reachable from here) */
}

nb_status nb_ddp_set_sync(nb_ddp *g, int sync)
{
    if (!g) return fail(NB_ERR_ARG, "nb_ddp_set_sync: averager is NULL");
    if (!sync && g->active)
        return fail(NB_ERR_STATE, "nb_ddp_set_sync: a reducing backward ran since the last nb_ddp_finish; finish it "
                    "before turning sync off");
    g->sync = sync ? 1 : 0;
    return NB_OK;
}

nb_status nb_ddp_set_samples(nb_ddp *g, double n)
{
    if (!g || !(n >= 0) || isinf(n)) return fail(NB_ERR_ARG, "nb_ddp_set_samples: %s", !g ? "averager is NULL" : "need a finite n >= 0");
    if (g->active)
        return fail(NB_ERR_STATE, "nb_ddp_set_samples: buckets of this step were sent already; set the weight "
                    "before the backward");
    g->weight = n;
    return NB_OK;
}

nb_status nb_ddp_finish(nb_ddp *g)
{
    const char *who = "nb_ddp_finish";
    if (!g) return fail(NB_ERR_ARG, "%s: averager is NULL", who);
    nb_status st = usable(g->d, who);
    if (st != NB_OK) return st;
    if (g->broken) return fail(NB_ERR_STATE, "%s: an earlier error left this averager out of step", who);
    if (!g->sync)
        return fail(NB_ERR_STATE, "%s: sync is off, so the gradients were not sent (turn it on with "
                    "nb_ddp_set_sync before the last micro-step's backward)", who);
    if (nb_params_count(g->params) != g->n_tensors) {
        g->broken = 1;
        return fail(NB_ERR_STATE, "%s: the collection has %d tensors, %d when the averager was made; make a new "
                    "one after adding parameters", who, nb_params_count(g->params), g->n_tensors);
    }
    if (g->d->size == 1) {
        reset_step(g);
        return NB_OK; /* the average of one: the gradients as they are */
    }
    double t0 = wall();
    for (; g->next < g->nb; g->next++) {
        if ((st = start_bucket(g, g->next, who)) != NB_OK) return st;
        g->stats.buckets_at_finish++;
    }
    for (int k = g->tested; k < g->nb; k++) {
        char what[64];
        snprintf(what, sizeof what, "bucket %d of %d", k + 1, g->nb);
        if ((st = wait_reqs(g->d, g->b[k].n_req, g->b[k].req, who, what, &g->stats.wait_seconds)) != NB_OK) {
            g->broken = 1;
            return st;
        }
    }
    for (int k = 0; k < g->nb && st == NB_OK; k++) {
        ddp_bucket *b = &g->b[k];
        double total = get_elem(b, b->numel + b->count);
        if (!(total > 0)) {
            g->broken = 1;
            st = fail(NB_ERR_STATE, "%s: the ranks' weights add up to %g (nb_ddp_set_samples): nothing to average",
                      who, total);
            break;
        }
        for (int j = 0; j < b->count; j++) {
            ddp_param *q = &g->p[b->first + j];
            if (get_elem(b, b->numel + j) == 0) continue; /* no rank had a gradient: it keeps none */
            nb_tensor *gr = nb_tensor_ensure_grad(q->t);
            if (!gr) {
                g->broken = 1;
                st = nb_error_code();
                break;
            }
            if (b->dtype == NB_F32) unpack_f32(nb_tensor_data(gr), (const float *)b->buf + q->offset, q->numel, (float)total);
            else unpack_f64(nb_tensor_data(gr), (const double *)b->buf + q->offset, q->numel, total);
            nb_tensor_mark_dirty(gr);
        }
    }
    reset_step(g);
    g->stats.steps++;
    g->stats.finish_seconds += wall() - t0;
    return st;
}

int nb_ddp_bucket_count(const nb_ddp *g) { return g ? g->nb : 0; }
int nb_ddp_bucket_of(const nb_ddp *g, int i) { return g && i >= 0 && i < g->n_tensors ? g->bucket_of[i] : -1; }

int64_t nb_ddp_bucket_bytes(const nb_ddp *g, int k)
{
    return g && k >= 0 && k < g->nb ? g->b[k].numel * (int64_t)esize(g->b[k].dtype) : 0;
}

void nb_ddp_get_stats(const nb_ddp *g, nb_ddp_stats *stats)
{
    if (stats) *stats = g ? g->stats : (nb_ddp_stats){0};
}

void nb_ddp_reset_stats(nb_ddp *g)
{
    if (g) g->stats = (nb_ddp_stats){0};
}
