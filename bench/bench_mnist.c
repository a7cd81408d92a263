/* End-to-end training on Fashion-MNIST: the MLP 784-256-128-10 (ReLU, dropout 0.2 after each
 * hidden layer), cross-entropy, Adam (lr 1e-3), batch 128, 5 epochs over the 60000 training images,
 * shuffled each epoch. bench/mnist.py runs this, the same training in PyTorch and a plain C + OpenBLAS
 * loop (bench_mnist_plain.c), and compares.
 *
 * One step, as a user writes it with nabla:
 *     batch (nb_batches_next: rows gathered from the data set); x = (pixels / 255 - 0.2860) / 0.3530;
 *     loss = cross_entropy(MLP(x), labels); nb_backward; nb_optim_step; nb_optim_zero_grad;
 *     nb_tape_reset
 * Timed: each epoch's wall time (the data are read and the model made before); the process's CPU time
 * over all epochs. After the last epoch the test accuracy (10000 images, evaluation mode) is printed
 * as a check that the model learned. The GEMM floor of an epoch: the products of one full-batch step
 * (gemm_floor.h), replayed alone, times the steps of an epoch. */
#define _GNU_SOURCE

#include "bench.h"
#include "gemm_floor.h"

#include <nabla.h>

#include <stdlib.h>

typedef struct options {
    bench_opts c; /* --json (the others unused) */
    const char *data;
    long epochs, batch, threads, seed;
    int64_t sizes[NB_MLP_MAX_LAYERS + 1];
    int n_sizes;
    double dropout, lr;
} options;

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [--data DIR] [--epochs N] [--batch B] [--layers 784,256,128,10] [--dropout P]\n"
            "          [--lr X] [--threads N] [--seed S] [--json]\n"
            "  Trains an MLP on Fashion-MNIST with Adam and prints each epoch's wall time.\n"
            "  --data DIR     the IDX files (default /usr/share/datasets/fashion-mnist)\n"
            "  --epochs N     epochs, 1..1000 (default 5)\n"
            "  --batch B      batch size, 1..60000 (default 128)\n"
            "  --layers L     sizes from input (784) to output (10) (default 784,256,128,10)\n"
            "  --dropout P    dropout after each hidden layer, in [0, 1) (default 0.2)\n"
            "  --lr X         Adam's learning rate (default 1e-3)\n"
            "  --threads N    nb_set_num_threads(N) (default: the environment's setting)\n"
            "  --seed S       initialisation, shuffling and dropout (default 1)\n"
            "  --json         print one JSON line\n",
            prog);
}

static int parse_sizes(const char *s, options *o)
{
    o->n_sizes = 0;
    while (s && *s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 100000 || o->n_sizes > NB_MLP_MAX_LAYERS) return 0;
        o->sizes[o->n_sizes++] = v;
        if (*end == ',') end++;
        else if (*end) return 0;
        s = end;
    }
    return o->n_sizes >= 2 && o->sizes[0] == 784 && o->sizes[o->n_sizes - 1] == 10;
}

static int parse_double(const char *v, double lo, double hi, double *out)
{
    char *end;
    if (!v || !*v) return BENCH_ARG_BAD;
    double d = strtod(v, &end);
    if (*end || !(d >= lo && d < hi)) return BENCH_ARG_BAD;
    *out = d;
    return BENCH_ARG_VALUE;
}

static int own_option(void *opts, const char *name, const char *v, const char **want)
{
    options *o = opts;
    if (!strcmp(name, "--data")) {
        *want = "a folder";
        if (!v) return BENCH_ARG_BAD;
        o->data = v;
        return BENCH_ARG_VALUE;
    }
    if (!strcmp(name, "--layers")) {
        *want = "sizes from 784 to 10 such as 784,256,128,10";
        return parse_sizes(v, o) ? BENCH_ARG_VALUE : BENCH_ARG_BAD;
    }
    if (!strcmp(name, "--epochs")) return bench_long(v, 1, 1000, &o->epochs);
    if (!strcmp(name, "--batch")) return bench_long(v, 1, 60000, &o->batch);
    if (!strcmp(name, "--threads")) return bench_long(v, 1, 1024, &o->threads);
    if (!strcmp(name, "--seed")) return bench_long(v, 0, 1L << 40, &o->seed);
    if (!strcmp(name, "--dropout")) {
        *want = "a number in [0, 1)";
        return parse_double(v, 0, 1, &o->dropout);
    }
    if (!strcmp(name, "--lr")) {
        *want = "a number in (0, 10)";
        return parse_double(v, 1e-12, 10, &o->lr);
    }
    return BENCH_ARG_UNKNOWN;
}

