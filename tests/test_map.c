/* test_map.c - the hash map against a plain reference table: random puts,
 * gets, takes and pops on a small key space (so that probe runs collide,
 * wrap around and are shifted back by deletions), checked after each. */
#include "map.h"
#include "testutil.h"

#define KEYS 600
#define OPS 400000

int main(void)
{
    mdg_map *m = mdg_map_new();
    static void *ref[KEYS]; /* key i -> value, NULL when absent */
    size_t live = 0;
    uint64_t rnd = 88172645463325252ull;
    CHECK(m != NULL);
    for (int op = 0; op < OPS && m && !t_failed; op++) { /* stops at the first difference */
        rnd ^= rnd << 13, rnd ^= rnd >> 7, rnd ^= rnd << 17; /* xorshift */
        uint32_t k = (uint32_t)(rnd % KEYS);
        void *v = (void *)(uintptr_t)(op + 1);
        switch ((rnd >> 32) % 4) {
        case 0:
        case 1:
            if (mdg_map_put(m, &k, sizeof k, v) != 0) {
                CHECK(!"put failed");
                break;
            }
            live += !ref[k];
            ref[k] = v;
            break;
        case 2: {
            void *got = mdg_map_take(m, &k, sizeof k);
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
            for (uint32_t i = 0; i < KEYS; i++)
                if (mdg_map_get(m, &i, sizeof i) != ref[i]) {
                    CHECK(mdg_map_get(m, &i, sizeof i) == ref[i]);
                    break;
                }
    }
    size_t n = 0;
    for (uint32_t i = 0; m && i < KEYS; i++)
        n += mdg_map_get(m, &i, sizeof i) == ref[i];
    CHECK(n == KEYS && mdg_map_size(m) == live);
    mdg_map_destroy(&m);
    return t_done("test_map");
}
