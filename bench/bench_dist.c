/* Time per epoch of data-parallel training: the Fashion-MNIST MLP of examples/fashion_mnist.c
 * (784-512-256-10, ReLU, dropout 0.2, AdamW, label smoothing 0.1, float32), global batch --batch,
 * run alone or under mpirun (each rank takes its part of every batch; nb_ddp averages the gradients).
 * bench/dist.py runs it as 1 process x 1 thread, 1 process x 2 threads and 2 processes x 1 thread.
 *
 * Timed: --epochs epochs of training steps (forward, backward, reduction, optimizer step) after
 * --warmup-steps untimed steps, each epoch between two barriers; no evaluation. Reported: the median
 * epoch time (wall) and rank 0's CPU time over the epoch (all its threads; on a machine shared with
 * other work, the CPU time of one thread is the steadier measure of compute), and from nb_ddp's counters per epoch: the time in the hooks (packing and starting
 * buckets during backward), in nb_ddp_finish, and the part of that spent waiting for MPI (what the
 * backward did not hide), on rank 0 and the most over ranks; buckets started during backward.
 *
 * Data: the training images of Debian's dataset-fashion-mnist (--data DIR), the first --train-limit
 * of them (default 54000, the example's training split); --synthetic uses seeded random images of the
 * same size instead (no data set needed). */
#define _POSIX_C_SOURCE 200809L

#include "bench.h"

#include <nabla.h>

#include <stdlib.h>
#include <unistd.h>

typedef struct options {
    bench_opts c; /* --json (--repeats and friends are not used) */
    long epochs, batch, threads, train_limit, warmup_steps, first_bucket, bucket;
    int no_overlap, synthetic;
    const char *data;
} options;

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [--epochs E] [--batch B] [--threads T] [--data DIR | --synthetic] [--train-limit N]\n"
            "          [--warmup-steps S] [--first-bucket BYTES] [--bucket BYTES] [--no-overlap] [--json]\n"
            "  Times epochs of the Fashion-MNIST MLP's training, alone or under mpirun through tests/mpirun.sh\n"
            "  (this machine only: shared memory, OMPI_MCA_oob_tcp_if_include=lo; see tests/mpi-env.sh).\n"
            "  --epochs E          timed epochs, 1..100 (default 3)\n"
            "  --batch B           global batch, 1..60000 (default 256)\n"
            "  --threads T         BLAS threads per process (default 1)\n"
            "  --data DIR          Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)\n"
            "  --synthetic         seeded random images instead of the data set\n"
            "  --train-limit N     training images, 256..60000 (default 54000)\n"
            "  --warmup-steps S    untimed steps first (default 20)\n"
            "  --first-bucket BYTES, --bucket BYTES   nb_ddp's bucket caps (default 1 MiB, 25 MiB)\n"
            "  --no-overlap        start every bucket in nb_ddp_finish, none during backward\n"
            "  --json              one JSON line (from rank 0) instead of text\n",
            prog);
}

static int own_option(void *opts, const char *name, const char *v, const char **want)
{
    options *o = opts;
    if (!strcmp(name, "--no-overlap")) return o->no_overlap = 1, BENCH_ARG_FLAG;
    if (!strcmp(name, "--synthetic")) return o->synthetic = 1, BENCH_ARG_FLAG;
    if (!strcmp(name, "--data")) {
        *want = "a folder";
        if (!v) return BENCH_ARG_BAD;
        o->data = v;
        return BENCH_ARG_VALUE;
    }
    if (!strcmp(name, "--epochs")) return bench_long(v, 1, 100, &o->epochs);
    if (!strcmp(name, "--batch")) return bench_long(v, 1, 60000, &o->batch);
    if (!strcmp(name, "--threads")) return bench_long(v, 1, 256, &o->threads);
    if (!strcmp(name, "--train-limit")) return bench_long(v, 256, 60000, &o->train_limit);
    if (!strcmp(name, "--warmup-steps")) return bench_long(v, 0, 100000, &o->warmup_steps);
    if (!strcmp(name, "--first-bucket")) return bench_long(v, 1, 1L << 40, &o->first_bucket);
    if (!strcmp(name, "--bucket")) return bench_long(v, 1, 1L << 40, &o->bucket);
    return BENCH_ARG_UNKNOWN;
}

