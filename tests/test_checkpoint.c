/* Checkpoints (safetensors): bit-identical round trips with the step counter and optimizer state; a
 * committed fixture checked against an independent Python reader (tests/read_safetensors.py); the
 * writer's output byte for byte; malformed files rejected with a clear error and the model left
 * untouched; a write that fails midway leaving the previous file intact.
 *
 * Usage: test_checkpoint [FIXTURE_DIR]           run the tests (default tests/fixtures)
 *        test_checkpoint --write-fixture FILE    write the fixture model's checkpoint to FILE
 * Regenerate the fixture (from the source root, after building):
 *   build/tests/test_checkpoint --write-fixture tests/fixtures/small.safetensors
 *   /usr/bin/python3 tests/read_safetensors.py tests/fixtures/small.safetensors > tests/fixtures/small.expected.txt
 */
#define _XOPEN_SOURCE 700

#include "nbtest.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[64]; /* a fresh folder under /tmp */

static const char *in_dir(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", g_dir, name);
    return buf;
}

/* ---- byte helpers ----------------------------------------------------------------------------- */

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int b = 0; b < 8; b++) p[b] = (unsigned char)(v >> (8 * b));
}

static void put_f32(unsigned char *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    for (int b = 0; b < 4; b++) p[b] = (unsigned char)(u >> (8 * b));
}

static void put_f64(unsigned char *p, double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    put_u64(p, u);
}

static int write_bytes(const char *path, const void *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = n ? fwrite(bytes, 1, n, f) : 0;
    return fclose(f) == 0 && w == n ? 0 : -1;
}

/* A whole file into a malloc'ed buffer (NULL if unreadable). */
static unsigned char *read_bytes(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 12, len = 0;
    unsigned char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + len, 1, cap - len, f)) > 0) {
        len += r;
        if (len == cap) {
            unsigned char *grown = realloc(buf, cap *= 2);
            if (!grown) free(buf);
            buf = grown;
        }
    }
    fclose(f);
    *n = len;
    return buf;
}

/* A safetensors file from a header string (its length as the prefix) and data bytes. */
static void write_st(const char *path, const char *json, const unsigned char *data, size_t data_len)
{
    size_t hl = strlen(json);
    unsigned char *buf = malloc(8 + hl + data_len + 1);
    put_u64(buf, hl);
    memcpy(buf + 8, json, hl);
    if (data_len) memcpy(buf + 8 + hl, data, data_len);
    if (write_bytes(path, buf, 8 + hl + data_len) != 0) NBT_FAIL("cannot write %s", path);
    free(buf);
}

static int count_temp_files(void)
{
    DIR *d = opendir(g_dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, ".tmp.")) n++;
    if (d) closedir(d);
    return n;
}

