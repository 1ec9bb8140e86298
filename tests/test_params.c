/* test_params.c - the params API: every setter and getter, replacing and
 * removing keys, type and absence errors, integer extremes, nested items,
 * the text form, and the CBOR round trip through the wire encoder. */
#include "testutil.h"

#include "params.h"
#include "wire.h"

#include <float.h>
#include <math.h>

/* Encode p with the wire encoder and decode it again. */
static mdg_params *round_trip(const mdg_params *p)
{
    zmq_msg_t m;
    mdg_params *out = NULL;
    if (mdg_params_encode(p, &m) != 0)
        return NULL;
    if (mdg_params_decode(zmq_msg_data(&m), zmq_msg_size(&m), &out) != 0)
        out = NULL;
    zmq_msg_close(&m);
    return out;
}

/* Text form of p compared with want; prints both on a mismatch. */
static bool text_is(const mdg_params *p, const char *want)
{
    char *t = mdg_params_to_text(p);
    bool ok = t && strcmp(t, want) == 0;
    if (!ok)
        fprintf(stderr, "  text: %s\n  want: %s\n", t ? t : "(null)", want);
    free(t);
    return ok;
}

static bool item_text_is(const cbor_item_t *it, const char *want)
{
    char *t = mdg_item_to_text(it);
    bool ok = t && strcmp(t, want) == 0;
    if (!ok)
        fprintf(stderr, "  text: %s\n  want: %s\n", t ? t : "(null)", want);
    free(t);
    return ok;
}

static void test_strings_and_bytes(void)
{
    mdg_params *p = mdg_params_new();
    const char *s = NULL;
    const uint8_t *d = NULL;
    size_t len = 99;

    CHECK(p != NULL);
    CHECK(mdg_params_count(p) == 0);
    CHECK(text_is(p, "{}"));

    CHECK_RC(mdg_params_set_str(p, "name", "value"), 0);
    CHECK_RC(mdg_params_get_str(p, "name", &s), 0);
    CHECK(s && strcmp(s, "value") == 0);
    /* the same string twice comes from the cache: same pointer */
    const char *again = NULL;
    CHECK_RC(mdg_params_get_str(p, "name", &again), 0);
    CHECK(again == s);

    /* empty string and a string with quotes / control characters */
    CHECK_RC(mdg_params_set_str(p, "empty", ""), 0);
    CHECK_RC(mdg_params_get_str(p, "empty", &s), 0);
    CHECK(s && s[0] == '\0');
    CHECK_RC(mdg_params_set_str(p, "q", "a\"b\\c\n"), 0);

    /* bytes, including zero-length bytes from a NULL pointer */
    const uint8_t raw[] = {0, 1, 2, 0xff};
    CHECK_RC(mdg_params_set_bytes(p, "raw", raw, sizeof raw), 0);
    CHECK_RC(mdg_params_get_bytes(p, "raw", &d, &len), 0);
    CHECK(len == 4 && d && memcmp(d, raw, 4) == 0);
    CHECK_RC(mdg_params_set_bytes(p, "none", NULL, 0), 0);
    len = 99;
    CHECK_RC(mdg_params_get_bytes(p, "none", &d, &len), 0);
    CHECK(len == 0);
    CHECK_RC(mdg_params_set_bytes(p, "bad", NULL, 3), MDG_EINVAL);
    CHECK(!mdg_params_has(p, "bad"));

    /* wrong type either way, and absent keys */
    CHECK_RC(mdg_params_get_bytes(p, "name", &d, &len), MDG_ETYPE);
    CHECK(strstr(mdg_last_error(), "name") != NULL);
    CHECK_RC(mdg_params_get_str(p, "raw", &s), MDG_ETYPE);
    CHECK_RC(mdg_params_get_str(p, "missing", &s), MDG_ENOTFOUND);
    CHECK(strstr(mdg_last_error(), "missing") != NULL);
    CHECK_RC(mdg_params_get_bytes(p, "missing", &d, &len), MDG_ENOTFOUND);

    CHECK(mdg_params_count(p) == 5);
    CHECK(text_is(p, "{\"name\": \"value\", \"empty\": \"\", \"q\": \"a\\\"b\\\\c\\u000a\", "
                     "\"raw\": \"b64:AAEC/w==\", \"none\": \"b64:\"}"));

    /* NULL arguments are refused, not crashes */
    CHECK_RC(mdg_params_set_str(p, "x", NULL), MDG_EINVAL);
    CHECK_RC(mdg_params_set_str(p, NULL, "x"), MDG_EINVAL);
    CHECK_RC(mdg_params_set_str(NULL, "x", "x"), MDG_EINVAL);
    CHECK_RC(mdg_params_get_str(NULL, "x", &s), MDG_ENOTFOUND);
    CHECK(!mdg_params_has(NULL, "x"));
    CHECK(mdg_params_count(NULL) == 0);

    mdg_params_destroy(&p);
    CHECK(p == NULL);
    mdg_params_destroy(&p); /* a pointer to NULL is fine */
    mdg_params_destroy(NULL);
}