/* [n, 784] f32 images in [0, 1] and n labels */
static int load(const options *o, nb_tensor **x, nb_tensor **y)
{
    int64_t n = o->train_limit;
    if (o->synthetic) {
        nb_rng rng;
        nb_rng_seed(&rng, 1);
        *x = nb_tensor_uniform(NB_F32, NB_SHAPE(n, 784), 0, 1, &rng);
        *y = nb_tensor_zeros(NB_I64, NB_SHAPE(n));
        for (int64_t i = 0; *y && i < n; i++) ((int64_t *)nb_tensor_data(*y))[i] = (int64_t)nb_rng_below(&rng, 10);
        return *x && *y;
    }
    char ip[1024], lp[1024];
    snprintf(ip, sizeof ip, "%s/train-images-idx3-ubyte.gz", o->data);
    snprintf(lp, sizeof lp, "%s/train-labels-idx1-ubyte.gz", o->data);
    nb_tensor *xi = NULL, *yi = NULL;
    if (nb_idx_read(ip, NB_F32, 1.0 / 255.0, &xi) != NB_OK || nb_idx_read(lp, NB_I64, 1.0, &yi) != NB_OK) {
        nb_tensor_free(xi);
        return 0;
    }
    if (nb_tensor_dim(xi, 0) < n) n = nb_tensor_dim(xi, 0);
    *x = nb_tensor_from_data(NB_F32, NB_SHAPE(n, 784), nb_tensor_cdata(xi));
    *y = nb_tensor_from_data(NB_I64, NB_SHAPE(n), nb_tensor_cdata(yi));
    nb_tensor_free(xi);
    nb_tensor_free(yi);
    return *x && *y;
}

typedef struct run {
    nb_mlp mlp;
    nb_params *params;
    nb_optim *opt;
    nb_ddp *ddp;
    nb_batches *batches;
    nb_tape *tape;
} run;

/* One training step on the next batch (a new epoch when one ends: *ended is set). */
static int step(run *r, int *ended)
{
    nb_tensor *x, *y;
    nb_tape_begin(r->tape);
    int got = nb_batches_next(r->batches, &x, &y);
    if (got == 0) {
        if (ended) *ended = 1;
        got = nb_batches_next(r->batches, &x, &y);
    }
    int ok = got == 1;
    int64_t rows = ok ? nb_tensor_dim(x, 0) : 0;
    if (ok && r->ddp) ok = nb_ddp_set_samples(r->ddp, (double)rows) == NB_OK;
    if (ok && rows > 0) {
        nb_tensor *flat = nb_affine(x, 1.0 / 0.3530, -0.2860 / 0.3530);
        nb_tensor *loss = nb_cross_entropy(nb_mlp_forward(&r->mlp, flat), y, &(nb_ce_opts){.label_smoothing = 0.1});
        ok = loss && nb_backward(loss, NULL, 0) == NB_OK;
    }
    if (ok && r->ddp) ok = nb_ddp_finish(r->ddp) == NB_OK;
    if (ok) ok = nb_optim_step(r->opt) == NB_OK;
    nb_optim_zero_grad(r->opt);
    nb_tape_end(r->tape);
    nb_tape_reset(r->tape);
    return ok;
}

static void fail(nb_dist *d, const char *what)
{
    char msg[1200];
    snprintf(msg, sizeof msg, "bench_dist: %s: %s", what, nb_error_message());
    if (d) nb_dist_abort(d, msg);
    fprintf(stderr, "%s\n", msg);
    exit(1);
}