static void remove_dir(void)
{
    DIR *d = opendir(g_dir);
    struct dirent *de;
    char p[512];
    while (d && (de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        in_dir(p, sizeof p, de->d_name);
        if (unlink(p) != 0) rmdir(p);
    }
    if (d) closedir(d);
    rmdir(g_dir);
}

/* ---- snapshots of every byte of a model (and its optimizer state) ----------------------------- */

typedef struct snapshot {
    unsigned char *bytes;
    size_t n;
} snapshot;

static size_t tensor_bytes(const nb_tensor *t) { return (size_t)nb_tensor_numel(t) * nb_dtype_size(nb_tensor_dtype(t)); }

static snapshot snap(const nb_params *p, const nb_optim *opt)
{
    snapshot s = {NULL, 0};
    int np = nb_params_count(p), ns = nb_optim_state_count(opt);
    for (int pass = 0; pass < 2; pass++) {
        size_t k = 0;
        for (int i = 0; i < np + ns; i++) {
            const nb_tensor *t = i < np ? nb_params_tensor(p, i) : nb_optim_state_tensor(opt, i - np);
            size_t b = tensor_bytes(t);
            if (pass == 1 && b) memcpy(s.bytes + k, nb_tensor_cdata(t), b);
            k += b;
        }
        if (pass == 0) {
            s.n = k;
            s.bytes = malloc(k + 1);
        }
    }
    return s;
}

static int snap_equal(const snapshot *a, const snapshot *b) { return a->n == b->n && memcmp(a->bytes, b->bytes, a->n) == 0; }

/* Overwrite every element of the model (and state) with a value, to see a load undo it. */
static void scribble(nb_params *p, nb_optim *opt, double v)
{
    for (int i = 0; i < nb_params_count(p); i++) nb_tensor_fill(nb_params_tensor(p, i), v);
    for (int i = 0; i < nb_optim_state_count(opt); i++) nb_tensor_fill(nb_optim_state_tensor(opt, i), v);
}

/* ---- models ----------------------------------------------------------------------------------- */

/* Values with non-trivial bit patterns from exact, libm-free arithmetic (the same on every platform). */
static nb_tensor *f32_tensor(int ndim, const int64_t *shape, int seed, int zero)
{
    nb_tensor *t = nb_tensor_zeros(NB_F32, ndim, shape);
    float *d = nb_tensor_data(t);
    for (int64_t i = 0; !zero && i < nb_tensor_numel(t); i++) d[i] = (float)((double)((i * 7 + seed) % 11) / 3.0 - 1.5);
    return t;
}

static nb_tensor *f64_tensor(int ndim, const int64_t *shape, int seed, int zero)
{
    nb_tensor *t = nb_tensor_zeros(NB_F64, ndim, shape);
    double *d = nb_tensor_data(t);
    for (int64_t i = 0; !zero && i < nb_tensor_numel(t); i++) d[i] = (double)((i * 5 + seed) % 13) / 7.0 - 0.9;
    return t;
}

static nb_tensor *i64_tensor(int64_t n, const int64_t *values, int zero)
{
    nb_tensor *t = nb_tensor_zeros(NB_I64, NB_SHAPE(n));
    if (!zero) memcpy(nb_tensor_data(t), values, (size_t)n * sizeof *values);
    return t;
}

/* The committed fixture's model (zero: the same tensors, all zeros). */
static nb_params *small_model(int zero)
{
    static const int64_t counts[4] = {-1, 0, ((int64_t)1 << 40) + 3, INT64_MIN};
    nb_params *p = nb_params_new();
    nb_params_add(p, "fc.weight", f32_tensor(NB_SHAPE(2, 3), 1, zero));
    nb_params_add(p, "fc.bias", f32_tensor(NB_SHAPE(2), 4, zero));
    nb_params_add(p, "emb.weight", f64_tensor(NB_SHAPE(3, 2), 2, zero));
    nb_params_add(p, "scale", f64_tensor(0, NULL, 9, zero));
    nb_params_add_buffer(p, "counts", i64_tensor(4, counts, zero));
    nb_params_add_buffer(p, "empty", nb_tensor_zeros(NB_F32, NB_SHAPE(0, 3)));
    return p;
}

#define FIXTURE_STEP 1234

/* A model with f32 and f64 parameters, an i64 buffer, a 0-d and an empty tensor, special float
 * values, and a name that needs JSON escaping. */
static nb_params *full_model(void)
{
    static const int64_t counts[3] = {-7, ((int64_t)1 << 40) | 5, INT64_MIN};
    nb_params *p = nb_params_new();
    nb_params_add(p, "fc.weight", f32_tensor(NB_SHAPE(3, 4), 3, 0));
    nb_tensor *bias = nb_params_add(p, "fc.bias", f32_tensor(NB_SHAPE(5), 5, 0));
    nb_params_add(p, "emb.weight", f64_tensor(NB_SHAPE(5, 2), 1, 0));
    nb_params_add(p, "scale", f64_tensor(0, NULL, 6, 0));
    nb_params_add(p, "we\"ird\\name/\xc3\xa9\t", f64_tensor(NB_SHAPE(2), 3, 0));
    nb_params_add_buffer(p, "bn.count", i64_tensor(3, counts, 0));
    nb_params_add_buffer(p, "empty", nb_tensor_zeros(NB_F32, NB_SHAPE(0, 3)));
    /* -0, a NaN with a payload, infinity, a denormal: bits must survive */
    const uint32_t bits[5] = {0x80000000u, 0x7fc12345u, 0x7f800000u, 0x00000001u, 0x3f800001u};
    memcpy(nb_tensor_data(bias), bits, sizeof bits);
    return p;
}

/* ---- 1. round trip ---------------------------------------------------------------------------- */

static void test_round_trip(void)
{
    char path[512];
    in_dir(path, sizeof path, "model.ckpt");
    nb_params *p = full_model();
    CHECK_NO_ERROR();
    snapshot before = snap(p, NULL);
    CHECK(before.n == 12 * 4 + 5 * 4 + 10 * 8 + 8 + 2 * 8 + 3 * 8, "snapshot size %zu", before.n);
    CHECK(nb_checkpoint_save(path, p, NULL, 123456789012345) == NB_OK, "save: %s", nb_error_message());
    CHECK(count_temp_files() == 0, "a temporary file was left");

    /* the layout: data 8-byte aligned, header padded with spaces, 8-byte tensors first */
    size_t n = 0;
    unsigned char *file = read_bytes(path, &n);
    CHECK(file && n >= 8, "cannot read %s back", path);
    if (file && n >= 8) {
        uint64_t hl = 0;
        for (int b = 0; b < 8; b++) hl |= (uint64_t)file[b] << (8 * b);
        CHECK(hl % 8 == 0 && 8 + hl + before.n == n, "header length %" PRIu64 ", file %zu bytes", hl, n);
        CHECK(file[8] == '{', "header starts with %c", file[8]);
        size_t last = 8 + (size_t)hl - 1;
        while (last > 8 && file[last] == ' ') last--;
        CHECK(file[last] == '}', "header ends with %c before its padding", file[last]);
        char *hdr = strndup((const char *)file + 8, (size_t)hl);
        const char *emb = strstr(hdr, "\"emb.weight\""), *fc = strstr(hdr, "\"fc.weight\"");
        CHECK(emb && fc && emb < fc, "F64 tensors come before F32 ones");
        CHECK(strstr(hdr, "\"__metadata__\":{\"format\":\"nabla-checkpoint\",\"step\":\"123456789012345\"}") != NULL,
              "metadata: %s", hdr);
        CHECK(strstr(hdr, "\"we\\\"ird\\\\name/\xc3\xa9\\t\"") != NULL, "escaped name in %s", hdr);
        CHECK(strstr(hdr, "\"scale\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[") != NULL, "0-d entry in %s", hdr);
        free(hdr);
    }
    free(file);

    scribble(p, NULL, 42.0);
    snapshot changed = snap(p, NULL);
    CHECK(!snap_equal(&before, &changed), "scribble changed nothing");
    int64_t step = -1;
    CHECK(nb_checkpoint_load(path, p, NULL, &step) == NB_OK, "load: %s", nb_error_message());
    snapshot after = snap(p, NULL);
    CHECK(snap_equal(&before, &after), "loaded bytes differ from the saved ones");
    CHECK(step == 123456789012345, "step %" PRId64, step);
    CHECK(nb_checkpoint_load(path, p, NULL, NULL) == NB_OK, "load without step: %s", nb_error_message());

    /* negative steps round-trip too */
    CHECK(nb_checkpoint_save(path, p, NULL, INT64_MIN) == NB_OK, "save: %s", nb_error_message());
    CHECK(nb_checkpoint_load(path, p, NULL, &step) == NB_OK && step == INT64_MIN, "step %" PRId64, step);

    /* into a second model built separately */
    nb_params *q = full_model();
    scribble(q, NULL, -3.0);
    CHECK(nb_checkpoint_load(path, q, NULL, NULL) == NB_OK, "load: %s", nb_error_message());
    snapshot other = snap(q, NULL);
    CHECK(snap_equal(&before, &other), "a second model loaded other bytes");

    /* an empty collection: a file with only metadata */
    nb_params *none = nb_params_new();
    in_dir(path, sizeof path, "empty.ckpt");
    CHECK(nb_checkpoint_save(path, none, NULL, 7) == NB_OK, "save empty: %s", nb_error_message());
    step = 0;
    CHECK(nb_checkpoint_load(path, none, NULL, &step) == NB_OK && step == 7, "load empty: %s", nb_error_message());
    nb_params_free(none);

    free(before.bytes);
    free(changed.bytes);
    free(after.bytes);
    free(other.bytes);
    nb_params_free(p);
    nb_params_free(q);
}

/* nb_safetensors_save directly: any tensors and metadata; its argument checks. */
static void test_safetensors_save(void)
{
    char path[512], bad[512];
    in_dir(path, sizeof path, "plain.safetensors");
    nb_tensor *a = f32_tensor(NB_SHAPE(2, 2), 1, 0), *b = f64_tensor(NB_SHAPE(3), 2, 0);
    const char *names[] = {"a", "b"};
    nb_tensor *ts[] = {a, b};
    const char *keys[] = {"author", "note"}, *values[] = {"nabla", "caf\xc3\xa9 \"quoted\""};
    CHECK(nb_safetensors_save(path, 2, names, ts, 2, keys, values) == NB_OK, "save: %s", nb_error_message());

    /* readable by the checkpoint loader into a collection of those names (no step asked) */
    nb_params *p = nb_params_new();
    nb_tensor *pa = nb_params_add(p, "a", f32_tensor(NB_SHAPE(2, 2), 0, 1));
    nb_tensor *pb = nb_params_add(p, "b", f64_tensor(NB_SHAPE(3), 0, 1));
    CHECK(nb_checkpoint_load(path, p, NULL, NULL) == NB_OK, "load: %s", nb_error_message());
    CHECK(memcmp(nb_tensor_cdata(pa), nb_tensor_cdata(a), 16) == 0 && memcmp(nb_tensor_cdata(pb), nb_tensor_cdata(b), 24) == 0,
          "values differ");
    int64_t step = 5;
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, &step) != NB_OK, NB_ERR_FORMAT, "no step in the metadata");
    CHECK(step == 5, "step changed to %" PRId64, step);

    const char *dup[] = {"a", "a"};
    CHECK_ERROR(nb_safetensors_save(path, 2, dup, ts, 0, NULL, NULL) != NB_OK, NB_ERR_ARG, "tensor \"a\" given twice");
    const char *dupk[] = {"k", "k"};
    CHECK_ERROR(nb_safetensors_save(path, 2, names, ts, 2, dupk, values) != NB_OK, NB_ERR_ARG,
                "metadata key \"k\" given twice");
    const char *meta_name[] = {"__metadata__", "b"};
    CHECK_ERROR(nb_safetensors_save(path, 2, meta_name, ts, 0, NULL, NULL) != NB_OK, NB_ERR_ARG,
                "name \"__metadata__\" is not allowed");
    const char *bad_utf8[] = {"a\xff", "b"};
    CHECK_ERROR(nb_safetensors_save(path, 2, bad_utf8, ts, 0, NULL, NULL) != NB_OK, NB_ERR_ARG, "not UTF-8");
    const char *empty_name[] = {"", "b"};
    CHECK_ERROR(nb_safetensors_save(path, 2, empty_name, ts, 0, NULL, NULL) != NB_OK, NB_ERR_ARG, "is not allowed");
    nb_tensor *with_null[] = {a, NULL};
    CHECK_ERROR(nb_safetensors_save(path, 2, names, with_null, 0, NULL, NULL) != NB_OK, NB_ERR_ARG,
                "tensor b is NULL");
    CHECK_ERROR(nb_safetensors_save(NULL, 2, names, ts, 0, NULL, NULL) != NB_OK, NB_ERR_ARG, "nb_safetensors_save");
    CHECK_ERROR(nb_safetensors_save(path, -1, names, ts, 0, NULL, NULL) != NB_OK, NB_ERR_ARG, "nb_safetensors_save");
    CHECK_ERROR(nb_checkpoint_save(path, NULL, NULL, 0) != NB_OK, NB_ERR_ARG, "nb_checkpoint_save: path or params");
    CHECK_ERROR(nb_checkpoint_load(path, NULL, NULL, NULL) != NB_OK, NB_ERR_ARG, "nb_checkpoint_load: path or params");

    /* I/O failures name the path and the system's reason, and leave no temporary file */
    in_dir(bad, sizeof bad, "no/such/folder/x.ckpt");
    CHECK_ERROR(nb_checkpoint_save(bad, p, NULL, 0) != NB_OK, NB_ERR_IO, "no/such/folder/x.ckpt: cannot create");
    CHECK_ERROR(nb_checkpoint_save(bad, p, NULL, 0) != NB_OK, NB_ERR_IO, "No such file or directory");
    in_dir(bad, sizeof bad, "a_folder.ckpt");
    mkdir(bad, 0700);
    CHECK_ERROR(nb_checkpoint_save(bad, p, NULL, 0) != NB_OK, NB_ERR_IO, "a_folder.ckpt: renaming the temporary file");
    CHECK(count_temp_files() == 0, "a temporary file was left after a failed rename");
    struct stat st;
    CHECK(stat(bad, &st) == 0 && S_ISDIR(st.st_mode), "the folder was replaced");
    CHECK_ERROR(nb_checkpoint_load(bad, p, NULL, NULL) != NB_OK, NB_ERR_IO, "a_folder.ckpt: not a regular file");
    in_dir(bad, sizeof bad, "missing.ckpt");
    CHECK_ERROR(nb_checkpoint_load(bad, p, NULL, NULL) != NB_OK, NB_ERR_IO, "missing.ckpt: cannot open: No such file");

    nb_params_free(p);
    nb_tensor_free(a);
    nb_tensor_free(b);
}

