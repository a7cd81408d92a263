/* A checking allocator for nb_set_allocator, shared by the allocation tests: it counts calls and live
 * bytes, verifies that every free and realloc names the size the block was allocated with and a block
 * it gave out (a header in front of each block holds both), and can make the k-th allocation fail
 * (alloc or growing realloc), for fault injection. Blocks come from the C library's malloc. */
#ifndef NB_ALLOC_COUNTER_H
#define NB_ALLOC_COUNTER_H

#include <nabla.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AC_HEAD 64 /* keeps the allocator's blocks 64-byte aligned relative to malloc's */
#define AC_MAGIC 0x6e61626c61ac10c8ull

typedef struct alloc_counter {
    long allocs, reallocs, frees; /* calls */
    long attempts;                /* allocations attempted (alloc, and realloc to a new size) */
    long fail_at;                 /* make attempt number fail_at fail (1-based); 0: never */
    long failed;                  /* attempts made to fail */
    long bad_size, bad_block;     /* frees or reallocs naming the wrong size, or a foreign block */
    long live_blocks;
    size_t live_bytes, peak_bytes;
    int in_call;                  /* set while inside the allocator (the malloc interposer skips it) */
} alloc_counter;

static alloc_counter ac;

static void ac_reset(long fail_at)
{
    memset(&ac, 0, sizeof ac);
    ac.fail_at = fail_at;
}

static int ac_fail_now(void)
{
    ac.attempts++;
    if (ac.fail_at && ac.attempts == ac.fail_at) {
        ac.failed++;
        return 1;
    }
    return 0;
}

static void ac_track(size_t size)
{
    ac.live_blocks++;
    ac.live_bytes += size;
    if (ac.live_bytes > ac.peak_bytes) ac.peak_bytes = ac.live_bytes;
}

/* The header of user block p, or NULL (counted) if p is not one of ours or size is not its size. */
static unsigned char *ac_check(void *p, size_t size)
{
    unsigned char *h = (unsigned char *)p - AC_HEAD;
    uint64_t magic;
    size_t s;
    memcpy(&magic, h, sizeof magic);
    memcpy(&s, h + 8, sizeof s);
    if (magic != AC_MAGIC) {
        ac.bad_block++;
        return NULL;
    }
    if (s != size) {
        if (ac.bad_size++ == 0) fprintf(stderr, "  first size mismatch: block of %zu bytes freed as %zu\n", s, size);
    }
    return h;
}

static void *ac_alloc(size_t size, void *user)
{
    (void)user;
    ac.in_call++;
    ac.allocs++;
    unsigned char *h = NULL;
    if (size == 0) ac.bad_size++; /* the library never asks for 0 bytes */
    if (!ac_fail_now()) h = malloc(AC_HEAD + size);
    if (h) {
        uint64_t magic = AC_MAGIC;
        memcpy(h, &magic, sizeof magic);
        memcpy(h + 8, &size, sizeof size);
        ac_track(size);
    }
    ac.in_call--;
    return h ? h + AC_HEAD : NULL;
}

static void *ac_realloc(void *p, size_t old_size, size_t new_size, void *user)
{
    (void)user;
    ac.in_call++;
    ac.reallocs++;
    unsigned char *h = ac_check(p, old_size), *n = NULL;
    if (h && !(new_size > old_size && ac_fail_now())) n = realloc(h, AC_HEAD + new_size);
    if (n) {
        size_t s;
        memcpy(&s, n + 8, sizeof s);
        ac.live_bytes -= s;
        ac.live_blocks--;
        memcpy(n + 8, &new_size, sizeof new_size);
        ac_track(new_size);
    }
    ac.in_call--;
    return n ? n + AC_HEAD : NULL;
}

static void ac_free(void *p, size_t size, void *user)
{
    (void)user;
    ac.in_call++;
    ac.frees++;
    unsigned char *h = ac_check(p, size);
    if (h) {
        size_t s;
        memcpy(&s, h + 8, sizeof s);
        ac.live_bytes -= s;
        ac.live_blocks--;
        memset(h, 0, 16); /* a second free of the same block is caught as foreign */
        free(h);
    }
    ac.in_call--;
}

static void ac_install(void)
{
    nb_allocator a = {ac_alloc, ac_realloc, ac_free, NULL};
    nb_set_allocator(&a);
}

#endif