static void test_numbers(void)
{
    mdg_params *p = mdg_params_new();
    int64_t i = 0;
    double d = 0;
    bool b = false;

    static const int64_t ints[] = {0, 1, -1, 23, 24, -24, -25, 255, 256, 65535, 65536, -65537,
                                   INT32_MAX, INT32_MIN, (int64_t)UINT32_MAX + 1, INT64_MAX,
                                   INT64_MIN, INT64_MIN + 1};
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
        CHECK_RC(mdg_params_set_int(p, "i", ints[k]), 0); /* replaces each time */
        i = 12345;
        CHECK_RC(mdg_params_get_int(p, "i", &i), 0);
        CHECK(i == ints[k]);
        mdg_params *rt = round_trip(p);
        CHECK(rt != NULL);
        i = 12345;
        CHECK_RC(mdg_params_get_int(rt, "i", &i), 0);
        CHECK(i == ints[k]);
        mdg_params_destroy(&rt);
    }
    CHECK(mdg_params_count(p) == 1);
    CHECK_RC(mdg_params_set_int(p, "min", INT64_MIN), 0);
    CHECK_RC(mdg_params_set_int(p, "max", INT64_MAX), 0);
    CHECK(text_is(p, "{\"i\": -9223372036854775807, \"min\": -9223372036854775808, "
                     "\"max\": 9223372036854775807}"));

    /* CBOR integers outside int64 exist on the wire: the getter refuses them */
    CHECK_RC(mdg_params_set_item(p, "huge", cbor_build_uint64(UINT64_MAX)), 0);
    CHECK_RC(mdg_params_get_int(p, "huge", &i), MDG_ETYPE);
    CHECK_RC(mdg_params_set_item(p, "tiny", cbor_build_negint64(UINT64_MAX)), 0);
    CHECK_RC(mdg_params_get_int(p, "tiny", &i), MDG_ETYPE);
    CHECK(item_text_is(mdg_params_get(p, "huge"), "18446744073709551615"));
    /* -1 - (2^64 - 1) = -2^64: the text must not wrap to "-0" */
    CHECK(item_text_is(mdg_params_get(p, "tiny"), "-18446744073709551616"));
    CHECK_RC(mdg_params_set_item(p, "m2", cbor_build_negint64((uint64_t)INT64_MAX)), 0);
    CHECK_RC(mdg_params_get_int(p, "m2", &i), 0);
    CHECK(i == INT64_MIN);

    /* doubles: ints are not floats and floats are not ints */
    static const double ds[] = {0.0, -0.0, 1.5, -2.25, 1e300, -1e-300, DBL_MAX, DBL_MIN, 2.0};
    for (size_t k = 0; k < sizeof ds / sizeof ds[0]; k++) {
        CHECK_RC(mdg_params_set_double(p, "d", ds[k]), 0);
        mdg_params *rt = round_trip(p);
        d = 42;
        CHECK_RC(mdg_params_get_double(rt, "d", &d), 0);
        CHECK(d == ds[k] && signbit(d) == signbit(ds[k]));
        mdg_params_destroy(&rt);
    }
    CHECK(item_text_is(mdg_params_get(p, "d"), "2.0"));
    CHECK_RC(mdg_params_set_double(p, "inf", INFINITY), 0);
    CHECK_RC(mdg_params_get_double(p, "inf", &d), 0);
    CHECK(isinf(d) && d > 0);
    CHECK_RC(mdg_params_set_double(p, "nan", NAN), 0);
    CHECK_RC(mdg_params_get_double(p, "nan", &d), 0);
    CHECK(isnan(d));
    CHECK_RC(mdg_params_get_double(p, "i", &d), MDG_ETYPE);
    CHECK_RC(mdg_params_get_int(p, "d", &i), MDG_ETYPE);
    /* narrower floats read as doubles */
    CHECK_RC(mdg_params_set_item(p, "f4", cbor_build_float4(0.5f)), 0);
    CHECK_RC(mdg_params_get_double(p, "f4", &d), 0);
    CHECK(d == 0.5);
    CHECK_RC(mdg_params_set_item(p, "f2", cbor_build_float2(-4.0f)), 0);
    CHECK_RC(mdg_params_get_double(p, "f2", &d), 0);
    CHECK(d == -4.0);

    /* booleans and null are not floats, and not each other */
    CHECK_RC(mdg_params_set_bool(p, "t", true), 0);
    CHECK_RC(mdg_params_set_bool(p, "f", false), 0);
    CHECK_RC(mdg_params_set_null(p, "n"), 0);
    CHECK_RC(mdg_params_get_bool(p, "t", &b), 0);
    CHECK(b == true);
    CHECK_RC(mdg_params_get_bool(p, "f", &b), 0);
    CHECK(b == false);
    CHECK_RC(mdg_params_get_bool(p, "n", &b), MDG_ETYPE);
    CHECK_RC(mdg_params_get_double(p, "t", &d), MDG_ETYPE);
    CHECK_RC(mdg_params_get_double(p, "n", &d), MDG_ETYPE);
    CHECK_RC(mdg_params_get_bool(p, "i", &b), MDG_ETYPE);
    /* a float sent where a bool is expected: ETYPE, not libcbor's assert */
    CHECK_RC(mdg_params_get_bool(p, "d", &b), MDG_ETYPE);
    CHECK_RC(mdg_params_get_bool(p, "f2", &b), MDG_ETYPE);
    CHECK_RC(mdg_params_get_bool(p, "nan", &b), MDG_ETYPE);
    CHECK_RC(mdg_params_get_int(p, "t", &i), MDG_ETYPE);
    CHECK_RC(mdg_params_get_bool(p, "absent", &b), MDG_ENOTFOUND);
    CHECK_RC(mdg_params_get_int(p, "absent", &i), MDG_ENOTFOUND);
    CHECK_RC(mdg_params_get_double(p, "absent", &d), MDG_ENOTFOUND);
    CHECK(mdg_params_has(p, "n"));
    CHECK(mdg_params_get(p, "n") != NULL);
    CHECK(mdg_params_get(p, "absent") == NULL);
    CHECK(item_text_is(mdg_params_get(p, "t"), "true"));
    CHECK(item_text_is(mdg_params_get(p, "f"), "false"));
    CHECK(item_text_is(mdg_params_get(p, "n"), "null"));
    CHECK(item_text_is(NULL, "null"));
    mdg_params_destroy(&p);
}