/* ---- 2. the committed fixture ----------------------------------------------------------------- */

static nb_dtype dtype_of(const char *s)
{
    return strcmp(s, "F32") == 0 ? NB_F32 : strcmp(s, "F64") == 0 ? NB_F64 : strcmp(s, "I64") == 0 ? NB_I64 : NB_DTYPE_COUNT;
}

/* Compare a loaded model with the Python reader's listing: names, dtypes, shapes, values (bits). */
static void check_expected(const char *expected_path, const nb_params *p, int64_t step)
{
    FILE *f = fopen(expected_path, "r");
    CHECK(f != NULL, "cannot open %s", expected_path);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    int tensors = 0, saw_step = 0, lineno = 0;
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        char *save = NULL, *tok = strtok_r(line, " \n", &save);
        if (!tok || tok[0] == '#') continue;
        if (strcmp(tok, "metadata") == 0) {
            const char *key = strtok_r(NULL, " \n", &save), *val = strtok_r(NULL, "\n", &save);
            if (key && strcmp(key, "step") == 0) {
                saw_step = 1;
                CHECK(val && strtoll(val, NULL, 10) == step, "step %s in the listing, %" PRId64 " loaded", val ? val : "?", step);
            }
            continue;
        }
        CHECK(strcmp(tok, "tensor") == 0, "%s:%d: unexpected %s", expected_path, lineno, tok);
        const char *name_tok = strtok_r(NULL, " \n", &save), *dt = strtok_r(NULL, " \n", &save);
        const char *nds = strtok_r(NULL, " \n", &save);
        if (!name_tok || !dt || !nds) {
            NBT_FAIL("%s:%d: short tensor line", expected_path, lineno);
            break;
        }
        char name[128]; /* the line buffer is reused for the values */
        snprintf(name, sizeof name, "%s", name_tok);
        const nb_tensor *t = nb_params_find(p, name);
        tensors++;
        CHECK(t != NULL, "tensor %s of the listing is not in the model", name);
        int nd = atoi(nds);
        CHECK(t && dtype_of(dt) == nb_tensor_dtype(t) && nd == nb_tensor_ndim(t), "tensor %s: %s %d-d", name, dt, nd);
        for (int d = 0; d < nd; d++) {
            const char *ext = strtok_r(NULL, " \n", &save);
            CHECK(t && ext && strtoll(ext, NULL, 10) == nb_tensor_dim(t, d), "tensor %s: dim %d", name, d);
        }
        /* the values: one line */
        if (getline(&line, &cap, f) < 0) line[0] = 0;
        lineno++;
        int64_t count = 0;
        for (tok = strtok_r(line, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save), count++) {
            if (!t || count >= nb_tensor_numel(t)) continue;
            int same;
            if (nb_tensor_dtype(t) == NB_F32) {
                float want = (float)strtod(tok, NULL); /* the double repr of an f32 value: exact */
                same = memcmp(&want, (const float *)nb_tensor_cdata(t) + count, 4) == 0;
            } else if (nb_tensor_dtype(t) == NB_F64) {
                double want = strtod(tok, NULL);
                same = memcmp(&want, (const double *)nb_tensor_cdata(t) + count, 8) == 0;
            } else {
                errno = 0;
                int64_t want = strtoll(tok, NULL, 10);
                same = errno == 0 && want == ((const int64_t *)nb_tensor_cdata(t))[count];
            }
            CHECK(same, "tensor %s element %" PRId64 ": %s in the listing, %.17g loaded", name, count, tok,
                  nb_tensor_get(t, count));
        }
        CHECK(t && count == nb_tensor_numel(t), "tensor %s: %" PRId64 " values listed", name, count);
    }
    CHECK(tensors == nb_params_count(p), "%d tensors listed, %d in the model", tensors, nb_params_count(p));
    CHECK(saw_step, "no step in the listing");
    free(line);
    fclose(f);
}

