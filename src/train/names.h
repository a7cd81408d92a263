/* Names in checkpoints, shared by the parameter collections (src/nn/params.c, which refuses at
 * nb_params_add what a checkpoint could not save) and the safetensors reader and writer
 * (checkpoint.c). Header-only, like sort.h. */
#ifndef NB_TRAIN_NAMES_H
#define NB_TRAIN_NAMES_H

#include <stddef.h>
#include <string.h>

/* safetensors' key of the header's metadata object: no tensor may have it as its name */
#define NB_CKPT_META_KEY "__metadata__"
/* checkpoints name the optimizer's state "optim.<name>" (and its counts and groups "optim.*") */
#define NB_CKPT_OPTIM_PREFIX "optim."

/* Whether s[0, len) is well-formed UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF), as the format requires of the header. */
static inline int nbn_utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i], cp, min;
        size_t more;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xE0) == 0xC0) {
            more = 1;
            cp = c & 0x1F;
            min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            more = 2;
            cp = c & 0x0F;
            min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            more = 3;
            cp = c & 0x07;
            min = 0x10000;
        } else {
            return 0;
        }
        if (len - i <= more) return 0;
        for (size_t k = 1; k <= more; k++) {
            unsigned cc = s[i + k];
            if ((cc & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += more + 1;
    }
    return 1;
}

/* Why name cannot name a parameter in a checkpoint (a phrase for a message), or NULL when it can. */
static inline const char *nbn_param_name_problem(const char *name)
{
    if (!name || !*name) return "a name is needed";
    if (!nbn_utf8_valid((const unsigned char *)name, strlen(name))) return "it is not valid UTF-8";
    if (strcmp(name, NB_CKPT_META_KEY) == 0) return "\"" NB_CKPT_META_KEY "\" is safetensors' metadata key";
    if (strncmp(name, NB_CKPT_OPTIM_PREFIX, sizeof NB_CKPT_OPTIM_PREFIX - 1) == 0)
        return "names beginning with \"" NB_CKPT_OPTIM_PREFIX "\" are the optimizer's state in checkpoints";
    return NULL;
}

#endif