static void test_replace_and_remove(void)
{
    mdg_params *p = mdg_params_new();
    const char *s = NULL;
    int64_t i = 0;
    char key[16];

    /* grow well past the initial capacity (8), then check every key */
    for (int k = 0; k < 100; k++) {
        snprintf(key, sizeof key, "k%d", k);
        CHECK_RC(mdg_params_set_int(p, key, k), 0);
    }
    CHECK(mdg_params_count(p) == 100);
    int bad = 0;
    for (int k = 0; k < 100; k++) {
        snprintf(key, sizeof key, "k%d", k);
        if (mdg_params_get_int(p, key, &i) != 0 || i != k)
            bad++;
    }
    CHECK(bad == 0);

    /* replace with another type: the old string pointer must not be used
     * again, the new value is what a getter sees */
    CHECK_RC(mdg_params_set_str(p, "k5", "five"), 0);
    CHECK_RC(mdg_params_get_str(p, "k5", &s), 0);
    CHECK(s && strcmp(s, "five") == 0);
    CHECK_RC(mdg_params_set_str(p, "k5", "FIVE"), 0);
    CHECK_RC(mdg_params_get_str(p, "k5", &s), 0);
    CHECK(s && strcmp(s, "FIVE") == 0);
    CHECK_RC(mdg_params_get_int(p, "k5", &i), MDG_ETYPE);
    CHECK(mdg_params_count(p) == 100);

    /* remove: present once, absent after, others untouched */
    CHECK_RC(mdg_params_remove(p, "k7"), 0);
    CHECK_RC(mdg_params_remove(p, "k7"), MDG_ENOTFOUND);
    CHECK(!mdg_params_has(p, "k7"));
    CHECK(mdg_params_count(p) == 99);
    CHECK_RC(mdg_params_get_int(p, "k8", &i), 0);
    CHECK(i == 8);
    CHECK_RC(mdg_params_get_str(p, "k5", &s), 0);
    CHECK(s && strcmp(s, "FIVE") == 0);
    /* add after removing (the map was rebuilt without spare room) */
    CHECK_RC(mdg_params_set_int(p, "k7", 77), 0);
    CHECK_RC(mdg_params_get_int(p, "k7", &i), 0);
    CHECK(i == 77);
    CHECK(mdg_params_count(p) == 100);
    CHECK_RC(mdg_params_remove(NULL, "x"), MDG_ENOTFOUND);

    /* remove down to empty */
    for (int k = 0; k < 100; k++) {
        snprintf(key, sizeof key, "k%d", k);
        mdg_params_remove(p, key);
    }
    CHECK(mdg_params_count(p) == 0);
    CHECK(text_is(p, "{}"));
    mdg_params_destroy(&p);
}