static int load(const char *dir, const char *split, nb_tensor **x, nb_tensor **y)
{
    char ip[1024], lp[1024];
    snprintf(ip, sizeof ip, "%s/%s-images-idx3-ubyte.gz", dir, split);
    snprintf(lp, sizeof lp, "%s/%s-labels-idx1-ubyte.gz", dir, split);
    return nb_idx_read(ip, NB_F32, 1.0 / 255.0, x) == NB_OK && nb_idx_read(lp, NB_I64, 1.0, y) == NB_OK;
}

static nb_tensor *logits_of(const nb_mlp *mlp, nb_tensor *images)
{
    nb_tensor *flat = nb_reshape(images, NB_SHAPE(nb_tensor_dim(images, 0), 784));
    return nb_mlp_forward(mlp, nb_affine(flat, 1.0 / 0.3530, -0.2860 / 0.3530));
}

int main(int argc, char **argv)
{
    options o = {.c = {.repeats = 1, .max_repeats = 1, .dtype = NB_F32}, .data = "/usr/share/datasets/fashion-mnist",
                 .epochs = 5, .batch = 128, .seed = 1, .sizes = {784, 256, 128, 10}, .n_sizes = 4, .dropout = 0.2,
                 .lr = 1e-3};
    int st = bench_parse_args(argc, argv, "bench_mnist", usage, &o.c, own_option, &o);
    if (st) return st == 1 ? 0 : 2;
    if (o.threads) nb_set_num_threads((int)o.threads);

    nb_tensor *train_x = NULL, *train_y = NULL, *test_x = NULL, *test_y = NULL;
    double t0 = bench_now_ns();
    if (!load(o.data, "train", &train_x, &train_y) || !load(o.data, "t10k", &test_x, &test_y)) {
        fprintf(stderr, "bench_mnist: %s (install dataset-fashion-mnist or pass --data)\n", nb_error_message());
        return 1;
    }
    double load_ms = (bench_now_ns() - t0) / 1e6;

    nb_rng rng;
    nb_rng_seed(&rng, (uint64_t)o.seed);
    nb_params *params = nb_params_new();
    nb_mlp mlp;
    nb_layer_opts lo = {.dtype = NB_F32};
    nb_dataset *train = nb_dataset_new(train_x, train_y), *test = nb_dataset_new(test_x, test_y);
    nb_optim_opts oo = nb_optim_defaults(NB_ADAM);
    oo.lr = o.lr;
    nb_optim *opt = NULL;
    nb_batches *batches = NULL;
    nb_tape *tape = nb_tape_new();
    double epoch_ms[1000], cpu0 = 0, cpu_ms = 0, last_loss = 0, acc = 0, floor_step_ms = 0, floor_step_cpu = 0;
    long steps = 0;
    int ok = params && train && test && tape &&
             nb_mlp_init(&mlp, params, "mlp", o.n_sizes, o.sizes, NB_ACT_RELU, o.dropout, &lo, &rng) == NB_OK &&
             (opt = nb_optim_new(NB_ADAM, params, &oo)) != NULL &&
             (batches = nb_batches_new(train, o.batch, 1, 0, (uint64_t)o.seed + 1)) != NULL;
    cpu0 = bench_clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    for (long e = 0; ok && e < o.epochs; e++) {
        double te = bench_now_ns();
        nb_tensor *x, *y;
        int r;
        nb_tape_begin(tape);
        while ((r = nb_batches_next(batches, &x, &y)) == 1) {
            int rec = e == 0 && steps == 10; /* one step's products, for the floor */
            if (rec) gemm_floor_record(1);
            nb_tensor *loss = nb_cross_entropy(logits_of(&mlp, x), y, NULL);
            if (!loss || nb_backward(loss, NULL, 0) != NB_OK) {
                r = -1;
                break;
            }
            if (rec) {
                gemm_floor_record(0);
                floor_step_ms = gemm_floor_time(3, 50, &floor_step_cpu) / 1e6;
                floor_step_cpu /= 1e6;
                nb_params_zero_grad(params); /* the replay left garbage in the gradients: skip this update */
            }
            steps += e == 0;
            if (nb_optim_step(opt) != NB_OK) {
                r = -1;
                break;
            }
            nb_optim_zero_grad(opt);
            last_loss = nb_tensor_item(loss);
            nb_tape_reset(tape);
        }
        nb_tape_end(tape);
        nb_tape_reset(tape);
        ok = r == 0;
        epoch_ms[e] = (bench_now_ns() - te) / 1e6;
    }
    cpu_ms = (bench_clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0) / 1e6;
    if (ok) {
        /* the check: test accuracy in evaluation mode */
        nb_params_set_training(params, 0);
        nb_batches *tb = nb_batches_new(test, 1000, 0, 0, 0);
        int64_t correct = 0, n = 0;
        nb_tensor *x, *y;
        nb_tape_begin(tape);
        nb_no_grad_begin();
        while (tb && nb_batches_next(tb, &x, &y) == 1) {
            nb_tensor *pred = nb_argmax(logits_of(&mlp, x), 1, 0);
            if (!pred) break;
            for (int64_t i = 0; i < nb_tensor_numel(pred); i++)
                correct += ((const int64_t *)nb_tensor_cdata(pred))[i] == ((const int64_t *)nb_tensor_cdata(y))[i];
            n += nb_tensor_numel(pred);
            nb_tape_reset(tape);
        }
        nb_no_grad_end();
        nb_tape_end(tape);
        nb_batches_free(tb);
        acc = n ? (double)correct / (double)n : 0;
        ok = n == 10000;
    }
    nb_tape_free(tape);
    nb_batches_free(batches);
    nb_optim_free(opt);
    nb_dataset_free(train); /* and the tensors it owns */
    nb_dataset_free(test);
    nb_params_free(params);
    if (!ok) {
        fprintf(stderr, "bench_mnist: %s\n", nb_error_message());
        return 1;
    }
    double total = 0;
    for (long e = 0; e < o.epochs; e++) total += epoch_ms[e];
    if (o.c.json) {
        bench_json_begin("mnist");
        bench_json_str("impl", "nabla");
        bench_json_long("threads", nb_num_threads());
        bench_json_long("epochs", o.epochs);
        bench_json_long("batch", o.batch);
        bench_json_fixed("load_ms", 2, load_ms);
        bench_json_fixed("train_ms", 2, total);
        bench_json_fixed("cpu_ms", 2, cpu_ms);
        bench_json_fixed("floor_epoch_ms", 2, floor_step_ms * (double)steps);
        bench_json_fixed("floor_epoch_cpu_ms", 2, floor_step_cpu * (double)steps);
        printf(", \"epoch_ms\": [");
        for (long e = 0; e < o.epochs; e++) printf("%s%.2f", e ? ", " : "", epoch_ms[e]);
        printf("]");
        bench_json_exact("last_loss", last_loss);
        bench_json_exact("test_acc", acc);
        bench_json_end();
    } else {
        printf("nabla, Fashion-MNIST MLP, %ld epochs of batch %ld, %d thread(s): load %.0f ms\n", o.epochs, o.batch,
               nb_num_threads(), load_ms);
        for (long e = 0; e < o.epochs; e++) printf("  epoch %ld  %8.1f ms\n", e + 1, epoch_ms[e]);
        printf("  training %.1f ms wall, %.1f ms CPU; last loss %.4f; test accuracy %.2f%%\n", total, cpu_ms, last_loss,
               100 * acc);
        printf("  GEMM floor of an epoch %.1f ms wall, %.1f ms CPU (%ld steps)\n", floor_step_ms * (double)steps,
               floor_step_cpu * (double)steps, steps);
    }
    return 0;
}
