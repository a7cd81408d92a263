/* Files that are not what a reader expects:
 *   - safetensors files from other writers, whose tensors need not be 8-byte aligned in the data
 *     section, load with the right values (the reader used to read int64 counts through misaligned
 *     pointers: UBSan in the sanitizer build).
 */
#define _DEFAULT_SOURCE
#include "nbtest.h"

#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

static char g_dir[64];

static const char *in_dir(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", g_dir, name);
    return buf;
}

/* ---- tensors at offsets that are not 8-byte aligned ------------------------------------------- */

static void put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void test_odd_offsets(void)
{
    /* as another writer may lay it out: no padding after the header, a F32 first, so that the i64
     * step counts and the F64 that follow sit at offsets 4 and 20 of the data (4 mod 8) */
    const char *json = "{\"__metadata__\":{\"format\":\"nabla-checkpoint\",\"step\":\"3\",\"optimizer\":\"sgd\","
                       "\"optimizer_steps\":\"9\"},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"optim.param_steps\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[4,20]},"
                       "\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[20,36]}}";
    size_t hl = strlen(json);
    unsigned char file[1024];
    put_le(file, hl, 8);
    memcpy(file + 8, json, hl);
    unsigned char *data = file + 8 + hl;
    float fa = 1.5f;
    double b0 = -2.25, b1 = 1e300;
    uint32_t ua;
    uint64_t u0, u1;
    memcpy(&ua, &fa, 4);
    memcpy(&u0, &b0, 8);
    memcpy(&u1, &b1, 8);
    put_le(data, ua, 4);
    put_le(data + 4, 7, 8);
    put_le(data + 12, 9, 8);
    put_le(data + 20, u0, 8);
    put_le(data + 28, u1, 8);
    char path[256];
    in_dir(path, sizeof path, "odd.safetensors");
    FILE *fp = fopen(path, "wb");
    CHECK(fp && fwrite(file, 1, 8 + hl + 36, fp) == 8 + hl + 36, "write %s", path);
    if (fp) fclose(fp);

    nb_params *p = nb_params_new();
    nb_tensor *a = nb_params_add(p, "a", nb_tensor_zeros(NB_F32, NB_SHAPE(1)));
    nb_tensor *b = nb_params_add(p, "b", nb_tensor_zeros(NB_F64, NB_SHAPE(2)));
    nb_optim *opt = nb_optim_new(NB_SGD, p, NULL);
    int64_t step = 0;
    CHECK(nb_checkpoint_load(path, p, opt, &step) == NB_OK, "load: %s", nb_error_message());
    CHECK(step == 3 && nb_optim_steps(opt) == 9, "step %" PRId64 ", optimizer steps %" PRId64, step, nb_optim_steps(opt));
    CHECK(nb_optim_param_steps(opt, 0) == 7 && nb_optim_param_steps(opt, 1) == 9, "per-parameter steps %" PRId64 ", %" PRId64,
          nb_optim_param_steps(opt, 0), nb_optim_param_steps(opt, 1));
    CHECK(nb_tensor_get(a, 0) == 1.5 && nb_tensor_get(b, 0) == -2.25 && nb_tensor_get(b, 1) == 1e300, "values %g %g %g",
          nb_tensor_get(a, 0), nb_tensor_get(b, 0), nb_tensor_get(b, 1));
    nb_safetensors *f = NULL;
    CHECK(nb_safetensors_read(path, &f) == NB_OK, "read: %s", nb_error_message());
    nb_tensor *steps = nb_safetensors_find(f, "optim.param_steps");
    CHECK(steps && nb_tensor_get(steps, 0) == 7 && nb_tensor_get(steps, 1) == 9 &&
              nb_tensor_get(nb_safetensors_find(f, "b"), 1) == 1e300,
          "nb_safetensors_read values");
    nb_safetensors_free(f);
    nb_optim_free(opt);
    nb_params_free(p);
    unlink(path);
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/nabla-files-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_odd_offsets();
    CHECK_NO_ERROR();
    rmdir(g_dir);
    return nbt_report("files");
}