static void test_nested(void)
{
    mdg_params *p = mdg_params_new();

    /* ["a", 1, -2, [true, null], {"k": b"\x01"}] */
    cbor_item_t *arr = cbor_new_definite_array(5);
    cbor_item_t *inner = cbor_new_definite_array(2);
    cbor_item_t *map = cbor_new_definite_map(1);
    cbor_array_push(inner, cbor_move(cbor_build_bool(true)));
    cbor_array_push(inner, cbor_move(cbor_new_null()));
    cbor_map_add(map, (struct cbor_pair){.key = cbor_move(cbor_build_string("k")),
                                         .value = cbor_move(cbor_build_bytestring((cbor_data) "\x01", 1))});
    cbor_array_push(arr, cbor_move(cbor_build_string("a")));
    cbor_array_push(arr, cbor_move(cbor_build_uint8(1)));
    cbor_array_push(arr, cbor_move(cbor_build_negint8(1)));
    cbor_array_push(arr, cbor_move(inner));
    cbor_array_push(arr, cbor_move(map));
    CHECK_RC(mdg_params_set_item(p, "list", arr), 0); /* taken */

    /* a tagged item (tag 1 = epoch time) prints as its content */
    CHECK_RC(mdg_params_set_item(p, "when", cbor_build_tag(1, cbor_move(cbor_build_uint32(1700000000)))), 0);
    CHECK_RC(mdg_params_set_item(p, "empty", cbor_new_definite_map(0)), 0);

    const char *want = "{\"list\": [\"a\", 1, -2, [true, null], {\"k\": \"b64:AQ==\"}], "
                       "\"when\": 1700000000, \"empty\": {}}";
    CHECK(text_is(p, want));

    /* a failed cbor_build_* (NULL) is ENOMEM; a NULL key frees the item */
    CHECK_RC(mdg_params_set_item(p, "x", NULL), MDG_ENOMEM);
    CHECK_RC(mdg_params_set_item(p, NULL, cbor_build_uint8(1)), MDG_EINVAL);
    CHECK_RC(mdg_params_set_item(NULL, "x", cbor_build_uint8(1)), MDG_EINVAL);
    CHECK(!mdg_params_has(p, "x"));

    /* getters of the scalar kinds refuse containers */
    const char *s;
    int64_t i;
    CHECK_RC(mdg_params_get_str(p, "list", &s), MDG_ETYPE);
    CHECK_RC(mdg_params_get_int(p, "empty", &i), MDG_ETYPE);
    CHECK(cbor_isa_array(mdg_params_get(p, "list")));

    /* the wire round trip keeps all of it */
    mdg_params *rt = round_trip(p);
    CHECK(rt != NULL);
    if (rt)
        CHECK(text_is(rt, want));
    CHECK(mdg_params_count(rt) == 3);

    /* a decoded map accepts new keys (it may have no spare room) */
    CHECK_RC(mdg_params_set_str(rt, "added", "yes"), 0);
    CHECK_RC(mdg_params_get_str(rt, "added", &s), 0);
    CHECK(s && strcmp(s, "yes") == 0);
    CHECK_RC(mdg_params_remove(rt, "list"), 0);
    CHECK(text_is(rt, "{\"when\": 1700000000, \"empty\": {}, \"added\": \"yes\"}"));
    mdg_params_destroy(&rt);

    /* an empty or NULL params encodes as the empty map (one byte) */
    zmq_msg_t m;
    CHECK_RC(mdg_params_encode(NULL, &m), 0);
    CHECK(zmq_msg_size(&m) == 1 && ((uint8_t *)zmq_msg_data(&m))[0] == 0xa0);
    zmq_msg_close(&m);
    mdg_params *e = mdg_params_new();
    rt = round_trip(e);
    CHECK(rt && mdg_params_count(rt) == 0);
    mdg_params_destroy(&rt);
    mdg_params_destroy(&e);
    mdg_params_destroy(&p);
}

