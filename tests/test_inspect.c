/* Looking inside and extending: custom ops (a composed backward, differentiable again; a raw backward,
 * which refuses NB_CREATE_GRAPH), the Graphviz DOT export of a two-layer MLP (checked as text and, where
 * Graphviz is installed, rendered by `dot -Tsvg`), anomaly mode (the op that made a NaN or an infinity,
 * in forward and in backward), and gradient hooks (the total gradient, scaling, failing). */
#define _POSIX_C_SOURCE 200809L

#include "nbtest.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- custom ops: y = x^3 (cube) and y = a b^2 (two inputs) ------------------------------------ */

typedef struct op_counts {
    int forward, backward;
} op_counts;

/* out = in[0]^3 elementwise, f32 or f64 */
static nb_status cube_forward(void *user, int n_in, const nb_tensor *const *in, nb_tensor *out)
{
    if (user) ((op_counts *)user)->forward++;
    if (n_in != 1) {
        nb_error_set(NB_ERR_ARG, "cube: %d inputs, expected 1", n_in);
        return NB_ERR_ARG;
    }
    int64_t n = nb_tensor_numel(out);
    if (nb_tensor_dtype(out) == NB_F64) {
        const double *x = nb_tensor_cdata(in[0]);
        double *y = nb_tensor_data(out);
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * x[i] * x[i];
    } else {
        const float *x = nb_tensor_cdata(in[0]);
        float *y = nb_tensor_data(out);
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * x[i] * x[i];
    }
    return NB_OK;
}

/* d x^3 = 3 x^2 dx, from nabla ops: differentiable again */
static nb_status cube_backward(void *user, int n_in, nb_tensor *const *in, nb_tensor *out, nb_tensor *gout,
                               nb_tensor **gin)
{
    (void)n_in, (void)out;
    if (user) ((op_counts *)user)->backward++;
    gin[0] = nb_mul(gout, nb_mul_scalar(nb_square(in[0]), 3.0));
    return gin[0] ? NB_OK : nb_error_code();
}

/* the same derivative written straight into the preallocated buffer (f64 only) */
static nb_status cube_backward_raw(void *user, int n_in, const nb_tensor *const *in, const nb_tensor *out,
                                   const nb_tensor *gout, nb_tensor *const *gin)
{
    (void)n_in, (void)out;
    if (user) ((op_counts *)user)->backward++;
    if (!gin[0]) return NB_OK;
    const double *x = nb_tensor_cdata(in[0]), *g = nb_tensor_cdata(gout);
    double *gx = nb_tensor_data(gin[0]);
    for (int64_t i = 0; i < nb_tensor_numel(gin[0]); i++) gx[i] = g[i] * 3.0 * x[i] * x[i];
    return NB_OK;
}

/* a raw backward that divides by x: NaN or infinity at 0 (for anomaly mode) */
static nb_status cube_backward_bad(void *user, int n_in, const nb_tensor *const *in, const nb_tensor *out,
                                   const nb_tensor *gout, nb_tensor *const *gin)
{
    (void)user, (void)n_in;
    const double *x = nb_tensor_cdata(in[0]), *y = nb_tensor_cdata(out), *g = nb_tensor_cdata(gout);
    double *gx = nb_tensor_data(gin[0]);
    for (int64_t i = 0; i < nb_tensor_numel(gin[0]); i++) gx[i] = g[i] * 3.0 * y[i] / x[i];
    return NB_OK;
}

static op_counts cube_counts, cube_raw_counts;
static const nb_custom_op cube_op = {"cube", cube_forward, cube_backward, NULL, &cube_counts};
static const nb_custom_op cube_raw_op = {"cube_raw", cube_forward, NULL, cube_backward_raw, &cube_raw_counts};
static const nb_custom_op cube_bad_op = {"cube_bad", cube_forward, NULL, cube_backward_bad, NULL};

static nb_tensor *cube(const nb_custom_op *op, nb_tensor *x)
{
    if (!x) return NULL;
    return nb_custom(op, 1, &x, nb_tensor_dtype(x), nb_tensor_ndim(x), nb_tensor_shape(x));
}

/* out = a * b^2 for a, b of one shape (f64) */
static nb_status ab2_forward(void *user, int n_in, const nb_tensor *const *in, nb_tensor *out)
{
    (void)user, (void)n_in;
    const double *a = nb_tensor_cdata(in[0]), *b = nb_tensor_cdata(in[1]);
    double *y = nb_tensor_data(out);
    for (int64_t i = 0; i < nb_tensor_numel(out); i++) y[i] = a[i] * b[i] * b[i];
    return NB_OK;
}

