/* Heap allocation through a replaceable allocator, and the tape arena: a list of chunks that a reset
 * rewinds (coalescing them into one chunk of the peak size), so a steady-state step allocates nothing. */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void *default_alloc(size_t size, void *user) { (void)user; return malloc(size); }
static void *default_realloc(void *p, size_t old_size, size_t new_size, void *user)
{
    (void)user;
    (void)old_size;
    return realloc(p, new_size);
}
static void default_free(void *p, size_t size, void *user) { (void)user; (void)size; free(p); }

static nb_allocator g_alloc = {default_alloc, default_realloc, default_free, NULL};

void nb_set_allocator(const nb_allocator *a)
{
    if (!a || !a->alloc || !a->realloc || !a->free) {
        g_alloc = (nb_allocator){default_alloc, default_realloc, default_free, NULL};
        return;
    }
    g_alloc = *a;
}

/* The library never hands the allocator a size of 0: it asks for (and frees) 1 byte instead. */
static size_t at_least_1(size_t size) { return size ? size : 1; }

void *nb_alloc(size_t size) { return g_alloc.alloc(at_least_1(size), g_alloc.user); }

void *nb_calloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = nb_alloc(n * size);
    if (p) memset(p, 0, at_least_1(n * size));
    return p;
}

void *nb_realloc(void *p, size_t old_size, size_t new_size)
{
    if (!p) return nb_alloc(new_size);
    return g_alloc.realloc(p, at_least_1(old_size), at_least_1(new_size), g_alloc.user);
}

void nb_dealloc(void *p, size_t size)
{
    if (p) g_alloc.free(p, at_least_1(size), g_alloc.user);
}

char *nb_strdup(const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = nb_alloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

void *nb__malloc(size_t size) { return nb_alloc(size); }
void *nb__calloc(size_t size) { return nb_calloc(1, size); }
void *nb__realloc(void *p, size_t old_size, size_t new_size) { return nb_realloc(p, old_size, new_size); }
void nb__free(void *p, size_t size) { nb_dealloc(p, size); }

/* ---- arena ------------------------------------------------------------------------------------ */

#define NB_ALIGN 64
#define NB_CHUNK_MIN ((size_t)1 << 20)

struct nb_arena_chunk {
    nb_arena_chunk *next;
    size_t size; /* usable bytes after the header */
    size_t fill;
    size_t raw_size;
    void *raw;   /* what the allocator returned (the header lives in it) */
};

static size_t align_up(size_t n) { return (n + (NB_ALIGN - 1)) & ~(size_t)(NB_ALIGN - 1); }

static unsigned char *chunk_base(nb_arena_chunk *c)
{
    return (unsigned char *)c + align_up(sizeof(nb_arena_chunk));
}

static nb_arena_chunk *chunk_new(size_t size)
{
    size_t raw_size = size + align_up(sizeof(nb_arena_chunk)) + NB_ALIGN;
    void *raw = nb__malloc(raw_size);
    if (!raw) return NULL;
    uintptr_t p = ((uintptr_t)raw + (NB_ALIGN - 1)) & ~(uintptr_t)(NB_ALIGN - 1);
    nb_arena_chunk *c = (nb_arena_chunk *)p;
    c->next = NULL;
    c->size = size;
    c->fill = 0;
    c->raw = raw;
    c->raw_size = raw_size;
    return c;
}

void *nb__arena_alloc(nb_arena *a, size_t size)
{
    size = align_up(size ? size : 1);
    nb_arena_chunk *c = a->cur;
    while (c && c->fill + size > c->size) {
        /* move on to the next retained chunk, if one is free */
        if (!c->next) break;
        c = c->next;
        c->fill = 0;
        a->cur = c;
    }
    if (!c || c->fill + size > c->size) {
        size_t want = a->reserved > NB_CHUNK_MIN ? a->reserved : NB_CHUNK_MIN;
        if (want < size) want = size;
        nb_arena_chunk *n = chunk_new(want);
        if (!n) return NULL;
        if (c) {
            n->next = c->next;
            c->next = n;
        } else {
            a->head = n;
        }
        a->cur = n;
        a->reserved += n->size;
        c = n;
    }
    void *p = chunk_base(c) + c->fill;
    c->fill += size;
    a->used += size;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

void nb__arena_reset(nb_arena *a)
{
    if (a->head && a->head->next) {
        /* several chunks were needed: replace them by one of the peak size */
        size_t want = a->peak;
        nb__arena_free(a);
        a->peak = want;
        nb_arena_chunk *c = chunk_new(want);
        if (c) {
            a->head = a->cur = c;
            a->reserved = c->size;
        }
    }
    if (a->head) a->head->fill = 0;
    a->cur = a->head;
    a->used = 0;
}

void nb__arena_free(nb_arena *a)
{
    nb_arena_chunk *c = a->head;
    while (c) {
        nb_arena_chunk *next = c->next;
        nb__free(c->raw, c->raw_size);
        c = next;
    }
    a->head = a->cur = NULL;
    a->used = a->reserved = 0;
}
