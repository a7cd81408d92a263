/* nb_safetensors_read: any safetensors file, without a model. Checked against the committed fixture
 * (tests/fixtures/small.safetensors, whose values tests/read_safetensors.py, an independent reader,
 * wrote to small.expected.txt), a round trip with metadata, and a malformed file. */
#define _POSIX_C_SOURCE 200809L
#include "nbtest.h"

#include <stdlib.h>
#include <unistd.h>

/* Compare a tensor with the "tensor NAME DTYPE NDIM DIMS... \n VALUES" record of the expected file. */
static void check_expected(const nb_safetensors *f, const char *dir)
{
    char path[1024], name[128], dt[8];
    snprintf(path, sizeof path, "%s/small.expected.txt", dir);
    FILE *e = fopen(path, "r");
    CHECK(e != NULL, "cannot open %s", path);
    if (!e) return;
    char line[4096];
    int records = 0;
    while (fgets(line, sizeof line, e)) {
        if (strncmp(line, "tensor ", 7) != 0) continue;
        int ndim, off;
        CHECK(sscanf(line, "tensor %127s %7s %d%n", name, dt, &ndim, &off) == 3, "bad record: %s", line);
        int64_t shape[NB_MAX_DIMS], numel = 1;
        char *p = line + off;
        for (int d = 0; d < ndim; d++) {
            shape[d] = strtoll(p, &p, 10);
            numel *= shape[d];
        }
        nb_tensor *t = nb_safetensors_find(f, name);
        CHECK(t != NULL, "%s: not read", name);
        if (!t) continue;
        records++;
        nb_dtype want = !strcmp(dt, "F32") ? NB_F32 : !strcmp(dt, "F64") ? NB_F64 : NB_I64;
        CHECK(nb_tensor_dtype(t) == want && nb_tensor_ndim(t) == ndim, "%s: dtype or rank differs", name);
        for (int d = 0; d < ndim && d < nb_tensor_ndim(t); d++)
            CHECK(nb_tensor_shape(t)[d] == shape[d], "%s: extent %d differs", name, d);
        if (!fgets(line, sizeof line, e)) break;
        p = line;
        for (int64_t i = 0; i < numel; i++) {
            if (want == NB_I64) {
                long long v = strtoll(p, &p, 10);
                CHECK(((const int64_t *)nb_tensor_cdata(t))[i] == v, "%s[%lld] differs", name, (long long)i);
            } else {
                double v = strtod(p, &p);
                CHECK(nb_tensor_get(t, i) == v, "%s[%lld] = %.17g, expected %.17g", name, (long long)i,
                      nb_tensor_get(t, i), v);
            }
        }
    }
    fclose(e);
    CHECK(records == nb_safetensors_count(f) && records == 6, "%d records for %d tensors", records,
          nb_safetensors_count(f));
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/fixtures";
    char path[1024];
    snprintf(path, sizeof path, "%s/small.safetensors", dir);
    nb_safetensors *f = NULL;
    CHECK(nb_safetensors_read(path, &f) == NB_OK, "reading %s: %s", path, nb_error_message());
    if (f) {
        check_expected(f, dir);
        CHECK(nb_safetensors_meta(f, "step") && !strcmp(nb_safetensors_meta(f, "step"), "1234"), "step metadata");
        CHECK(nb_safetensors_meta(f, "nothing") == NULL, "an absent key reads as NULL");
        CHECK(nb_safetensors_tensor(f, 99) == NULL && nb_safetensors_name(f, -1) == NULL, "out of range");
        nb_safetensors_free(f);
    }

    /* a round trip with metadata */
    char tmpl[] = "/tmp/nabla-st-XXXXXX";
    CHECK(mkdtemp(tmpl) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/rt.safetensors", tmpl);
    nb_rng rng;
    nb_rng_seed(&rng, 5);
    nb_tensor *w = nb_tensor_normal(NB_F32, NB_SHAPE(3, 4), 0, 1, &rng);
    nb_tensor *ids = nb_tensor_from_data(NB_I64, NB_SHAPE(3), (const int64_t[]){7, -1, 1ll << 40});
    const char *names[2] = {"layer.weight", "ids"}, *keys[2] = {"author", "note"}, *vals[2] = {"nabla", "a \"quoted\" value"};
    nb_tensor *ts[2] = {w, ids};
    CHECK(nb_safetensors_save(path, 2, names, ts, 2, keys, vals) == NB_OK, "save: %s", nb_error_message());
    CHECK(nb_safetensors_read(path, &f) == NB_OK, "read back: %s", nb_error_message());
    if (f) {
        nb_tensor *w2 = nb_safetensors_find(f, "layer.weight"), *i2 = nb_safetensors_find(f, "ids");
        CHECK(w2 && memcmp(nb_tensor_cdata(w2), nb_tensor_cdata(w), 12 * sizeof(float)) == 0, "weight bits differ");
        CHECK(i2 && memcmp(nb_tensor_cdata(i2), nb_tensor_cdata(ids), 3 * sizeof(int64_t)) == 0, "ids differ");
        CHECK(nb_safetensors_meta(f, "note") && !strcmp(nb_safetensors_meta(f, "note"), vals[1]), "metadata differs");
        CHECK(nb_tensor_is_leaf(w2), "read tensors are leaves");
        nb_safetensors_free(f);
    }

    /* a malformed file: rejected with a message, nothing handed out */
    FILE *bad = fopen(path, "r+b");
    if (bad) {
        fseek(bad, 0, SEEK_SET);
        fputc(0xff, bad); /* header length far beyond the file */
        fputc(0xff, bad);
        fclose(bad);
    }
    f = (nb_safetensors *)1;
    CHECK_ERROR(nb_safetensors_read(path, &f) != NB_OK, NB_ERR_FORMAT, "exceeds");
    CHECK(f == NULL, "a failed read hands out no handle");
    CHECK_ERROR(nb_safetensors_read("/nonexistent/x.safetensors", &f) != NB_OK, NB_ERR_IO, "cannot open");
    unlink(path);
    rmdir(tmpl);
    nb_tensor_free(w);
    nb_tensor_free(ids);
    return nbt_report("safetensors_read");
}