/* Decode hand-written CBOR params. */
static int decode_hex(const uint8_t *buf, size_t len, mdg_params **out)
{
    *out = NULL;
    return mdg_params_decode(buf, len, out);
}

static void test_decode(void)
{
    mdg_params *p = NULL;
    const char *s;
    int64_t i;

    /* {"a": 1, "b": "xy"} encoded by hand */
    static const uint8_t ok[] = {0xa2, 0x61, 'a', 0x01, 0x61, 'b', 0x62, 'x', 'y'};
    CHECK_RC(decode_hex(ok, sizeof ok, &p), 0);
    CHECK_RC(mdg_params_get_int(p, "a", &i), 0);
    CHECK(i == 1);
    CHECK_RC(mdg_params_get_str(p, "b", &s), 0);
    CHECK(s && strcmp(s, "xy") == 0);
    mdg_params_destroy(&p);

    /* an indefinite-length map of definite items is fine */
    static const uint8_t indef[] = {0xbf, 0x61, 'a', 0x20, 0xff};
    CHECK_RC(decode_hex(indef, sizeof indef, &p), 0);
    CHECK_RC(mdg_params_get_int(p, "a", &i), 0);
    CHECK(i == -1);
    CHECK_RC(mdg_params_set_int(p, "b", 2), 0); /* adding to a decoded indefinite map */
    mdg_params *rt = round_trip(p);
    CHECK(rt && text_is(rt, "{\"a\": -1, \"b\": 2}"));
    mdg_params_destroy(&rt);
    mdg_params_destroy(&p);

    /* a key with a NUL inside can be decoded but never matches a C key */
    static const uint8_t nulkey[] = {0xa1, 0x63, 'a', 0, 'b', 0x01};
    CHECK_RC(decode_hex(nulkey, sizeof nulkey, &p), 0);
    CHECK(!mdg_params_has(p, "a"));
    CHECK(text_is(p, "{\"a\\u0000b\": 1}"));
    mdg_params_destroy(&p);

    /* duplicate keys are refused: a forged second "user" could win in a
     * receiver that keeps the last value */
    static const uint8_t dup[] = {0xa2, 0x64, 'u', 's', 'e', 'r', 0x01, 0x64, 'u', 's', 'e', 'r', 0x02};
    CHECK_RC(decode_hex(dup, sizeof dup, &p), MDG_EPROTO);
    CHECK(p == NULL);
    CHECK(strstr(mdg_last_error(), "duplicate") != NULL);
}

/* Params are kept encoded: what is decoded goes out byte for byte, a
 * replaced value keeps its key's place, and what a getter handed out
 * stays valid after later changes. */