static void test_fixture(const char *dir)
{
    char fixture[1024], expected[1024], fresh[512];
    snprintf(fixture, sizeof fixture, "%s/small.safetensors", dir);
    snprintf(expected, sizeof expected, "%s/small.expected.txt", dir);

    /* the committed file loads into a zeroed model and gives the Python reader's values */
    nb_params *p = small_model(1);
    int64_t step = 0;
    CHECK(nb_checkpoint_load(fixture, p, NULL, &step) == NB_OK, "load fixture: %s", nb_error_message());
    CHECK(step == FIXTURE_STEP, "step %" PRId64, step);
    check_expected(expected, p, step);

    /* and equals the model it was made from */
    nb_params *ref = small_model(0);
    snapshot a = snap(p, NULL), b = snap(ref, NULL);
    CHECK(snap_equal(&a, &b), "fixture values differ from the generator's model");

    /* the writer is deterministic: a fresh save is the committed file byte for byte */
    in_dir(fresh, sizeof fresh, "fresh.safetensors");
    CHECK(nb_checkpoint_save(fresh, ref, NULL, FIXTURE_STEP) == NB_OK, "save: %s", nb_error_message());
    size_t n1 = 0, n2 = 0;
    unsigned char *x = read_bytes(fixture, &n1), *y = read_bytes(fresh, &n2);
    CHECK(x && y && n1 == n2 && memcmp(x, y, n1) == 0, "fresh file (%zu bytes) differs from the fixture (%zu bytes)", n2, n1);
    free(x);
    free(y);
    free(a.bytes);
    free(b.bytes);
    nb_params_free(p);
    nb_params_free(ref);
}

/* ---- 3. malformed files ----------------------------------------------------------------------- */

/* The model: a F32 [2,2] = -1..-4, b F64 [3] = -5..-7; the files hold 1..4 and 5..7 (plus spare
 * bytes), so that any partial load would show. */
#define A_OK "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}"
#define B_OK "\"b\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[16,40]}"
#define B_AT(b, e) "\"b\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[" #b "," #e "]}"
#define A_WITH(dtype, shape, b, e) \
    "\"a\":{\"dtype\":" dtype ",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

typedef struct bad_case {
    const char *json;
    size_t data_len; /* bytes of data after the header */
    int want_step;
    nb_status code;
    const char *needle;
} bad_case;