/* d(a b^2) = b^2 da + 2 a b db; an input that does not require grad gets no gradient */
static nb_status ab2_backward(void *user, int n_in, nb_tensor *const *in, nb_tensor *out, nb_tensor *gout,
                              nb_tensor **gin)
{
    (void)user, (void)n_in, (void)out;
    if (nb_tensor_requires_grad(in[0])) gin[0] = nb_mul(gout, nb_square(in[1]));
    if (nb_tensor_requires_grad(in[1])) gin[1] = nb_mul(gout, nb_mul_scalar(nb_mul(in[0], in[1]), 2.0));
    return NB_OK;
}

static const nb_custom_op ab2_op = {"ab2", ab2_forward, ab2_backward, NULL, NULL};

/* gradcheck functions: the custom op inside a small graph */
static nb_tensor *f_cube(void *user, nb_tensor *const *in)
{
    /* sum over axis 1 of tanh(x) cubed, times x: the op's input and output both feed other ops */
    nb_tensor *c = cube(user, nb_tanh(in[0]));
    return nb_mul(nb_sum(c, NB_AXES(1), 1), in[0]);
}
static nb_tensor *f_ab2(void *user, nb_tensor *const *in)
{
    (void)user;
    nb_tensor *ab[2] = {in[0], in[1]};
    return nb_exp(nb_custom(&ab2_op, 2, ab, NB_F64, nb_tensor_ndim(in[0]), nb_tensor_shape(in[0])));
}

