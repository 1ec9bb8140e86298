/* map.c - open-addressing hash map with linear probing. Deletion shifts
 * the rest of a probe run back into the hole (no tombstones), so a map
 * that sees many puts and takes, as the pending-call and forward maps
 * do, never needs rehashing to stay fast. Keys up to MAP_KEY_INLINE bytes
 * (every key the library makes: ids, session ids, public keys, a session
 * and a node's key together, libzmq's own routing ids) live in the slot,
 * so a probe touches one small slot; longer ones (a routing id a client
 * chose) get a block of their own. */
#include "map.h"

#include "internal.h"

#include <sodium.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MAP_KEY_MAX 255   /* routing ids are at most 255 bytes in ZMTP */
#define MAP_KEY_INLINE 48 /* a session id and a public key */

typedef struct slot {
    uint64_t hash; /* 0 = empty, else a live entry */
    void *value;
    uint8_t klen;
    union {
        uint8_t bytes[MAP_KEY_INLINE]; /* klen <= MAP_KEY_INLINE */
        uint8_t *block;                /* longer: its own allocation */
    } key;
} slot;

static const uint8_t *slot_key(const slot *s)
{
    return s->klen <= MAP_KEY_INLINE ? s->key.bytes : s->key.block;
}

struct mdg_map {
    slot *slots;
    size_t cap;   /* power of two */
    size_t used;  /* live entries */
    size_t pop_at; /* where mdg_map_pop found one last (it looks on from there) */
    uint8_t sipkey[crypto_shorthash_KEYBYTES];
    uint64_t mixkey; /* secret per map, like sipkey, for 8-byte keys */
    bool own_keys;   /* every key starts with 8 or more random bytes of ours */
};

static uint64_t mix64(uint64_t h)
{
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL; /* the splitmix64 finaliser */
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

/* Keys of 8 bytes are the library's own counters (call and forward ids),
 * and the keys of a map made by mdg_map_new_own_keys start with a random
 * id of ours (a session id): never chosen by a peer, so each 8-byte word,
 * xored into the map's secret, through the splitmix64 finaliser, spreads
 * them for a fraction of SipHash's cost, which the hot path paid several
 * times on every message.
 * Every other key (public keys, routing ids) may come from the network and
 * gets SipHash with the map's secret key. */
static uint64_t hash_key(const mdg_map *m, const void *key, size_t klen)
{
    uint64_t h, w;
    if (klen == sizeof h || (m->own_keys && klen >= sizeof h)) {
        const uint8_t *k = key;
        size_t i = 0;
        h = m->mixkey;
        for (; i + sizeof w <= klen; i += sizeof w) {
            memcpy(&w, k + i, sizeof w);
            h = mix64(h ^ w);
        }
        if (i < klen) { /* the last few bytes, and the length */
            w = (uint64_t)klen << 56;
            memcpy(&w, k + i, klen - i);
            h = mix64(h ^ w);
        }
    } else {
        crypto_shorthash((unsigned char *)&h, key, klen, m->sipkey);
    }
    return h ? h : 1; /* 0 marks an empty slot */
}

mdg_map *mdg_map_new(void)
{
    mdg_map *m = calloc(1, sizeof *m);
    if (!m || sodium_init() < 0)
        goto fail;
    m->cap = 16;
    m->slots = calloc(m->cap, sizeof(slot));
    if (!m->slots)
        goto fail;
    randombytes_buf(m->sipkey, sizeof m->sipkey);
    randombytes_buf(&m->mixkey, sizeof m->mixkey);
    return m;
fail:
    free(m);
    return NULL;
}

size_t mdg_map_longest_run(const mdg_map *m)
{
    size_t longest = 0, run = 0;
    for (size_t i = 0; i < 2 * m->cap; i++) { /* twice round: a run may wrap */
        run = m->slots[i & (m->cap - 1)].hash ? run + 1 : 0;
        if (run > longest)
            longest = run;
        if (run == m->cap)
            break;
    }
    return longest;
}

mdg_map *mdg_map_new_own_keys(void)
{
    mdg_map *m = mdg_map_new();
    if (m)
        m->own_keys = true;
    return m;
}

void mdg_map_destroy(mdg_map **pm)
{
    if (!pm || !*pm)
        return;
    for (size_t i = 0; i < (*pm)->cap; i++)
        if ((*pm)->slots[i].hash && (*pm)->slots[i].klen > MAP_KEY_INLINE)
            free((*pm)->slots[i].key.block);
    free((*pm)->slots);
    free(*pm);
    *pm = NULL;
}

static slot *find(const mdg_map *m, const void *key, size_t klen, uint64_t h)
{
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        slot *s = &m->slots[i];
        if (s->hash == 0)
            return NULL;
        if (s->hash == h && s->klen == klen && memcmp(slot_key(s), key, klen) == 0)
            return s;
    }
}

static int grow(mdg_map *m)
{
    size_t ncap = m->cap * 2;
    slot *old = m->slots, *ns = calloc(ncap, sizeof(slot));
    if (!ns)
        return MDG_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        if (!old[i].hash)
            continue;
        size_t j = old[i].hash & (ncap - 1);
        while (ns[j].hash)
            j = (j + 1) & (ncap - 1);
        ns[j] = old[i];
    }
    free(old);
    m->slots = ns;
    m->cap = ncap;
    return 0;
}