static const bad_case bad_cases[] = {
    /* JSON */
    {"[1,2]", 40, 0, NB_ERR_FORMAT, "the header is not a JSON object"},
    {"\"a\"", 40, 0, NB_ERR_FORMAT, "the header is not a JSON object"},
    {"{\"a\": ", 40, 0, NB_ERR_FORMAT, "the header is not valid JSON"},
    {"{" A_OK "," B_OK ",}", 40, 0, NB_ERR_FORMAT, "the header is not valid JSON"},
    {"{" A_OK "," B_OK "} x", 40, 0, NB_ERR_FORMAT, "unexpected bytes after the header's JSON value"},
    {"{\"\xff\":1}", 40, 0, NB_ERR_FORMAT, "the header is not valid UTF-8"},
    {"{\"a\":5," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a: the entry is not an object"},
    /* dtype */
    {"{\"a\":{\"shape\":[2,2],\"data_offsets\":[0,16]}," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a: no dtype"},
    {"{" A_WITH("\"F16\"", "[2,2]", 0, 8) "," B_AT(8, 32) "}", 32, 0, NB_ERR_FORMAT,
     "tensor a: dtype \"F16\" is not supported (F32, F64, I64)"},
    {"{" A_WITH("\"BF16\"", "[2,2]", 0, 8) "," B_AT(8, 32) "}", 32, 0, NB_ERR_FORMAT, "tensor a: dtype \"BF16\" is not supported"},
    {"{" A_WITH("\"X\"", "[2,2]", 0, 16) "," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a: dtype \"X\" is not supported"},
    {"{" A_WITH("\"f32\"", "[2,2]", 0, 16) "," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a: dtype \"f32\" is not supported"},
    {"{" A_WITH("32", "[2,2]", 0, 16) "," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a: dtype is not a string"},
    /* shape */
    {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a: no shape"},
    {"{" A_WITH("\"F32\"", "\"2x2\"", 0, 16) "," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a: shape is not an array"},
    {"{" A_WITH("\"F32\"", "[2,-2]", 0, 16) "," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "tensor a: shape entry 1 is not an integer in [0, 2^53]"},
    {"{" A_WITH("\"F32\"", "[2,2.5]", 0, 16) "," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a: shape entry 1 is not an integer"},
    {"{" A_WITH("\"F32\"", "[\"2\",2]", 0, 16) "," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a: shape entry 0 is not an integer"},
    {"{" A_WITH("\"F32\"", "[1,1,1,1,1,1,1,2,2]", 0, 16) "," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "tensor a: shape has 9 dims, at most 8"},
    {"{" A_WITH("\"F32\"", "[4294967296,4294967296,4294967296]", 0, 16) "," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "tensor a: the shape's size overflows"},
    {"{" A_WITH("\"F32\"", "[1e300]", 0, 16) "," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a: shape entry 0 is not an integer"},
    /* data_offsets */
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2]}," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a: no data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0]}," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "tensor a: data_offsets is not an array of two integers"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":{\"b\":0}}," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "tensor a: data_offsets is not an array of two integers"},
    {"{" A_OK "," B_AT(16, 48) "}", 40, 0, NB_ERR_FORMAT, "tensor b: data_offsets [16,48] reach past the 40 bytes of data"},
    {"{" A_OK "," B_AT(9007199254740000, 9007199254740024) "}", 40, 0, NB_ERR_FORMAT, "reach past the 40 bytes"},
    {"{" A_WITH("\"F32\"", "[2,2]", 16, 0) "," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a: data_offsets [16,0] are reversed"},
    {"{" A_WITH("\"F32\"", "[2,2]", 0, 12) "," B_AT(12, 36) "}", 36, 0, NB_ERR_FORMAT,
     "tensor a: data_offsets [0,12] hold 12 bytes; F32 [2,2] needs 16"},
    {"{" A_OK "," B_AT(8, 32) "}", 40, 0, NB_ERR_FORMAT, "tensor b: bytes [8,32) overlap tensor a's [0,16)"},
    {"{" A_OK "," B_AT(16, 40) ",\"c\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[32,40]}}", 40, 0, NB_ERR_FORMAT,
     "overlap tensor"},
    {"{" A_OK "," B_AT(24, 48) "}", 48, 0, NB_ERR_FORMAT, "bytes [16,24) of the data belong to no tensor (a gap before b)"},
    {"{" A_WITH("\"F32\"", "[2,2]", 8, 24) "," B_AT(24, 48) "}", 48, 0, NB_ERR_FORMAT, "bytes [0,8) of the data belong to no tensor"},
    {"{" A_OK "," B_OK "}", 48, 0, NB_ERR_FORMAT, "bytes [40,48) after the last tensor belong to no tensor"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16],\"extra\":1}," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "tensor a: unknown key \"extra\""},
    {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "tensor a: key \"dtype\" appears twice"},
    {"{" A_OK "," A_OK "," B_OK "}", 40, 0, NB_ERR_FORMAT, "tensor a appears twice"},
    /* metadata */
    {"{\"__metadata__\":[\"x\"]," A_OK "," B_OK "}", 40, 0, NB_ERR_FORMAT, "__metadata__ is not an object"},
    {"{\"__metadata__\":{\"step\":5}," A_OK "," B_OK "}", 40, 0, NB_ERR_FORMAT, "__metadata__: \"step\" is not a string"},
    {"{\"__metadata__\":{\"step\":\"1\",\"step\":\"2\"}," A_OK "," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "__metadata__: \"step\" appears twice"},
    {"{\"__metadata__\":{},\"__metadata__\":{}," A_OK "," B_OK "}", 40, 0, NB_ERR_FORMAT, "__metadata__ appears twice"},
    {"{\"__metadata__\":{\"step\":\"12x\"}," A_OK "," B_OK "}", 40, 1, NB_ERR_FORMAT, "metadata step \"12x\" is not an integer"},
    {"{\"__metadata__\":{\"step\":\" 12\"}," A_OK "," B_OK "}", 40, 1, NB_ERR_FORMAT, "metadata step \" 12\" is not an integer"},
    {"{\"__metadata__\":{\"step\":\"99999999999999999999\"}," A_OK "," B_OK "}", 40, 1, NB_ERR_FORMAT,
     "is not an integer"},
    {"{\"__metadata__\":{\"step\":\"\"}," A_OK "," B_OK "}", 40, 0, NB_ERR_FORMAT, "metadata step \"\" is not an integer"},
    {"{\"__metadata__\":{\"format\":\"nabla-checkpoint\"}," A_OK "," B_OK "}", 40, 1, NB_ERR_FORMAT, "no step in the metadata"},
    {"{\"__metadata__\":{\"optimizer\":\"lion\"}," A_OK "," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "metadata optimizer \"lion\" is not a known optimizer"},
    {"{\"__metadata__\":{\"optimizer\":\"adam\",\"optimizer_steps\":\"-1\"}," A_OK "," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "metadata optimizer_steps \"-1\" is not a non-negative integer"},
    /* strict JSON: what a general parser lets through is an error here too */
    {"{\"a\" {\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "the header is not valid JSON"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[02,2],\"data_offsets\":[0,16]}," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "tensor a: shape entry 0 is not an integer"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2e0],\"data_offsets\":[0,16]}," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "tensor a: shape entry 1 is not an integer"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2.0],\"data_offsets\":[0,16]}," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "tensor a: shape entry 1 is not an integer"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[[2],2],\"data_offsets\":[0,16]}," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "tensor a: shape entry 0 is not an integer"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[9007199254740993,0],\"data_offsets\":[0,0]}," B_AT(0, 24) "}", 24, 0,
     NB_ERR_FORMAT, "tensor a: shape entry 0 is not an integer in [0, 2^53]"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,99999999999999999999999]}," B_OK "}", 40, 0,
     NB_ERR_FORMAT, "tensor a: data_offsets is not an array of two integers in [0, 2^53]"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16,32]}," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "tensor a: data_offsets is not an array of two integers"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16],\"dtype\":\"F64\"}," B_OK "}", 40, 0,
     NB_ERR_FORMAT, "tensor a: key \"dtype\" appears twice"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16],\"x\":{\"y\":1}}," B_OK "}", 40, 0,
     NB_ERR_FORMAT, "tensor a: unknown key \"x\""},
    {"{\"a\\x\":{}," B_OK "}", 40, 0, NB_ERR_FORMAT, "a bad escape in a string"},
    {"{\"a\\u00G1\":{}," B_OK "}", 40, 0, NB_ERR_FORMAT, "a bad \\u escape"},
    {"{\"a\\udc00\":{}," B_OK "}", 40, 0, NB_ERR_FORMAT, "a lone low surrogate"},
    {"{\"a\\ud800x\":{}," B_OK "}", 40, 0, NB_ERR_FORMAT, "a high surrogate without its low surrogate"},
    {"{\"a\\u0000\":{}," B_OK "}", 40, 0, NB_ERR_FORMAT, "a string holds \\u0000"},
    {"{\"a\tb\":{}," B_OK "}", 40, 0, NB_ERR_FORMAT, "a control character in a string"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}," B_OK, 40, 0, NB_ERR_FORMAT,
     "the header is not valid JSON"},
    {"{" A_OK "," B_OK "}{}", 40, 0, NB_ERR_FORMAT, "unexpected bytes after the header's JSON value"},
    {"{\"__metadata__\":{\"step\":{\"x\":\"1\"}}," A_OK "," B_OK "}", 40, 0, NB_ERR_FORMAT,
     "__metadata__: \"step\" is not a string"},
    {"{\"__meta\\u0064ata__\":{},\"__metadata__\":{}," A_OK "," B_OK "}", 40, 0, NB_ERR_FORMAT, "__metadata__ appears twice"},
    {"{\"\\u0061\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}," A_OK "," B_AT(16, 40) "}", 40, 0,
     NB_ERR_FORMAT, "tensor a appears twice"},
    /* the model */
    {"{" B_AT(0, 24) "}", 24, 0, NB_ERR_SHAPE, "1 tensor(s) of the model missing from the file (a)"},
    {"{" A_OK "," B_OK ",\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[40,44]}}", 44, 0, NB_ERR_SHAPE,
     "1 tensor(s) in the file not in the model (c)"},
    {"{" B_AT(0, 24) ",\"c\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[24,40]}}", 40, 0, NB_ERR_SHAPE,
     "1 tensor(s) of the model missing from the file (a); 1 tensor(s) in the file not in the model (c)"},
    {"{" A_WITH("\"F32\"", "[4]", 0, 16) "," B_OK "}", 40, 0, NB_ERR_SHAPE, "tensor a: shape [4] in the file, [2,2] in the model"},
    {"{" A_WITH("\"F32\"", "[2,2,1]", 0, 16) "," B_OK "}", 40, 0, NB_ERR_SHAPE,
     "tensor a: shape [2,2,1] in the file, [2,2] in the model"},
    {"{" A_WITH("\"F64\"", "[2,2]", 0, 32) "," B_AT(32, 56) "}", 56, 0, NB_ERR_SHAPE,
     "tensor a: dtype F64 in the file, F32 in the model"},
    {"{" A_WITH("\"I64\"", "[2,2]", 0, 32) "," B_AT(32, 56) "}", 56, 0, NB_ERR_SHAPE,
     "tensor a: dtype I64 in the file, F32 in the model"},
};