static void test_custom_ops(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 21);
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 4), -1.5, 1.5, &rng);
    nb_tensor_set_requires_grad(x, 1);
    nb_gradcheck_report rep;

    /* composed backward: first and second order */
    nb_status st = nb_gradcheck(f_cube, (void *)&cube_op, 1, &x, NULL, &rep);
    CHECK(st == NB_OK && rep.ok, "custom cube (composed): gradcheck: %s", rep.message);
    st = nb_gradgradcheck(f_cube, (void *)&cube_op, 1, &x, NULL, &rep);
    CHECK(st == NB_OK && rep.ok, "custom cube (composed): gradgradcheck: %s", rep.message);
    CHECK(cube_counts.forward > 0 && cube_counts.backward > 0, "composed: forward %d, backward %d calls",
          cube_counts.forward, cube_counts.backward);
    nb_error_clear();

    /* raw backward: first order passes ... */
    st = nb_gradcheck(f_cube, (void *)&cube_raw_op, 1, &x, NULL, &rep);
    CHECK(st == NB_OK && rep.ok, "custom cube (raw): gradcheck: %s", rep.message);
    CHECK(cube_raw_counts.backward > 0, "raw: backward called %d times", cube_raw_counts.backward);
    nb_error_clear();
    /* ... second order is refused with a clear error */
    st = nb_gradgradcheck(f_cube, (void *)&cube_raw_op, 1, &x, NULL, &rep);
    CHECK(st == NB_ERR_UNSUPPORTED, "raw backward under gradgradcheck: %s, expected NB_ERR_UNSUPPORTED",
          nb_status_name(st));
    CHECK(!rep.ok && strstr(rep.message, "raw backward"), "gradgradcheck report: \"%s\"", rep.message);
    nb_error_clear();

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    /* values and gradients against x^3 and 3 x^2 (the composed and the raw op agree exactly) */
    nb_tensor *y = cube(&cube_op, x), *yr = cube(&cube_raw_op, x);
    CHECK(y && yr && nb_tensor_requires_grad(y) && nb_tensor_ndim(y) == 2, "cube results");
    int bad = 0;
    for (int64_t i = 0; y && yr && i < 12; i++) {
        double v = nb_tensor_get(x, i);
        bad += nb_tensor_get(y, i) != v * v * v || nb_tensor_get(yr, i) != v * v * v;
    }
    CHECK(bad == 0, "cube values: %d wrong", bad);
    nb_tensor *g[2];
    CHECK(nb_grad(nb_sum_all(y), NULL, 1, &x, g, 0) == NB_OK, "composed grad: %s", nb_error_message());
    CHECK(nb_grad(nb_sum_all(yr), NULL, 1, &x, g + 1, 0) == NB_OK, "raw grad: %s", nb_error_message());
    bad = 0;
    for (int64_t i = 0; g[0] && g[1] && i < 12; i++) {
        double v = nb_tensor_get(x, i), want = 3.0 * v * v;
        bad += fabs(nb_tensor_get(g[0], i) - want) > 1e-15 * want || fabs(nb_tensor_get(g[1], i) - want) > 1e-15 * want;
    }
    CHECK(g[0] && g[1] && bad == 0, "cube gradients 3 x^2: %d wrong", bad);

    /* raw backward under create-graph: NB_ERR_UNSUPPORTED naming the op and "raw backward" */
    yr = nb_sum_all(cube(&cube_raw_op, x));
    CHECK_ERROR(nb_backward(yr, NULL, NB_CREATE_GRAPH) != NB_OK, NB_ERR_UNSUPPORTED, "raw backward");
    yr = nb_sum_all(cube(&cube_raw_op, x));
    nb_backward(yr, NULL, NB_CREATE_GRAPH);
    CHECK(strstr(nb_error_message(), "cube_raw") && strstr(nb_error_message(), "NB_CREATE_GRAPH"),
          "create-graph message names the op and the flag: \"%s\"", nb_error_message());
    nb_error_clear();
    CHECK_ERROR(nb_grad(nb_sum_all(cube(&cube_raw_op, x)), NULL, 1, &x, g, NB_CREATE_GRAPH) != NB_OK,
                NB_ERR_UNSUPPORTED, "raw backward");
    CHECK(g[0] == NULL, "failed nb_grad leaves its outputs NULL");
    /* the same graph without create-graph works */
    CHECK(nb_backward(nb_sum_all(cube(&cube_raw_op, x)), NULL, 0) == NB_OK, "raw op, plain backward: %s",
          nb_error_message());
    CHECK(nb_tensor_grad(x) && fabs(nb_tensor_get(nb_tensor_grad(x), 5) - 3 * pow(nb_tensor_get(x, 5), 2)) < 1e-14,
          "raw op: leaf gradient");
    nb_tensor_zero_grad(x);

    /* float32 through the same op */
    nb_tensor *x32 = nb_cast(x, NB_F32);
    nb_tensor *y32 = cube(&cube_op, x32);
    CHECK(y32 && nb_tensor_dtype(y32) == NB_F32 &&
              fabs(nb_tensor_get(y32, 3) - pow(nb_tensor_get(x32, 3), 3)) < 1e-6,
          "cube in float32");
    CHECK(nb_backward(nb_sum_all(y32), NULL, 0) == NB_OK, "cube f32 backward: %s", nb_error_message());
    CHECK(nb_tensor_grad(x) && fabs(nb_tensor_get(nb_tensor_grad(x), 3) - 3 * pow(nb_tensor_get(x32, 3), 2)) < 1e-5,
          "cube f32 gradient through the cast");
    nb_tensor_zero_grad(x);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);

    /* two inputs, composed backward, one of them constant or both differentiable */
    nb_tensor *a = nb_tensor_uniform(NB_F64, NB_SHAPE(2, 3), -1, 1, &rng);
    nb_tensor *b = nb_tensor_uniform(NB_F64, NB_SHAPE(2, 3), -1, 1, &rng);
    nb_tensor_set_requires_grad(a, 1);
    nb_tensor_set_requires_grad(b, 1);
    nb_tensor *ab[2] = {a, b};
    st = nb_gradcheck(f_ab2, NULL, 2, ab, NULL, &rep);
    CHECK(st == NB_OK && rep.ok, "custom ab2: gradcheck: %s", rep.message);
    st = nb_gradgradcheck(f_ab2, NULL, 2, ab, NULL, &rep);
    CHECK(st == NB_OK && rep.ok, "custom ab2: gradgradcheck: %s", rep.message);
    nb_tensor_set_requires_grad(a, 0);
    st = nb_gradgradcheck(f_ab2, NULL, 2, ab, NULL, &rep);
    CHECK(st == NB_OK && rep.ok && !rep.input[0].checked && rep.input[1].checked, "custom ab2, a constant: %s",
          rep.message);
    nb_error_clear();

    nb_tensor_free(x);
    nb_tensor_free(a);
    nb_tensor_free(b);
}

/* ---- DOT export of a two-layer MLP ------------------------------------------------------------ */

static int count_substr(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

/* Write the DOT of output (NULL: the whole tape) into a fresh temporary file; returns the text
 * (malloc'd) and leaves the file's name in path. */
static char *write_dot(const nb_tape *tape, const nb_tensor *output, char *path, size_t path_size)
{
    snprintf(path, path_size, "/tmp/nabla_test_dot_XXXXXX");
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp failed");
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, "w+");
    if (!f) {
        close(fd);
        return NULL;
    }
    nb_status st = nb_tape_write_dot(tape, output, f);
    CHECK(st == NB_OK, "nb_tape_write_dot: %s", nb_error_message());
    fflush(f);
    long len = ftell(f);
    char *text = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (text) {
        rewind(f);
        size_t got = fread(text, 1, (size_t)len, f);
        text[got] = '\0';
    }
    fclose(f);
    return text;
}

