/* test_map.c - the hash map against a plain reference table: random puts,
 * gets, takes and pops on a small key space (so that probe runs collide,
 * wrap around and are shifted back by deletions), checked after each.
 * Every 7th key is longer than a slot holds (a routing id a client chose,
 * up to 255 bytes), so keys kept in a block of their own move and go too.
 * The same again for a map of our own ids (mdg_map_new_own_keys), with
 * keys like its session ids: the same first 8 bytes and the key's number
 * later, at lengths that end in a part of a word. */
#include "map.h"
#include "testutil.h"

#define KEYS 600
#define OPS 400000

/* Key k's bytes: k itself, then for every 7th key filler up to 64..253 bytes. */
static size_t key_of(uint32_t k, uint8_t buf[255])
{
    size_t len = k % 7 ? sizeof k : 64 + k % 190;
    memcpy(buf, &k, sizeof k);
    for (size_t i = sizeof k; i < len; i++)
        buf[i] = (uint8_t)(k * 31 + i);
    return len;
}

/* Key k of an own-keys map: 8 fixed bytes, then k; 16 bytes (a session
 * id), 48 (a session id and a node's key), 13 (a part word), or 4 (shorter
 * than a word: hashed as in any map). */
static size_t own_key_of(uint32_t k, uint8_t buf[255])
{
    static const size_t lens[] = {16, 48, 13, 16, 4};
    size_t len = lens[k % 5];
    memset(buf, 0xa5, 8);
    for (size_t i = 8; i < len; i++)
        buf[i] = (uint8_t)(k * 7 + i);
    memcpy(buf + (len > 8 ? 8 : 0), &k, sizeof k);
    return len;
}

/* Random operations on m, checked against a reference table. */
static void against_reference(mdg_map *m, size_t (*key_fn)(uint32_t, uint8_t *))
{
    static void *ref[KEYS]; /* key i -> value, NULL when absent */
    size_t live = 0;
    uint64_t rnd = 88172645463325252ull;
    memset(ref, 0, sizeof ref);
    CHECK(m != NULL);
    for (int op = 0; op < OPS && m && !t_failed; op++) { /* stops at the first difference */
        rnd ^= rnd << 13, rnd ^= rnd >> 7, rnd ^= rnd << 17; /* xorshift */
        uint32_t k = (uint32_t)(rnd % KEYS);
        void *v = (void *)(uintptr_t)(op + 1);
        uint8_t key[255];
        size_t klen = key_fn(k, key);
        switch ((rnd >> 32) % 4) {
        case 0:
        case 1:
            if (mdg_map_put(m, key, klen, v) != 0) {
                CHECK(!"put failed");
                break;
            }
            live += !ref[k];
            ref[k] = v;
            break;
        case 2: {
            void *got = mdg_map_take(m, key, klen);
            if (got != ref[k])
                CHECK(got == ref[k]);
            live -= !!ref[k];
            ref[k] = NULL;
            break;
        }
        default:
            if (op % 97 == 0) { /* pop takes any one entry */
                void *got = mdg_map_pop(m);
                bool found = false;
                for (int i = 0; i < KEYS && got; i++)
                    if (ref[i] == got) {
                        ref[i] = NULL;
                        found = true;
                        live--;
                        break;
                    }
                if (found != (got != NULL))
                    CHECK(found == (got != NULL));
            }
            break;
        }
        if (mdg_map_size(m) != live)
            CHECK(mdg_map_size(m) == live);
        if (op % 1000 == 0) /* every key is where the reference says */
            for (uint32_t i = 0; i < KEYS; i++) {
                size_t ilen = key_fn(i, key);
                if (mdg_map_get(m, key, ilen) != ref[i]) {
                    CHECK(mdg_map_get(m, key, ilen) == ref[i]);
                    break;
                }
            }
    }
    size_t n = 0;
    uint8_t key[255];
    for (uint32_t i = 0; m && i < KEYS; i++)
        n += mdg_map_get(m, key, key_fn(i, key)) == ref[i];
    CHECK(n == KEYS && mdg_map_size(m) == live);
    mdg_map_destroy(&m);
}

int main(void)
{
    against_reference(mdg_map_new(), key_of);
    against_reference(mdg_map_new_own_keys(), own_key_of);

    /* keys spread: 20,000 session-like keys that differ only after their
     * first word (and in their last, part word), and 20,000 counters */
    enum { SPREAD = 20000 };
    mdg_map *own = mdg_map_new_own_keys(), *ids = mdg_map_new();
    for (uint32_t i = 0; own && ids && i < SPREAD; i++) {
        uint8_t key[255];
        mdg_map_put(own, key, own_key_of(i * 5, key), own);     /* 16 bytes */
        mdg_map_put(own, key, own_key_of(i * 5 + 2, key), own); /* 13 bytes */
        mdg_map_put_u64(ids, i, ids);
    }
    size_t run_own = own ? mdg_map_longest_run(own) : 0, run_ids = ids ? mdg_map_longest_run(ids) : 0;
    printf("longest probe run: %zu of %zu own keys, %zu of %zu ids\n", run_own, mdg_map_size(own), run_ids,
           mdg_map_size(ids));
    CHECK(mdg_map_size(own) == 2 * SPREAD && mdg_map_size(ids) == SPREAD);
    CHECK(run_own < 100 && run_ids < 100); /* about 30 at half full; all in one run if a word were ignored */
    mdg_map_destroy(&own);
    mdg_map_destroy(&ids);

    /* emptied by popping, with puts between pops: every value comes out
     * once (pop looks on round the table from where it last found one) */
    enum { MANY = 20000 };
    static uint8_t seen[2 * MANY];
    mdg_map *m = mdg_map_new();
    for (uint64_t i = 0; m && i < MANY; i++)
        mdg_map_put_u64(m, i, (void *)(uintptr_t)(i + 1));
    size_t popped = 0, twice = 0;
    void *v;
    while (m && (v = mdg_map_pop(m)) != NULL) {
        size_t i = (size_t)(uintptr_t)v - 1;
        twice += seen[i]++ != 0;
        if (++popped % 1000 == 0 && popped <= MANY) /* a new one now and then */
            mdg_map_put_u64(m, MANY + popped / 1000, (void *)(uintptr_t)(MANY + popped / 1000 + 1));
    }
    printf("popped %zu entries, %zu twice\n", popped, twice);
    CHECK(popped == MANY + MANY / 1000 && twice == 0 && m && mdg_map_size(m) == 0);
    mdg_map_destroy(&m);
    return t_done("test_map");
}
