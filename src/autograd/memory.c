/* Heap allocation through a replaceable allocator, and the tape arena: a list of chunks that a reset
 * rewinds (coalescing them into one chunk of the peak size), so a steady-state step allocates nothing. */
#include "internal.h"

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

void *nb__malloc(size_t size) { return g_alloc.alloc(size ? size : 1, g_alloc.user); }

void *nb__calloc(size_t size)
{
    void *p = nb__malloc(size);
    if (p) memset(p, 0, size);
    return p;
}

void *nb__realloc(void *p, size_t old_size, size_t new_size)
{
    if (!p) return nb__malloc(new_size);
    return g_alloc.realloc(p, old_size, new_size ? new_size : 1, g_alloc.user);
}

void nb__free(void *p, size_t size)
{
    if (p) g_alloc.free(p, size, g_alloc.user);
}

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