static void render_with_dot(const char *path, const char *what)
{
    if (access("/usr/bin/dot", X_OK) != 0) {
        printf("note: /usr/bin/dot not found; not rendering the %s graph (install graphviz)\n", what);
        return;
    }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "/usr/bin/dot -Tsvg '%s' -o /dev/null", path);
    int rc = system(cmd);
    CHECK(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "dot -Tsvg of the %s graph failed (status %d)", what, rc);
}

static void test_dot_export(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 5);
    /* loss = mean((tanh(x W1 + b1) W2 + b2 - y)^2), x [4,3], W1 [3,5], W2 [5,2], y [4,2] */
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(4, 3), -1, 1, &rng);
    nb_tensor *y = nb_tensor_uniform(NB_F64, NB_SHAPE(4, 2), -1, 1, &rng);
    nb_tensor *W1 = nb_tensor_normal(NB_F64, NB_SHAPE(3, 5), 0, 0.5, &rng);
    nb_tensor *b1 = nb_tensor_zeros(NB_F64, NB_SHAPE(5));
    nb_tensor *W2 = nb_tensor_normal(NB_F64, NB_SHAPE(5, 2), 0, 0.5, &rng);
    nb_tensor *b2 = nb_tensor_zeros(NB_F64, NB_SHAPE(2));
    nb_tensor *params[] = {W1, b1, W2, b2};
    const char *pnames[] = {"W1", "b1", "W2", "b2"};
    for (int i = 0; i < 4; i++) {
        nb_tensor_set_requires_grad(params[i], 1);
        nb_tensor_set_name(params[i], pnames[i]);
    }
    nb_tensor_set_name(x, "x");
    nb_tensor_set_name(y, "target \"y\"\\"); /* quotes and a backslash must be escaped */
    CHECK(!strcmp(nb_tensor_name(W1), "W1"), "leaf name kept");

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *h = nb_tanh(nb_add(nb_matmul(x, W1), b1));
    nb_tensor_set_name(h, "hidden");
    nb_tensor *out = nb_add(nb_matmul(h, W2), b2);
    nb_tensor *loss = nb_mean_all(nb_square(nb_sub(out, y)));
    nb_tensor *unrelated = nb_exp(W2); /* on the tape, but not on the way to the loss */
    CHECK(loss && unrelated, "MLP forward: %s", nb_error_message());
    /* matmul, add, tanh, matmul, add, sub, square, sum, scale (mean) and exp */
    CHECK(nb_tape_node_count(tape) == 10, "%zu nodes recorded, expected 10", nb_tape_node_count(tape));

    char path[64];
    char *dot = write_dot(tape, loss, path, sizeof path);
    CHECK(dot != NULL, "DOT text");
    if (dot) {
        CHECK(!strncmp(dot, "digraph", 7) && dot[strlen(dot) - 2] == '}', "a digraph { ... }");
        /* 9 op nodes, 6 boxes (x, y, W1, b1, W2, b2), 14 edges (2+2+1+2+2+2+1+1+1 inputs) */
        CHECK(count_substr(dot, "shape=ellipse") == 9, "%d op nodes, expected 9", count_substr(dot, "shape=ellipse"));
        CHECK(count_substr(dot, "shape=box") == 6, "%d leaf boxes, expected 6", count_substr(dot, "shape=box"));
        CHECK(count_substr(dot, " -> ") == 14, "%d edges, expected 14", count_substr(dot, " -> "));
        /* ops with their output shapes and dtypes */
        CHECK(count_substr(dot, "label=\"matmul\\n[4,5] f64\"") == 1, "matmul [4,5] node");
        CHECK(count_substr(dot, "label=\"matmul\\n[4,2] f64\"") == 1, "matmul [4,2] node");
        CHECK(count_substr(dot, "label=\"add\\n[4,5] f64\"") == 1, "add [4,5] node");
        CHECK(strstr(dot, "label=\"tanh (hidden)\\n[4,5] f64\"") != NULL, "named tanh node");
        CHECK(strstr(dot, "label=\"sub\\n[4,2] f64\"") != NULL, "sub node");
        CHECK(strstr(dot, "label=\"square\\n[4,2] f64\"") != NULL, "square node");
        CHECK(strstr(dot, "label=\"sum\\n[] f64\"") != NULL, "sum node");
        CHECK(strstr(dot, "peripheries=2") && count_substr(dot, "peripheries=2") == 1, "the output is marked once");
        CHECK(!strstr(dot, "exp"), "the unrelated exp node is left out");
        /* leaves: names, shapes, dtypes; trainable ones filled blue, constants grey */
        CHECK(strstr(dot, "label=\"W1\\n[3,5] f64\"") && strstr(dot, "label=\"b1\\n[5] f64\"") &&
                  strstr(dot, "label=\"W2\\n[5,2] f64\"") && strstr(dot, "label=\"b2\\n[2] f64\"") &&
                  strstr(dot, "label=\"x\\n[4,3] f64\""),
              "leaf labels");
        CHECK(strstr(dot, "label=\"target \\\"y\\\"\\\\\\n[4,2] f64\"") != NULL, "escaped leaf name");
        CHECK(count_substr(dot, "lightblue") == 4 && count_substr(dot, "lightgrey") == 2,
              "4 trainable leaves, 2 constant ones");
        render_with_dot(path, "MLP loss");
    }
    free(dot);
    remove(path);

    /* the whole tape: the unrelated node and its edge too */
    dot = write_dot(tape, NULL, path, sizeof path);
    if (dot) {
        CHECK(count_substr(dot, "shape=ellipse") == 10 && count_substr(dot, " -> ") == 15,
              "whole tape: %d nodes, %d edges (expected 10, 15)", count_substr(dot, "shape=ellipse"),
              count_substr(dot, " -> "));
        CHECK(strstr(dot, "label=\"exp\\n[5,2] f64\"") != NULL, "whole tape: exp node");
        CHECK(!strstr(dot, "peripheries=2"), "whole tape: no output marked");
        render_with_dot(path, "whole-tape");
    }
    free(dot);
    remove(path);

    /* a custom op appears under its own name */
    nb_tensor *c = nb_sum_all(cube(&cube_op, W1));
    dot = write_dot(tape, c, path, sizeof path);
    if (dot) {
        CHECK(strstr(dot, "label=\"cube\\n[3,5] f64\"") != NULL, "custom op node named cube:\n%s", dot);
        CHECK(count_substr(dot, "shape=ellipse") == 2 && count_substr(dot, " -> ") == 2, "custom op graph size");
        render_with_dot(path, "custom op");
    }
    free(dot);
    remove(path);

    /* the export does not disturb the graph: backward still gives the gradients */
    CHECK(nb_backward(loss, NULL, 0) == NB_OK, "backward after export: %s", nb_error_message());
    CHECK(nb_tensor_grad(W1) && nb_tensor_grad(b2), "gradients reached the parameters");
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor *leaves[] = {x, y, W1, b1, W2, b2};
    for (size_t i = 0; i < 6; i++) nb_tensor_free(leaves[i]);
}

