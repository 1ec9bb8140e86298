/* pool.h - a free list of equal-sized blocks.
 *
 * The records made per message (a message kept until it is acknowledged,
 * a call waiting for its reply, a call forwarded to a node) come and go in
 * bursts of hundreds: a window of calls. glibc's per-thread cache holds 7
 * blocks of a size, so every burst took the allocator's slow path, and a
 * block made on an application thread and freed on the loop thread took
 * its arena's lock as well. A pool keeps up to `max` freed blocks for the
 * next burst. Not thread-safe: a pool belongs to one thread or is used
 * under its owner's lock. Under AddressSanitizer a block in the pool is
 * poisoned, so a use after it was given back is still caught. */
#ifndef MDG_POOL_H
#define MDG_POOL_H

#include <stddef.h>

typedef struct mdg_pool {
    void *head; /* the freed blocks, each holding the next's address */
    size_t size, zero, n, max;
} mdg_pool;

/* Blocks of size bytes, of which the first zero are zeroed when given
 * out (the rest is written by the owner before it is read); at most max
 * kept when given back. */
void mdg_pool_init(mdg_pool *p, size_t size, size_t zero, size_t max);
/* A block of the pool's size, its first `zero` bytes zeroed, or NULL
 * when out of memory. */
void *mdg_pool_alloc(mdg_pool *p);
/* Give a block of this pool back (NULL is ignored). */
void mdg_pool_free(mdg_pool *p, void *blk);
/* Free the blocks it keeps; the pool can be used again. */
void mdg_pool_clear(mdg_pool *p);

#endif