static void test_encoded_form(void)
{
    mdg_params *p = NULL;
    zmq_msg_t m;

    static const uint8_t ab[] = {0xa2, 0x61, 'a', 0x01, 0x61, 'b', 0x62, 'x', 'y'};
    CHECK_RC(decode_hex(ab, sizeof ab, &p), 0);
    CHECK_RC(mdg_params_encode(p, &m), 0);
    CHECK(zmq_msg_size(&m) == sizeof ab && memcmp(zmq_msg_data(&m), ab, sizeof ab) == 0);
    zmq_msg_close(&m);
    mdg_params_destroy(&p);

    /* an indefinite map goes out as the same pairs under a definite head */
    static const uint8_t indef[] = {0xbf, 0x61, 'a', 0x01, 0x61, 'b', 0x62, 'x', 'y', 0xff};
    CHECK_RC(decode_hex(indef, sizeof indef, &p), 0);
    CHECK_RC(mdg_params_encode(p, &m), 0);
    CHECK(zmq_msg_size(&m) == sizeof ab && memcmp(zmq_msg_data(&m), ab, sizeof ab) == 0);
    zmq_msg_close(&m);

    /* replacing a value, longer (past the storage inside the params) and
     * shorter again: the keys keep their order */
    const char *before = NULL, *after = NULL;
    cbor_item_t *old_item = mdg_params_get(p, "b");
    CHECK_RC(mdg_params_get_str(p, "b", &before), 0);
    CHECK_RC(mdg_params_set_bool(p, "c", true), 0);
    char longer[300];
    memset(longer, 'z', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    CHECK_RC(mdg_params_set_str(p, "b", longer), 0);
    CHECK_RC(mdg_params_get_str(p, "b", &after), 0);
    CHECK(after && strcmp(after, longer) == 0);
    CHECK(before && strcmp(before, "xy") == 0); /* still readable */
    CHECK(old_item && cbor_isa_string(old_item) && cbor_string_length(old_item) == 2);
    CHECK_RC(mdg_params_set_int(p, "b", -300), 0);
    CHECK(text_is(p, "{\"a\": 1, \"b\": -300, \"c\": true}"));
    cbor_item_t *now = mdg_params_get(p, "b");
    CHECK(now && cbor_isa_negint(now) && cbor_get_int(now) == 299);
    CHECK_RC(mdg_params_remove(p, "a"), 0);
    CHECK(text_is(p, "{\"b\": -300, \"c\": true}"));
    mdg_params *rt = round_trip(p);
    CHECK(rt && text_is(rt, "{\"b\": -300, \"c\": true}"));
    mdg_params_destroy(&rt);
    mdg_params_destroy(&p);

    /* bytes handed out stay as they were when p changes after, whether p
     * keeps its pairs inside (small) or outside (large) */
    for (int big = 0; big < 2; big++) {
        p = mdg_params_new();
        uint8_t blob[400];
        for (size_t k = 0; k < sizeof blob; k++)
            blob[k] = (uint8_t)k;
        size_t blen = big ? sizeof blob : 16, glen = 0;
        const uint8_t *got = NULL;
        CHECK_RC(mdg_params_set_bytes(p, "blob", blob, blen), 0);
        CHECK_RC(mdg_params_get_bytes(p, "blob", &got, &glen), 0);
        CHECK_RC(mdg_params_set_bytes(p, "blob", "other", 5), 0);
        CHECK_RC(mdg_params_remove(p, "blob"), 0);
        CHECK_RC(mdg_params_set_str(p, "more", longer), 0);
        CHECK(got && glen == blen && memcmp(got, blob, blen) == 0);
        mdg_params_destroy(&p);
    }

    /* text strings must be UTF-8 (libcbor's loader refuses anything else,
     * so a broker must not relay it), at any depth; maps must be whole */
    static const uint8_t utf8_ok[] = {0xa1, 0x61, 'k', 0x84, 0x62, 0xc3, 0xa9, 0x63, 0xe2, 0x82, 0xac,
                                      0x64, 0xf0, 0x9f, 0x98, 0x80, 0x60};
    CHECK_RC(decode_hex(utf8_ok, sizeof utf8_ok, &p), 0);
    mdg_params_destroy(&p);
    static const uint8_t bad_key[] = {0xa1, 0x61, 0xff, 0x01};
    static const uint8_t overlong[] = {0xa1, 0x61, 'k', 0x81, 0x62, 0xc0, 0x80};
    static const uint8_t surrogate[] = {0xa1, 0x61, 'k', 0x63, 0xed, 0xa0, 0x80};
    static const uint8_t cut[] = {0xa1, 0x61, 'k', 0x62, 0xe2, 0x82};
    static const uint8_t beyond[] = {0xa1, 0x61, 'k', 0x64, 0xf4, 0x90, 0x80, 0x80};
    const struct { const uint8_t *b; size_t n; } bad[] = {
        {bad_key, sizeof bad_key}, {overlong, sizeof overlong}, {surrogate, sizeof surrogate},
        {cut, sizeof cut}, {beyond, sizeof beyond}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        CHECK_RC(decode_hex(bad[k].b, bad[k].n, &p), MDG_EPROTO);
        CHECK(p == NULL && strstr(mdg_last_error(), "not valid UTF-8"));
    }
    static const uint8_t odd_nested[] = {0xa1, 0x61, 'k', 0x81, 0xbf, 0x61, 'a', 0xff};
    CHECK_RC(decode_hex(odd_nested, sizeof odd_nested, &p), MDG_EPROTO);
    CHECK(p == NULL && strstr(mdg_last_error(), "a key and no value"));
}

int main(void)
{
    test_strings_and_bytes();
    test_numbers();
    test_replace_and_remove();
    test_nested();
    test_decode();
    test_encoded_form();
    return t_done("test_params");
}