/* ---- anomaly mode ----------------------------------------------------------------------------- */

static void test_anomaly(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *neg = nb_tensor_from_data(NB_F64, NB_SHAPE(3), (const double[]){2.0, -1.0, 0.5});
    nb_tensor *x = nb_tensor_from_data(NB_F64, NB_SHAPE(2), (const double[]){0.0, 4.0});
    nb_tensor_set_requires_grad(neg, 1);
    nb_tensor_set_requires_grad(x, 1);

    /* off (the default): NaN and infinity pass silently */
    CHECK(nb_anomaly_mode() == 0, "anomaly mode is off by default");
    nb_tensor *l = nb_log(neg);
    CHECK(l && isnan(nb_tensor_get(l, 1)), "log(-1) is NaN without anomaly mode");
    nb_tensor *s = nb_sum_all(nb_sqrt(nb_mul_scalar(x, 1.0)));
    CHECK(nb_backward(s, NULL, 0) == NB_OK, "backward through sqrt(0) without anomaly mode: %s", nb_error_message());
    CHECK(nb_tensor_grad(x) && isinf(nb_tensor_get(nb_tensor_grad(x), 0)) &&
              nb_tensor_get(nb_tensor_grad(x), 1) == 0.25,
          "without anomaly mode: gradient [inf, 0.25]");
    nb_tensor_zero_grad(x);
    CHECK_NO_ERROR();

    nb_set_anomaly_mode(1);
    CHECK(nb_anomaly_mode() == 1, "anomaly mode on");
    /* forward: the op that made the NaN */
    CHECK_ERROR(nb_log(neg) == NULL, NB_ERR_NUMERIC, "nb_log");
    l = nb_log(neg);
    CHECK(l == NULL && strstr(nb_error_message(), "NaN") && strstr(nb_error_message(), "element 1") &&
              strstr(nb_error_message(), "[3]"),
          "forward anomaly message: \"%s\"", nb_error_message());
    nb_error_clear();
    CHECK_ERROR(nb_div(neg, nb_zeros(NB_F64, 0, NULL)) == NULL, NB_ERR_NUMERIC, "nb_div: anomaly: infinity");
    /* finite results are untouched */
    nb_tensor *ok = nb_sqrt(x);
    CHECK(ok && nb_tensor_get(ok, 1) == 2.0, "finite forward passes in anomaly mode: %s", nb_error_message());

    /* backward: sqrt at 0 makes an infinity in its rule; the message names sqrt and its node */
    size_t first = nb_tape_node_count(tape);
    nb_tensor *z = nb_mul_scalar(x, 1.0);  /* node first */
    nb_tensor *r = nb_sqrt(z);             /* node first + 1 */
    s = nb_sum_all(r);                     /* node first + 2 */
    CHECK(s && nb_tape_node_op(tape, first + 1) && !strcmp(nb_tape_node_op(tape, first + 1), "sqrt"),
          "sqrt is node %zu", first + 1);
    char node[32];
    snprintf(node, sizeof node, "node %zu", first + 1);
    nb_status st = nb_backward(s, NULL, NB_RETAIN_GRAPH);
    CHECK(st == NB_ERR_NUMERIC && nb_error_code() == NB_ERR_NUMERIC, "backward anomaly: %s", nb_status_name(st));
    CHECK(strstr(nb_error_message(), "backward of sqrt") && strstr(nb_error_message(), node) &&
              strstr(nb_error_message(), "infinity"),
          "backward anomaly message names sqrt and %s: \"%s\"", node, nb_error_message());
    CHECK(nb_tensor_grad(x) == NULL || nb_tensor_get(nb_tensor_grad(x), 1) == 0.0,
          "a failed backward stores no gradient");
    nb_error_clear();

    /* a raw custom backward that writes an infinity is caught too, under the op's own name */
    nb_tensor *cb = nb_sum_all(cube(&cube_bad_op, x));
    st = nb_backward(cb, NULL, 0);
    CHECK(st == NB_ERR_NUMERIC && strstr(nb_error_message(), "cube_bad"), "custom op anomaly: \"%s\"",
          nb_error_message());
    nb_error_clear();

    /* off again: the same backward goes through */
    nb_set_anomaly_mode(0);
    CHECK(nb_anomaly_mode() == 0, "anomaly mode off again");
    CHECK(nb_backward(s, NULL, 0) == NB_OK, "backward after anomaly mode: %s", nb_error_message());
    CHECK(nb_tensor_grad(x) && isinf(nb_tensor_get(nb_tensor_grad(x), 0)), "infinite gradient without the mode");
    CHECK_NO_ERROR();

    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(neg);
    nb_tensor_free(x);
}

