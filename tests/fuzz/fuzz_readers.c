/* libFuzzer target for the readers of untrusted files: nb_safetensors_read and nb_idx_read (raw and
 * gzip) on arbitrary bytes. Any crash, leak or sanitizer report is a bug; errors are expected.
 * Not part of the meson suite: tests/fuzz/run.sh builds it with clang and runs it. */
#define _POSIX_C_SOURCE 200809L
#include <nabla.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static char path[64];
    if (!path[0]) snprintf(path, sizeof path, "/tmp/nabla-fuzz-%d", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);

    nb_safetensors *st = NULL;
    if (nb_safetensors_read(path, &st) == NB_OK) {
        for (int i = 0; i < nb_safetensors_count(st); i++) (void)nb_tensor_numel(nb_safetensors_tensor(st, i));
        nb_safetensors_free(st);
    }
    nb_error_clear();
    nb_tensor *t = NULL;
    if (nb_idx_read(path, NB_F32, 1.0 / 255, &t) == NB_OK) nb_tensor_free(t);
    nb_error_clear();
    /* the same bytes gzip-compressed, through the decompressing path */
    gzFile gz = gzopen(path, "wb");
    if (gz) {
        gzwrite(gz, data, (unsigned)size);
        gzclose(gz);
        t = NULL;
        if (nb_idx_read(path, NB_I64, 1.0, &t) == NB_OK) nb_tensor_free(t);
        nb_error_clear();
    }
    unlink(path);
    return 0;
}