static nb_params *ab_model(void)
{
    nb_params *p = nb_params_new();
    nb_tensor *a = nb_params_add(p, "a", nb_tensor_zeros(NB_F32, NB_SHAPE(2, 2)));
    nb_tensor *b = nb_params_add(p, "b", nb_tensor_zeros(NB_F64, NB_SHAPE(3)));
    for (int i = 0; i < 4; i++) ((float *)nb_tensor_data(a))[i] = (float)-(i + 1);
    for (int i = 0; i < 3; i++) ((double *)nb_tensor_data(b))[i] = -(i + 5);
    return p;
}

static void test_malformed(void)
{
    char path[512], dir_path[512];
    in_dir(path, sizeof path, "bad.safetensors");
    nb_params *p = ab_model();
    snapshot orig = snap(p, NULL);
    unsigned char data[64];
    memset(data, 0, sizeof data);
    for (int i = 0; i < 4; i++) put_f32(data + 4 * i, (float)(i + 1));
    for (int i = 0; i < 3; i++) put_f64(data + 16 + 8 * i, i + 5);

#define CHECK_UNCHANGED(what)                                                                          \
    do {                                                                                               \
        snapshot now_ = snap(p, NULL);                                                                 \
        CHECK(snap_equal(&orig, &now_), "%s: the model changed", what);                                \
        free(now_.bytes);                                                                              \
    } while (0)

    /* the control: the well-formed file loads, and the error cases below differ from it in one thing */
    write_st(path, "{" A_OK "," B_OK "}", data, 40);
    CHECK(nb_checkpoint_load(path, p, NULL, NULL) == NB_OK, "control: %s", nb_error_message());
    CHECK(nb_tensor_get(nb_params_find(p, "a"), 3) == 4 && nb_tensor_get(nb_params_find(p, "b"), 2) == 7, "control values");
    /* entries of an optimizer are skipped when none is given */
    write_st(path, "{" A_OK "," B_OK ",\"optim.a.exp_avg\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[40,56]}}", data, 56);
    CHECK(nb_checkpoint_load(path, p, NULL, NULL) == NB_OK, "optimizer entries without optimizer: %s", nb_error_message());
    nb_params_free(p);
    p = ab_model();

    int64_t step = 99;
    int n_cases = (int)(sizeof bad_cases / sizeof bad_cases[0]);
    for (int k = 0; k < n_cases; k++) {
        const bad_case *c = &bad_cases[k];
        write_st(path, c->json, data, c->data_len);
        nb_error_clear();
        nb_status st = nb_checkpoint_load(path, p, NULL, c->want_step ? &step : NULL);
        nbt_checks++;
        if (st == NB_OK || st != c->code || nb_error_code() != c->code || !strstr(nb_error_message(), c->needle))
            NBT_FAIL("case %d (%s): status %s, message \"%s\"; expected %s with \"%s\"", k, c->json, nb_status_name(st),
                     nb_error_message(), nb_status_name(c->code), c->needle);
        /* every message names the function and the file */
        CHECK(strstr(nb_error_message(), "nb_checkpoint_load: ") && strstr(nb_error_message(), "bad.safetensors: "),
              "case %d: message \"%s\"", k, nb_error_message());
        nb_error_clear();
        char what[32];
        snprintf(what, sizeof what, "case %d", k);
        CHECK_UNCHANGED(what);
    }
    CHECK(step == 99, "step changed to %" PRId64, step);

    /* byte-level damage */
    unsigned char good[256];
    const char *hj = "{" A_OK "," B_OK "}";
    size_t hl = strlen(hj), total = 8 + hl + 40;
    put_u64(good, hl);
    memcpy(good + 8, hj, hl);
    memcpy(good + 8 + hl, data, 40);
    unsigned char buf[256];

    CHECK(write_bytes(path, good, 0) == 0, "write");
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, NULL) != NB_OK, NB_ERR_FORMAT, "0 bytes, shorter than the 8-byte header length");
    CHECK(write_bytes(path, good, 4) == 0, "write");
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, NULL) != NB_OK, NB_ERR_FORMAT, "4 bytes, shorter than the 8-byte header length");
    CHECK(write_bytes(path, good, 8) == 0, "write");
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, NULL) != NB_OK, NB_ERR_FORMAT, "exceeds the 0 bytes after it");
    CHECK(write_bytes(path, good, 8 + hl / 2) == 0, "write"); /* cut inside the header */
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, NULL) != NB_OK, NB_ERR_FORMAT, "exceeds the");
    CHECK(write_bytes(path, good, total - 8) == 0, "write"); /* cut inside the data */
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, NULL) != NB_OK, NB_ERR_FORMAT, "tensor b: data_offsets [16,40] reach past the 32 bytes");

    memcpy(buf, good, total);
    put_u64(buf, hl + 41); /* larger than the file */
    CHECK(write_bytes(path, buf, total) == 0, "write");
    char needle[96];
    snprintf(needle, sizeof needle, "header length %zu exceeds the %zu bytes after it", hl + 41, hl + 40);
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, NULL) != NB_OK, NB_ERR_FORMAT, needle);
    put_u64(buf, 0);
    CHECK(write_bytes(path, buf, total) == 0, "write");
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, NULL) != NB_OK, NB_ERR_FORMAT, "header length 0 is too small");
    put_u64(buf, 1);
    CHECK(write_bytes(path, buf, total) == 0, "write");
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, NULL) != NB_OK, NB_ERR_FORMAT, "header length 1 is too small");
    put_u64(buf, (uint64_t)1 << 62); /* must be refused without trying to allocate it */
    CHECK(write_bytes(path, buf, total) == 0, "write");
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, NULL) != NB_OK, NB_ERR_FORMAT, "header length 4611686018427387904 exceeds");
    put_u64(buf, UINT64_MAX);
    CHECK(write_bytes(path, buf, total) == 0, "write");
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, NULL) != NB_OK, NB_ERR_FORMAT, "header length 18446744073709551615 exceeds");
    memcpy(buf, good, total);
    buf[8 + hl - 1] = 0; /* a NUL in place of the closing brace */
    CHECK(write_bytes(path, buf, total) == 0, "write");
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, NULL) != NB_OK, NB_ERR_FORMAT, "the header contains a NUL byte");
    memcpy(buf, good, total);
    put_u64(buf, hl + 8); /* the header swallows 8 data bytes (binary, with NULs) */
    CHECK(write_bytes(path, buf, total) == 0, "write");
    CHECK_ERROR(nb_checkpoint_load(path, p, NULL, NULL) != NB_OK, NB_ERR_FORMAT, "the header contains a NUL byte");
    CHECK_UNCHANGED("byte-level damage");

    /* not a file */
    in_dir(dir_path, sizeof dir_path, "folder.safetensors");
    mkdir(dir_path, 0700);
    CHECK_ERROR(nb_checkpoint_load(dir_path, p, NULL, NULL) != NB_OK, NB_ERR_IO, "folder.safetensors: not a regular file");
    CHECK_UNCHANGED("folder");

    /* a header padded with whitespace of every JSON kind is fine */
    write_st(path, "{" A_OK "," B_OK "} \t\r\n  ", data, 40);
    CHECK(nb_checkpoint_load(path, p, NULL, NULL) == NB_OK, "padded header: %s", nb_error_message());
    /* escapes in names are decoded ("\u0061" is a, "\/" is /), whitespace may be anywhere, keys in any order */
    write_st(path, " {\n \"\\u0061\" : { \"shape\" : [ 2 , 2 ] , \"data_offsets\":[0,16],\"dtype\":\"F\\u0033\\u0032\" } ,\r\n"
             "\"__metadata__\":{\"x\\/y\":\"\\ud83d\\ude00 \\\"\\\\\\n\"}," B_OK "}", data, 40);
    CHECK(nb_checkpoint_load(path, p, NULL, NULL) == NB_OK, "escaped names and spacing: %s", nb_error_message());
    nb_safetensors *sf = NULL;
    CHECK(nb_safetensors_read(path, &sf) == NB_OK && nb_safetensors_find(sf, "a") &&
              nb_safetensors_meta(sf, "x/y") && !strcmp(nb_safetensors_meta(sf, "x/y"), "\xf0\x9f\x98\x80 \"\\\n"),
          "decoded metadata: %s", nb_error_message());
    nb_safetensors_free(sf);