/* A NaN is never turned into a number, so anomaly mode sees it where it appears: relu (which gave 0
 * for NaN), and a variance over too few samples (which gave 0 for an empty axis with correction 1, and
 * a negative count for fewer samples than the correction). Both dtypes. */
static void test_nan_not_hidden(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    for (int dt = NB_F32; dt <= NB_F64; dt++) {
        nb_tensor *x = nb_tensor_from_data(NB_F64, NB_SHAPE(3), (const double[]){NAN, -1.0, 2.0});
        nb_tensor *xt = nb_cast(x, (nb_dtype)dt);
        nb_tensor *r = nb_relu(xt);
        CHECK(r && isnan(nb_tensor_get(r, 0)) && nb_tensor_get(r, 1) == 0 && nb_tensor_get(r, 2) == 2,
              "%s relu([NaN, -1, 2]) = [%g, %g, %g], expected [nan, 0, 2]", nb_dtype_name((nb_dtype)dt),
              nb_tensor_get(r, 0), nb_tensor_get(r, 1), nb_tensor_get(r, 2));
        nb_set_anomaly_mode(1);
        CHECK_ERROR(nb_relu(xt) == NULL, NB_ERR_NUMERIC, "nb_relu");
        nb_set_anomaly_mode(0);

        nb_tensor *empty = nb_zeros((nb_dtype)dt, NB_SHAPE(0, 3));
        nb_tensor *v = nb_var(empty, NB_AXES(0), 1, 0), *sd = nb_std(empty, NB_AXES(0), 1, 0);
        nb_tensor *m = nb_mean(empty, NB_AXES(0), 0);
        CHECK(v && sd && m && isnan(nb_tensor_get(v, 0)) && isnan(nb_tensor_get(sd, 2)) && isnan(nb_tensor_get(m, 1)),
              "%s var, std and mean over an empty axis are NaN (%g, %g, %g)", nb_dtype_name((nb_dtype)dt),
              nb_tensor_get(v, 0), nb_tensor_get(sd, 2), nb_tensor_get(m, 1));
        nb_tensor *two = nb_cast(nb_constant(NB_F64, NB_SHAPE(2), (const double[]){5.0, 6.0}), (nb_dtype)dt);
        nb_tensor *v3 = nb_var(two, NB_AXES(0), 3, 0), *v2 = nb_var(two, NB_AXES(0), 2, 0);
        CHECK(v3 && v2 && isinf(nb_tensor_item(v3)) && nb_tensor_item(v3) > 0 && isinf(nb_tensor_item(v2)),
              "%s var of 2 samples with correction 3 and 2: %g and %g, expected inf (PyTorch)",
              nb_dtype_name((nb_dtype)dt), nb_tensor_item(v3), nb_tensor_item(v2));
        nb_set_anomaly_mode(1);
        CHECK_ERROR(nb_var(empty, NB_AXES(0), 1, 0) == NULL, NB_ERR_NUMERIC, "NaN");
        nb_set_anomaly_mode(0);
        nb_tensor_free(x);
    }
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
}