int main(int argc, char **argv)
{
    options o = {.c = {.max_repeats = 1}, .epochs = 3, .batch = 256, .threads = 1, .train_limit = 54000,
                 .warmup_steps = 20, .data = "/usr/share/datasets/fashion-mnist"};
    int pr = bench_parse_args(argc, argv, "bench_dist", usage, &o.c, own_option, &o);
    if (pr) return pr == 1 ? 0 : 2;
    nb_dist *d = NULL;
    if (nb_dist_launched() && nb_dist_init(&argc, &argv, &d) != NB_OK) fail(NULL, "nb_dist_init");
    int rank = nb_dist_rank(d), nranks = nb_dist_size(d);
    nb_set_num_threads((int)o.threads);

    nb_tensor *x = NULL, *y = NULL;
    if (!load(&o, &x, &y)) fail(d, "reading the data (or pass --synthetic)");
    nb_dataset *data = nb_dataset_new(x, y);
    run r = {.params = nb_params_new(), .tape = nb_tape_new()};
    nb_rng rng;
    nb_rng_seed(&rng, 1);
    const int64_t sizes[] = {784, 512, 256, 10};
    nb_layer_opts lo = {.dtype = NB_F32, .weight_init = {NB_INIT_KAIMING_UNIFORM, 0}};
    if (!data || nb_mlp_init(&r.mlp, r.params, "mlp", 4, sizes, NB_ACT_RELU, 0.2, &lo, &rng) != NB_OK) fail(d, "model");
    if (rank > 0) nb_rng_seed(&rng, 1 + 0x9e3779b97f4a7c15ull * (uint64_t)rank); /* own dropout masks */
    nb_optim_opts oo = nb_optim_defaults(NB_ADAMW);
    oo.lr = 2e-3;
    oo.weight_decay = 1e-4;
    r.opt = nb_optim_new(NB_ADAMW, r.params, &oo);
    r.batches = nb_batches_new(data, o.batch, 1, 0, 2);
    if (!r.opt || !r.batches || nb_batches_set_shard(r.batches, rank, nranks) != NB_OK) fail(d, "setup");
    if (d && !(r.ddp = nb_ddp_new(d, r.params, &(nb_ddp_opts){o.first_bucket, o.bucket, o.no_overlap}))) fail(d, "nb_ddp_new");

    for (long s = 0; s < o.warmup_steps; s++)
        if (!step(&r, NULL)) fail(d, "warm-up step");
    /* start the timed epochs at an epoch's beginning */
    nb_batches_skip(r.batches, (nb_batches_per_epoch(r.batches) - o.warmup_steps % nb_batches_per_epoch(r.batches)) %
                                   nb_batches_per_epoch(r.batches));
    int64_t steps = nb_batches_per_epoch(r.batches);
    double *epoch_s = calloc((size_t)o.epochs, sizeof *epoch_s), *cpu_s = calloc((size_t)o.epochs, sizeof *cpu_s);
    nb_ddp_reset_stats(r.ddp);
    for (long e = 0; e < o.epochs; e++) {
        if (d && nb_dist_barrier(d) != NB_OK) fail(d, "barrier");
        double t0 = bench_now_ns(), c0 = bench_clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        for (int64_t s = 0; s < steps; s++)
            if (!step(&r, NULL)) fail(d, "training step");
        cpu_s[e] = (bench_clock_ns(CLOCK_PROCESS_CPUTIME_ID) - c0) * 1e-9;
        if (d && nb_dist_barrier(d) != NB_OK) fail(d, "barrier");
        epoch_s[e] = (bench_now_ns() - t0) * 1e-9;
    }
    nb_ddp_stats st;
    nb_ddp_get_stats(r.ddp, &st);
    /* per epoch, on this rank and the most over ranks */
    double per[3] = {st.hook_seconds / (double)o.epochs, st.finish_seconds / (double)o.epochs,
                     st.wait_seconds / (double)o.epochs};
    double most[3] = {per[0], per[1], per[2]};
    if (d && nb_dist_allreduce(d, most, 3, NB_DIST_MAX) != NB_OK) fail(d, "allreduce");
    double median = bench_median(epoch_s, o.epochs), cpu_median = bench_median(cpu_s, o.epochs);
    int64_t bytes_step = st.steps ? st.bytes / st.steps : 0;
    if (rank == 0) {
        if (o.c.json) {
            bench_json_begin("dist");
            bench_json_long("ranks", nranks);
            bench_json_long("threads", o.threads);
            bench_json_long("batch", o.batch);
            bench_json_long("steps_per_epoch", (long)steps);
            bench_json_long("epochs", o.epochs);
            bench_json_fixed("epoch_s", 4, median);
            bench_json_fixed("epoch_s_min", 4, epoch_s[0]);
            bench_json_fixed("epoch_s_max", 4, epoch_s[o.epochs - 1]);
            bench_json_fixed("epoch_cpu_s", 4, cpu_median);
            bench_json_long("buckets", r.ddp ? nb_ddp_bucket_count(r.ddp) : 0);
            bench_json_long("bytes_per_step", (long)bytes_step);
            bench_json_long("buckets_in_backward", (long)st.buckets_in_backward);
            bench_json_long("buckets_at_finish", (long)st.buckets_at_finish);
            bench_json_fixed("hook_s", 4, per[0]);
            bench_json_fixed("finish_s", 4, per[1]);
            bench_json_fixed("wait_s", 4, per[2]);
            bench_json_fixed("hook_s_max", 4, most[0]);
            bench_json_fixed("finish_s_max", 4, most[1]);
            bench_json_fixed("wait_s_max", 4, most[2]);
            bench_json_long("parameters", (long)nb_params_numel(r.params));
            bench_json_end();
        } else {
            printf("%d process%s x %ld thread%s, global batch %ld, %lld steps per epoch: %.3f s per epoch (median of "
                   "%ld; %.3f-%.3f), rank 0's CPU time %.3f s\n",
                   nranks, nranks > 1 ? "es" : "", o.threads, o.threads > 1 ? "s" : "", o.batch, (long long)steps, median,
                   o.epochs, epoch_s[0], epoch_s[o.epochs - 1], cpu_median);
            if (r.ddp)
                printf("  %d buckets, %lld bytes per step; per epoch: hooks %.3f s, nb_ddp_finish %.3f s of which waiting "
                       "for MPI %.3f s (most over ranks: %.3f, %.3f, %.3f); buckets started during backward %lld of %lld\n",
                       nb_ddp_bucket_count(r.ddp), (long long)bytes_step, per[0], per[1], per[2], most[0], most[1],
                       most[2], (long long)st.buckets_in_backward,
                       (long long)(st.buckets_in_backward + st.buckets_at_finish));
        }
    }
    free(epoch_s);
    free(cpu_s);
    nb_ddp_free(r.ddp);
    nb_batches_free(r.batches);
    nb_optim_free(r.opt);
    nb_params_free(r.params);
    nb_tape_free(r.tape);
    nb_dataset_free(data);
    nb_dist_free(d);
    return 0;
}