#undef CHECK_UNCHANGED
    free(orig.bytes);
    nb_params_free(p);
}

/* ---- optimizer state -------------------------------------------------------------------------- */

/* One update from a loss that touches every trainable float tensor non-linearly. */
static void train_step(nb_params *p, nb_optim *opt, nb_tape *tape)
{
    nb_optim_zero_grad(opt);
    nb_tape_begin(tape);
    for (int i = 0; i < nb_params_count(p); i++) {
        nb_tensor *t = nb_params_tensor(p, i);
        if (!nb_params_trainable(p, i) || nb_tensor_numel(t) == 0) continue;
        nb_backward(nb_sum_all(nb_mul(nb_sin(t), nb_add_scalar(t, 0.5))), NULL, 0);
    }
    nb_tape_end(tape);
    nb_tape_reset(tape);
    nb_optim_step(opt);
}

static void test_optimizer(void)
{
    char path[512], plain[512];
    in_dir(path, sizeof path, "adam.ckpt");
    in_dir(plain, sizeof plain, "plain.ckpt");
    nb_tape *tape = nb_tape_new();
    nb_params *p = small_model(0);
    nb_optim *adam = nb_optim_new(NB_ADAM, p, NULL);
    CHECK(adam && nb_optim_state_count(adam) == 8, "adam: %d state tensors (%s)", nb_optim_state_count(adam),
          nb_error_message());
    train_step(p, adam, tape);
    train_step(p, adam, tape);
    CHECK_NO_ERROR();
    CHECK(nb_optim_steps(adam) == 2, "steps %" PRId64, nb_optim_steps(adam));
    CHECK(nb_checkpoint_save(path, p, adam, 20) == NB_OK, "save: %s", nb_error_message());
    CHECK(nb_checkpoint_save(plain, p, NULL, 20) == NB_OK, "save: %s", nb_error_message());
    snapshot saved = snap(p, adam);

    /* the uninterrupted run's third step */
    train_step(p, adam, tape);
    snapshot third = snap(p, adam);
    CHECK(!snap_equal(&saved, &third), "the third step changed nothing");

    /* load undoes the third step, state and counter included */
    int64_t step = 0;
    CHECK(nb_checkpoint_load(path, p, adam, &step) == NB_OK, "load: %s", nb_error_message());
    snapshot back = snap(p, adam);
    CHECK(snap_equal(&saved, &back), "loaded parameters or state differ from the saved ones");
    CHECK(step == 20 && nb_optim_steps(adam) == 2, "step %" PRId64 ", optimizer steps %" PRId64, step, nb_optim_steps(adam));

    /* a fresh model and optimizer resume exactly where the first run was */
    nb_params *q = small_model(1);
    nb_optim *adam2 = nb_optim_new(NB_ADAM, q, NULL);
    CHECK(nb_checkpoint_load(path, q, adam2, NULL) == NB_OK, "load into a fresh model: %s", nb_error_message());
    CHECK(nb_optim_steps(adam2) == 2, "fresh optimizer steps %" PRId64, nb_optim_steps(adam2));
    train_step(q, adam2, tape);
    snapshot resumed = snap(q, adam2);
    CHECK(snap_equal(&third, &resumed), "the resumed third step differs from the uninterrupted one");

    /* failures with an optimizer leave model and optimizer unchanged */
    snapshot before = snap(q, adam2);
    int64_t steps_before = nb_optim_steps(adam2);
    CHECK_ERROR(nb_checkpoint_load(plain, q, adam2, NULL) != NB_OK, NB_ERR_SHAPE,
                "plain.ckpt: the file has no optimizer state (saved without an optimizer)");
    nb_optim_opts mo = nb_optim_defaults(NB_SGD);
    mo.momentum = 0.9;
    nb_optim *sgd = nb_optim_new(NB_SGD, q, &mo);
    CHECK_ERROR(nb_checkpoint_load(path, q, sgd, NULL) != NB_OK, NB_ERR_SHAPE, "optimizer adam in the file, sgd given");
    nb_optim_opts ao = nb_optim_defaults(NB_ADAM);
    ao.amsgrad = 1;
    nb_optim *ams = nb_optim_new(NB_ADAM, q, &ao);
    CHECK_ERROR(nb_checkpoint_load(path, q, ams, NULL) != NB_OK, NB_ERR_SHAPE,
                "4 tensor(s) of the model missing from the file (optim.fc.weight.max_exp_avg_sq, "
                "optim.fc.bias.max_exp_avg_sq, optim.emb.weight.max_exp_avg_sq, optim.scale.max_exp_avg_sq)");
    snapshot after = snap(q, adam2);
    CHECK(snap_equal(&before, &after) && nb_optim_steps(adam2) == steps_before, "a failed load changed the model");

    /* an optimizer's file loads without one (its state skipped) */
    nb_params *r = small_model(1);
    CHECK(nb_checkpoint_load(path, r, NULL, NULL) == NB_OK, "load without optimizer: %s", nb_error_message());
    snapshot rs = snap(r, NULL), ps = snap(p, NULL);
    CHECK(snap_equal(&rs, &ps), "parameters differ");

    nb_optim_free(adam);
    nb_optim_free(adam2);
    nb_optim_free(sgd);
    nb_optim_free(ams);
    nb_params_free(p);
    nb_params_free(q);
    nb_params_free(r);
    nb_tape_free(tape);
    free(saved.bytes);
    free(third.bytes);
    free(back.bytes);
    free(resumed.bytes);
    free(before.bytes);
    free(after.bytes);
    free(rs.bytes);
    free(ps.bytes);
}