/* ---- gradient hooks --------------------------------------------------------------------------- */

typedef struct hook_ctx {
    int calls;
    double scale;  /* != 1: return grad * scale */
    int fail;      /* 1: return NULL; 2: nb_error_set first, then NULL */
    int wrong;     /* return a tensor of another shape */
    double seen[8];
    int64_t seen_n;
} hook_ctx;

static nb_tensor *hook(nb_tensor *grad, void *user)
{
    hook_ctx *h = user;
    h->calls++;
    h->seen_n = nb_tensor_numel(grad) < 8 ? nb_tensor_numel(grad) : 8;
    for (int64_t i = 0; i < h->seen_n; i++) h->seen[i] = nb_tensor_get(grad, i);
    if (h->fail == 2) nb_error_set(NB_ERR_ARG, "my hook refused the gradient");
    if (h->fail) return NULL;
    if (h->wrong) return nb_sum_all(grad);
    return h->scale != 1.0 ? nb_mul_scalar(grad, h->scale) : grad;
}

static void test_hooks(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    const double xv[6] = {-1.0, -0.5, 0.0, 0.25, 0.75, 1.5};
    nb_tensor *x = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 3), xv);
    nb_tensor_set_requires_grad(x, 1);
    double th[6], dh[6], dx[6];
    for (int i = 0; i < 6; i++) {
        th[i] = tanh(xv[i]);
        dh[i] = 2 * th[i] + 1;              /* d/dh of sum(h*h) + sum(h) */
        dx[i] = dh[i] * (1 - th[i] * th[i]); /* through tanh */
    }

    /* on an op result used twice: called once with the total gradient 2h + 1 */
    hook_ctx hc = {.scale = 1.0};
    nb_tensor *h = nb_tanh(x);
    CHECK(nb_tensor_set_hook(h, hook, &hc) == NB_OK, "set hook on an op result");
    nb_tensor *loss = nb_add(nb_sum_all(nb_mul(h, h)), nb_sum_all(h));
    CHECK(nb_backward(loss, NULL, NB_RETAIN_GRAPH) == NB_OK, "backward with hook: %s", nb_error_message());
    CHECK(hc.calls == 1, "op-result hook called %d times, expected once", hc.calls);
    int bad = 0;
    for (int i = 0; i < 6; i++) bad += hc.seen_n != 6 || fabs(hc.seen[i] - dh[i]) > 1e-15;
    CHECK(bad == 0, "the hook saw the total gradient 2h + 1 (%d wrong)", bad);
    bad = 0;
    for (int i = 0; i < 6; i++) bad += fabs(nb_tensor_get(nb_tensor_grad(x), i) - dx[i]) > 1e-15;
    CHECK(bad == 0, "keeping the gradient leaves the result unchanged (%d wrong)", bad);
    /* a second backward over the retained graph calls it once more */
    nb_tensor_zero_grad(x);
    hc.scale = 3.0;
    CHECK(nb_backward(loss, NULL, NB_RETAIN_GRAPH) == NB_OK, "second backward: %s", nb_error_message());
    CHECK(hc.calls == 2, "hook called %d times after two backwards", hc.calls);
    bad = 0;
    for (int i = 0; i < 6; i++) bad += fabs(nb_tensor_get(nb_tensor_grad(x), i) - 3 * dx[i]) > 1e-14;
    CHECK(bad == 0, "an op-result hook that scales by 3 scales the leaf gradient (%d wrong)", bad);
    /* removed: not called, gradient back to normal */
    nb_tensor_zero_grad(x);
    nb_tensor_set_hook(h, NULL, NULL);
    CHECK(nb_backward(loss, NULL, NB_RETAIN_GRAPH) == NB_OK && hc.calls == 2, "removed hook is not called");
    CHECK(fabs(nb_tensor_get(nb_tensor_grad(x), 5) - dx[5]) < 1e-15, "gradient without the hook");
    nb_tensor_zero_grad(x);

    /* on a leaf used twice: called once with the total, and its result is what the leaf stores */
    hook_ctx hl = {.scale = 2.0};
    nb_tensor *w = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 3), (const double[]){1, 2, 3, 4, 5, 6});
    nb_tensor_set_requires_grad(w, 1);
    CHECK(nb_tensor_set_hook(w, hook, &hl) == NB_OK, "set hook on a leaf");
    nb_tensor *lw = nb_add(nb_sum_all(nb_mul(w, x)), nb_sum_all(nb_mul_scalar(w, 0.5)));
    CHECK(nb_backward(lw, NULL, NB_RETAIN_GRAPH) == NB_OK, "leaf hook backward: %s", nb_error_message());
    CHECK(hl.calls == 1, "leaf hook called %d times, expected once", hl.calls);
    bad = 0;
    for (int i = 0; i < 6; i++) {
        bad += fabs(hl.seen[i] - (xv[i] + 0.5)) > 1e-15;                               /* the total */
        bad += fabs(nb_tensor_get(nb_tensor_grad(w), i) - 2 * (xv[i] + 0.5)) > 1e-15; /* scaled */
    }
    CHECK(bad == 0, "leaf hook: total x + 0.5, stored 2 (x + 0.5) (%d wrong)", bad);
    /* the other leaf is not affected */
    CHECK(fabs(nb_tensor_get(nb_tensor_grad(x), 4) - 5.0) < 1e-15, "unhooked leaf gradient is w");
    /* nb_grad applies leaf hooks too */
    nb_tensor *gw[1];
    CHECK(nb_grad(lw, NULL, 1, &w, gw, NB_RETAIN_GRAPH) == NB_OK && hl.calls == 2, "nb_grad runs the leaf hook");
    CHECK(gw[0] && fabs(nb_tensor_get(gw[0], 0) - 2 * (xv[0] + 0.5)) < 1e-15, "nb_grad result is scaled");

    /* under NB_CREATE_GRAPH the hook's result is differentiable: d/dx sum(hook(d sum(x^2)/dx)) with a
     * hook that doubles is d/dx sum(4x) = 4 */
    hook_ctx hd = {.scale = 2.0};
    nb_tensor *sq = nb_square(x);
    nb_tensor_set_hook(sq, hook, &hd);
    nb_tensor *gx[1], *ggx[1];
    CHECK(nb_grad(nb_sum_all(sq), NULL, 1, &x, gx, NB_CREATE_GRAPH) == NB_OK, "create-graph with a hook: %s",
          nb_error_message());
    CHECK(gx[0] && nb_tensor_requires_grad(gx[0]) && nb_tensor_get(gx[0], 5) == 4 * xv[5], "hooked gradient 4x");
    CHECK(gx[0] && nb_grad(nb_sum_all(gx[0]), NULL, 1, &x, ggx, 0) == NB_OK && ggx[0] && nb_tensor_get(ggx[0], 0) == 4.0 &&
              nb_tensor_get(ggx[0], 5) == 4.0,
          "second derivative through the hook: 4");
    CHECK(hd.calls == 1, "hook called %d times by one create-graph pass", hd.calls);

    /* returning NULL fails the backward, and stores nothing */
    nb_tensor_zero_grad(w);
    hl.fail = 1;
    CHECK_ERROR(nb_backward(lw, NULL, NB_RETAIN_GRAPH) != NB_OK, NB_ERR_STATE, "returned NULL");
    CHECK(nb_tensor_get(nb_tensor_grad(w), 0) == 0.0, "failed backward left the leaf gradient at zero");
    hl.fail = 2; /* with the hook's own message */
    CHECK_ERROR(nb_backward(lw, NULL, NB_RETAIN_GRAPH) != NB_OK, NB_ERR_ARG, "my hook refused the gradient");
    hl.fail = 0;
    hl.wrong = 1; /* a gradient of the wrong shape */
    CHECK_ERROR(nb_backward(lw, NULL, NB_RETAIN_GRAPH) != NB_OK, NB_ERR_SHAPE, "gradient hook of f64 [2,3] returned f64 []");
    hl.wrong = 0;
    /* on an op result, returning NULL fails before any leaf is touched */
    hook_ctx hf = {.scale = 1.0, .fail = 1};
    nb_tensor *h2 = nb_tanh(x);
    nb_tensor_set_hook(h2, hook, &hf);
    nb_tensor_zero_grad(x);
    CHECK_ERROR(nb_backward(nb_sum_all(h2), NULL, 0) != NB_OK, NB_ERR_STATE, "gradient hook");
    CHECK(hf.calls == 1 && nb_tensor_get(nb_tensor_grad(x), 0) == 0.0, "op-result hook failure stores nothing");
    CHECK_NO_ERROR();

    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(w);
}

int main(void)
{
    test_custom_ops();
    test_dot_export();
    test_anomaly();
    test_nan_not_hidden();
    test_hooks();
    return nbt_report("inspect");
}
