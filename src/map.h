/* map.h - a small hash map from byte-string keys to pointers.
 *
 * Used for the broker's peers (by routing id) and the connection's pending
 * replies (by correlation id). Keys are hashed with SipHash under a random
 * key so that a peer cannot choose colliding routing ids (ids of our own
 * with a cheaper keyed mix, see map.c). Not thread-safe:
 * each map belongs to one thread or is guarded by its owner's lock. */
#ifndef MDG_MAP_H
#define MDG_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct mdg_map mdg_map;

mdg_map *mdg_map_new(void);
/* A map whose keys all start with at least 8 random bytes the library made
 * itself (session ids): hashed with a keyed mix instead of SipHash, which
 * is safe only because no peer chooses those bytes. A shorter key is
 * hashed as in any map. */
mdg_map *mdg_map_new_own_keys(void);
/* Frees the map only; values are the owner's. */
void mdg_map_destroy(mdg_map **m);
/* 0, or MDG_ENOMEM. An existing key gets the new value. */
int mdg_map_put(mdg_map *m, const void *key, size_t klen, void *value);
void *mdg_map_get(const mdg_map *m, const void *key, size_t klen);
/* Removes and returns the value, or NULL. */
void *mdg_map_take(mdg_map *m, const void *key, size_t klen);
size_t mdg_map_size(const mdg_map *m);
/* Calls fn for each value; fn must not change the map. */
void mdg_map_each(const mdg_map *m, void (*fn)(void *value, void *arg), void *arg);
/* Removes and returns any one value, or NULL when empty (for draining). */
void *mdg_map_pop(mdg_map *m);
/* The most slots in a row that are taken: what a lookup may have to probe
 * (for tests of how well keys spread). */
size_t mdg_map_longest_run(const mdg_map *m);

/* A growable array of pointers: values collected from a map before the
 * map is changed (it cannot change while mdg_map_each walks it). */
typedef struct mdg_ptrs {
    void **v;
    size_t n, cap;
} mdg_ptrs;

/* 0, or MDG_ENOMEM (the array is unchanged). */
int mdg_ptrs_push(mdg_ptrs *a, void *p);
void mdg_ptrs_free(mdg_ptrs *a);

/* A bounded FIFO of uint64 ids, oldest first: the order in which a table
 * bounded by a limit forgets its entries. */
typedef struct mdg_ring {
    uint64_t *v;
    size_t cap, alloc, head, n; /* storage grows to cap as ids come */
} mdg_ring;
/* Storage is allocated as ids are pushed. */
void mdg_ring_init(mdg_ring *r, size_t cap);
void mdg_ring_free(mdg_ring *r);
/* Append id; when the ring was full, its oldest is pushed out and
 * returned, else 0 (ids are never 0). */
uint64_t mdg_ring_push(mdg_ring *r, uint64_t id);

/* uint64 keys, stored as 8 bytes. */
static inline void *mdg_map_get_u64(const mdg_map *m, uint64_t k) { return mdg_map_get(m, &k, sizeof k); }
static inline int mdg_map_put_u64(mdg_map *m, uint64_t k, void *v) { return mdg_map_put(m, &k, sizeof k, v); }
static inline void *mdg_map_take_u64(mdg_map *m, uint64_t k) { return mdg_map_take(m, &k, sizeof k); }

#endif
