/* Byte vocabularies for character-level models: the distinct bytes of a text, numbered in byte
 * order. Written against nabla.h only. */
#include <nabla.h>

#include <stdio.h>

struct nb_vocab {
    int size;
    unsigned char byte[256]; /* byte of each id, ascending */
    short id[256];           /* id of each byte, -1 where absent */
};

nb_vocab *nb_vocab_build(const char *text, size_t len)
{
    if (!text) {
        nb_error_set(NB_ERR_ARG, "nb_vocab_build: text is NULL");
        return NULL;
    }
    nb_vocab *v = nb_alloc(sizeof *v);
    if (!v) {
        nb_error_set(NB_ERR_NOMEM, "nb_vocab_build: out of memory");
        return NULL;
    }
    unsigned char seen[256] = {0};
    for (size_t i = 0; i < len; i++) seen[(unsigned char)text[i]] = 1;
    v->size = 0;
    for (int c = 0; c < 256; c++) {
        v->id[c] = -1;
        if (!seen[c]) continue;
        v->id[c] = (short)v->size;
        v->byte[v->size++] = (unsigned char)c;
    }
    return v;
}

void nb_vocab_free(nb_vocab *v) { nb_dealloc(v, sizeof *v); }

int nb_vocab_size(const nb_vocab *v)
{
    if (!v) {
        nb_error_set(NB_ERR_ARG, "nb_vocab_size: vocabulary is NULL");
        return -1;
    }
    return v->size;
}

int nb_vocab_id(const nb_vocab *v, unsigned char c)
{
    if (!v) {
        nb_error_set(NB_ERR_ARG, "nb_vocab_id: vocabulary is NULL");
        return -1;
    }
    return v->id[c]; /* -1, without an error, for a byte the text did not contain */
}

int nb_vocab_char(const nb_vocab *v, int id)
{
    if (!v) {
        nb_error_set(NB_ERR_ARG, "nb_vocab_char: vocabulary is NULL");
        return -1;
    }
    return id >= 0 && id < v->size ? v->byte[id] : -1;
}

/* Printable form of byte c for messages: "'a'" or "0x0a". */
static const char *show(unsigned char c, char buf[8])
{
    if (c >= 0x20 && c < 0x7f && c != '\'')
        snprintf(buf, 8, "'%c'", c);
    else
        snprintf(buf, 8, "0x%02x", c);
    return buf;
}

nb_status nb_vocab_encode(const nb_vocab *v, const char *text, size_t len, int64_t *ids)
{
    const char *who = "nb_vocab_encode";
    if (!v || (len && (!text || !ids))) {
        nb_error_set(NB_ERR_ARG, "%s: %s is NULL", who, !v ? "vocabulary" : !text ? "text" : "ids");
        return NB_ERR_ARG;
    }
    /* check everything first: on failure ids is left untouched */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (v->id[c] < 0) {
            char buf[8];
            nb_error_set(NB_ERR_ARG, "%s: byte %s at offset %zu is not in the vocabulary of %d bytes", who,
                         show(c, buf), i, v->size);
            return NB_ERR_ARG;
        }
    }
    for (size_t i = 0; i < len; i++) ids[i] = v->id[(unsigned char)text[i]];
    return NB_OK;
}

nb_status nb_vocab_decode(const nb_vocab *v, const int64_t *ids, size_t n, char *text)
{
    const char *who = "nb_vocab_decode";
    if (!v || (n && (!ids || !text))) {
        nb_error_set(NB_ERR_ARG, "%s: %s is NULL", who, !v ? "vocabulary" : !ids ? "ids" : "text");
        return NB_ERR_ARG;
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= v->size) {
            nb_error_set(NB_ERR_ARG, "%s: id %lld at position %zu is out of range [0, %d)", who, (long long)ids[i],
                         i, v->size);
            return NB_ERR_ARG;
        }
    }
    for (size_t i = 0; i < n; i++) text[i] = (char)v->byte[ids[i]];
    return NB_OK;
}
