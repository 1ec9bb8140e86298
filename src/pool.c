/* pool.c - a free list of equal-sized blocks (pool.h). */
#include "pool.h"

#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define POOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_ASAN 1
#endif
#endif
#ifdef POOL_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(b, n) ASAN_POISON_MEMORY_REGION(b, n)
#define UNPOISON(b, n) ASAN_UNPOISON_MEMORY_REGION(b, n)
#else
#define POISON(b, n) ((void)(b), (void)(n))
#define UNPOISON(b, n) ((void)(b), (void)(n))
#endif

void mdg_pool_init(mdg_pool *p, size_t size, size_t zero, size_t max)
{
    p->head = NULL;
    p->size = size < sizeof(void *) ? sizeof(void *) : size;
    p->zero = zero < p->size ? zero : p->size;
    p->n = 0;
    p->max = max;
}

void *mdg_pool_alloc(mdg_pool *p)
{
    void *b = p->head;
    if (!b) {
        if ((b = malloc(p->size)))
            memset(b, 0, p->zero);
        return b;
    }
    UNPOISON(b, p->size);
    memcpy(&p->head, b, sizeof(void *));
    p->n--;
    memset(b, 0, p->zero);
    return b;
}

void mdg_pool_free(mdg_pool *p, void *blk)
{
    if (!blk)
        return;
    if (p->n >= p->max) {
        free(blk);
        return;
    }
    memcpy(blk, &p->head, sizeof(void *));
    POISON(blk, p->size);
    p->head = blk;
    p->n++;
}

void mdg_pool_clear(mdg_pool *p)
{
    while (p->head) {
        void *b = p->head;
        UNPOISON(b, p->size);
        memcpy(&p->head, b, sizeof(void *));
        free(b);
    }
    p->n = 0;
}
