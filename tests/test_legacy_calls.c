/* test_legacy_calls.c - the table both ends of a Messidge 1.x link keep of
 * the uuids of calls they received, and the uuids of their own calls:
 * numbering, the final reply, the oldest forgotten past the limit, and
 * uuids that are not ours (other prefixes, non-digits, overflow). The
 * 1.x links themselves are tested with real 1.x peers in test_legacy_*. */
#include "legacy.h"
#include "testutil.h"

int main(void)
{
    mdg_legacy_calls t;
    bool evicted;
    CHECK_RC(mdg_legacy_calls_init(&t, 3), 0);
    uint64_t a = mdg_legacy_calls_add(&t, (const uint8_t *)"uuid-a", 6, &evicted);
    uint64_t b = mdg_legacy_calls_add(&t, (const uint8_t *)"uuid-b", 6, &evicted);
    CHECK(a == 1 && b == 2 && !evicted);
    mdg_legacy_call *u = mdg_legacy_calls_get(&t, b);
    CHECK(u && u->len == 6 && memcmp(u->uuid, "uuid-b", 6) == 0 && !u->long_term);
    mdg_legacy_calls_done(&t, b); /* its final reply went */
    CHECK(!mdg_legacy_calls_get(&t, b) && !mdg_legacy_calls_get(&t, 0));
    mdg_legacy_calls_add(&t, (const uint8_t *)"uuid-c", 6, &evicted);
    CHECK(!evicted);
    uint64_t d = mdg_legacy_calls_add(&t, (const uint8_t *)"uuid-d", 6, &evicted);
    CHECK(d == 4 && evicted && !mdg_legacy_calls_get(&t, a)); /* past 3 the oldest goes */
    uint8_t big[MDG_LEGACY_MAX_UUID + 1] = {0};
    CHECK(mdg_legacy_calls_add(&t, big, sizeof big, &evicted) == 0); /* too long to keep */
    mdg_legacy_calls_free(&t);

    char buf[40];
    size_t n = mdg_legacy_call_uuid(buf, sizeof buf, "m", 18446744073709551615ull);
    CHECK(n == 21 && strcmp(buf, "m18446744073709551615") == 0);
    CHECK(mdg_legacy_corr_of("m", (const uint8_t *)buf, n) == 18446744073709551615ull);
    CHECK(mdg_legacy_corr_of("m", (const uint8_t *)"m18446744073709551616", 21) == 0); /* overflow */
    CHECK(mdg_legacy_corr_of("m", (const uint8_t *)"m12x", 4) == 0);
    CHECK(mdg_legacy_corr_of("m", (const uint8_t *)"m", 1) == 0);
    CHECK(mdg_legacy_corr_of("abc-", (const uint8_t *)"abd-7", 5) == 0);
    CHECK(mdg_legacy_corr_of("abc-", (const uint8_t *)"abc-7", 5) == 7);
    return t_done("test_legacy_calls");
}