int mdg_map_put(mdg_map *m, const void *key, size_t klen, void *value)
{
    if (klen > MAP_KEY_MAX)
        return MDG_EINVAL;
    uint64_t h = hash_key(m, key, klen);
    slot *s = find(m, key, klen, h);
    if (s) {
        s->value = value;
        return 0;
    }
    uint8_t *block = NULL;
    if (klen > MAP_KEY_INLINE && !(block = malloc(klen)))
        return MDG_ENOMEM;
    /* at most half full: linear probing's cost for a key that is not there
     * (every put) grows as 1/(1 - load)^2, 8.5 slots at 3/4 full against 2.5
     * at 1/2, and a slot is more than a cache line */
    if ((m->used + 1) * 2 > m->cap && grow(m) != 0) {
        free(block);
        return MDG_ENOMEM;
    }
    size_t mask = m->cap - 1, i = h & mask;
    while (m->slots[i].hash)
        i = (i + 1) & mask;
    s = &m->slots[i];
    s->hash = h;
    s->value = value;
    s->klen = (uint8_t)klen;
    if (block)
        s->key.block = block;
    memcpy(block ? block : s->key.bytes, key, klen);
    m->used++;
    return 0;
}

void *mdg_map_get(const mdg_map *m, const void *key, size_t klen)
{
    if (klen > MAP_KEY_MAX)
        return NULL;
    slot *s = find(m, key, klen, hash_key(m, key, klen));
    return s ? s->value : NULL;
}

/* Empty slot s and return its value. Later entries of the probe run that
 * could no longer be found across the hole (their home is not between the
 * hole and them) move back into it, and so on down the run. */
static void *erase(mdg_map *m, slot *s)
{
    void *v = s->value;
    if (s->klen > MAP_KEY_INLINE)
        free(s->key.block);
    size_t mask = m->cap - 1, hole = (size_t)(s - m->slots), j = hole;
    for (;;) {
        j = (j + 1) & mask;
        slot *t = &m->slots[j];
        if (!t->hash)
            break;
        size_t home = t->hash & mask;
        bool reachable = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (reachable)
            continue;
        m->slots[hole] = *t;
        hole = j;
    }
    m->slots[hole].hash = 0;
    m->slots[hole].value = NULL;
    m->used--;
    return v;
}

void *mdg_map_take(mdg_map *m, const void *key, size_t klen)
{
    if (klen > MAP_KEY_MAX)
        return NULL;
    slot *s = find(m, key, klen, hash_key(m, key, klen));
    return s ? erase(m, s) : NULL;
}

size_t mdg_map_size(const mdg_map *m)
{
    return m->used;
}

void mdg_map_each(const mdg_map *m, void (*fn)(void *value, void *arg), void *arg)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].hash)
            fn(m->slots[i].value, arg);
}

/* Any one entry. The scan goes on from where the last one ended, round
 * the table, so that emptying a map by popping is linear: from slot 0
 * each time it was quadratic (a broker with 10,000 sessions stopping, a
 * connection failing 10,000 pending calls). */
void *mdg_map_pop(mdg_map *m)
{
    size_t mask = m->cap - 1;
    for (size_t k = 0; k < m->cap; k++) {
        size_t i = (m->pop_at + k) & mask;
        if (m->slots[i].hash) {
            m->pop_at = i; /* erase may shift a later entry back into i */
            return erase(m, &m->slots[i]);
        }
    }
    return NULL;
}

int mdg_ptrs_push(mdg_ptrs *a, void *p)
{
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 16;
        void **nv = realloc(a->v, nc * sizeof *nv);
        if (!nv)
            return MDG_ENOMEM;
        a->v = nv;
        a->cap = nc;
    }
    a->v[a->n++] = p;
    return 0;
}

void mdg_ptrs_free(mdg_ptrs *a)
{
    free(a->v);
    *a = (mdg_ptrs){0};
}

void mdg_ring_init(mdg_ring *r, size_t cap)
{
    r->v = NULL; /* grown as ids come: most rings never fill */
    r->head = r->n = r->alloc = 0;
    r->cap = cap ? cap : 1;
}

void mdg_ring_free(mdg_ring *r)
{
    free(r->v);
    r->v = NULL;
    r->cap = r->n = r->alloc = 0;
}

/* Double the storage (up to cap), laying the ids out oldest first. */
static int ring_grow(mdg_ring *r)
{
    size_t alloc = r->alloc ? r->alloc * 2 : 16;
    if (alloc > r->cap)
        alloc = r->cap;
    uint64_t *v = malloc(alloc * sizeof *v);
    if (!v)
        return MDG_ENOMEM;
    for (size_t i = 0; i < r->n; i++)
        v[i] = r->v[(r->head + i) % r->alloc];
    free(r->v);
    r->v = v;
    r->alloc = alloc;
    r->head = 0;
    return 0;
}

uint64_t mdg_ring_push(mdg_ring *r, uint64_t id)
{
    uint64_t out = 0;
    if (r->n == r->alloc && (r->alloc == r->cap || ring_grow(r) != 0)) {
        if (!r->alloc)
            return 0; /* out of memory with nothing stored: not remembered */
        /* full (at cap, or out of memory short of it): the oldest goes */
        out = r->v[r->head];
        r->head = (r->head + 1) % r->alloc;
        r->n--;
    }
    r->v[(r->head + r->n) % r->alloc] = id;
    r->n++;
    return out;
}