/* ---- 4. a write that fails midway ------------------------------------------------------------- */

/* nb_params_add refuses the names a checkpoint could not save, at once, taking the tensor as on any
 * failure: safetensors' "__metadata__", names that are not UTF-8, and names in the "optim." prefix that
 * checkpoints keep for the optimizer's state (a parameter "optim.w.exp_avg" beside an Adam over "w" made
 * nb_checkpoint_save fail at the first save, "given twice"). Names just beside them save and load. */
static void test_param_names(void)
{
    static const struct {
        const char *name, *why;
    } bad[] = {{"__metadata__", "\"__metadata__\" is safetensors' metadata key"},
               {"optim.w.exp_avg", "names beginning with \"optim.\" are the optimizer's state"},
               {"optim.", "names beginning with \"optim.\""},
               {"bad\xff", "it is not valid UTF-8"},
               {"cut\xc3", "it is not valid UTF-8"},
               {"overlong\xc0\xaf", "it is not valid UTF-8"},
               {"surrogate\xed\xa0\x80", "it is not valid UTF-8"}};
    nb_params *p = nb_params_new();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char needle[160];
        snprintf(needle, sizeof needle, "is not allowed: %s", bad[i].why);
        CHECK_ERROR(nb_params_add(p, bad[i].name, nb_tensor_ones(NB_F64, NB_SHAPE(2))) == NULL, NB_ERR_ARG, needle);
        CHECK_ERROR(nb_params_add_buffer(p, bad[i].name, nb_tensor_ones(NB_F64, NB_SHAPE(2))) == NULL, NB_ERR_ARG,
                    needle);
    }
    CHECK(nb_params_count(p) == 0, "nothing added (%d)", nb_params_count(p));
    /* their neighbours are fine, and save and load with an optimizer's state beside them */
    const char *good[] = {"w", "optim", "optimizer.w", "__metadata", "poids.\xc3\xa9", "x.optim.y"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK(nb_params_add(p, good[i], nb_tensor_full(NB_F64, NB_SHAPE(2), (double)i)) != NULL, "%s: %s", good[i],
              nb_error_message());
    nb_optim *adam = nb_optim_new(NB_ADAM, p, NULL);
    nb_tape *tape = nb_tape_new();
    train_step(p, adam, tape);
    char path[512];
    in_dir(path, sizeof path, "names.ckpt");
    CHECK(nb_checkpoint_save(path, p, adam, 1) == NB_OK, "save: %s", nb_error_message());
    snapshot saved = snap(p, adam);
    scribble(p, adam, 7.0);
    CHECK(nb_checkpoint_load(path, p, adam, NULL) == NB_OK, "load: %s", nb_error_message());
    snapshot back = snap(p, adam);
    CHECK(snap_equal(&saved, &back), "the names round-trip");
    free(saved.bytes);
    free(back.bytes);
    nb_tape_free(tape);
    nb_optim_free(adam);
    nb_params_free(p);
}

static void test_failed_write(void)
{
    char path[512];
    in_dir(path, sizeof path, "resume.ckpt");
    nb_params *small = small_model(0);
    CHECK(nb_checkpoint_save(path, small, NULL, 1) == NB_OK, "save: %s", nb_error_message());
    struct stat st;
    CHECK(stat(path, &st) == 0, "stat %s", path);
    off_t old_size = st.st_size;

    /* a bigger collection to the same path, with the file size limited to just above the old file */
    nb_params *big = small_model(0);
    nb_params_add(big, "big", nb_tensor_ones(NB_F64, NB_SHAPE(4096)));
    struct rlimit old_lim, lim;
    CHECK(getrlimit(RLIMIT_FSIZE, &old_lim) == 0, "getrlimit");
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old_lim;
    lim.rlim_cur = (rlim_t)old_size + 64;
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0, "setrlimit: %s", strerror(errno));
    nb_error_clear();
    nb_status s = nb_checkpoint_save(path, big, NULL, 2);
    CHECK(setrlimit(RLIMIT_FSIZE, &old_lim) == 0, "restoring the limit: %s", strerror(errno));
    signal(SIGXFSZ, old_handler);
    nbt_checks++;
    if (s != NB_ERR_IO || !strstr(nb_error_message(), "resume.ckpt: writing the temporary file") ||
        !strstr(nb_error_message(), strerror(EFBIG)))
        NBT_FAIL("status %s, message \"%s\"", nb_status_name(s), nb_error_message());
    nb_error_clear();
    CHECK(count_temp_files() == 0, "a temporary file was left after a failed write");

    /* the previous checkpoint is intact */
    CHECK(stat(path, &st) == 0 && st.st_size == old_size, "the old file's size changed");
    nb_params *back = small_model(1);
    int64_t step = 0;
    CHECK(nb_checkpoint_load(path, back, NULL, &step) == NB_OK && step == 1, "load the old file: %s", nb_error_message());
    snapshot a = snap(back, NULL), b = snap(small, NULL);
    CHECK(snap_equal(&a, &b), "the old file's values changed");
    /* and the big one is refused by the old file (the failed save did not half-replace it) */
    CHECK_ERROR(nb_checkpoint_load(path, big, NULL, NULL) != NB_OK, NB_ERR_SHAPE, "missing from the file (big)");

    /* with the limit lifted the same save works and replaces the file */
    CHECK(nb_checkpoint_save(path, big, NULL, 2) == NB_OK, "save: %s", nb_error_message());
    CHECK(nb_checkpoint_load(path, big, NULL, &step) == NB_OK && step == 2, "load: %s", nb_error_message());
    /* an existing file's permissions are kept across the replacement */
    CHECK(chmod(path, 0640) == 0, "chmod");
    CHECK(nb_checkpoint_save(path, big, NULL, 3) == NB_OK, "save: %s", nb_error_message());
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0640, "mode %o", (unsigned)(st.st_mode & 0777));

    free(a.bytes);
    free(b.bytes);
    nb_params_free(small);
    nb_params_free(big);
    nb_params_free(back);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-fixture") == 0) {
        nb_params *p = small_model(0);
        nb_status s = nb_checkpoint_save(argv[2], p, NULL, FIXTURE_STEP);
        if (s != NB_OK) fprintf(stderr, "%s\n", nb_error_message());
        nb_params_free(p);
        return s == NB_OK ? 0 : 1;
    }
    const char *fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    snprintf(g_dir, sizeof g_dir, "/tmp/nb_ckpt_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_safetensors_save();
    test_fixture(fixtures);
    test_malformed();
    test_optimizer();
    test_param_names();
    test_failed_write();
    remove_dir();
    return nbt_report("checkpoint");
}
