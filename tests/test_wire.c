/* test_wire.c - the native wire format without sockets: header encode and
 * decode, what the header decoder refuses, the CBOR pre-check that stands
 * between the network and libcbor's loader, and params decoding.
 *
 * `test_wire --write-inputs DIR` writes the fuzzer's starting inputs (valid
 * headers and params made by the library's own encoders) into DIR. */
#include "testutil.h"

#include "wire.h"

#include <errno.h>
#include <math.h>
#include <sys/stat.h>

/* ------------------------------------------------ a tiny CBOR byte builder */

typedef struct cb {
    uint8_t b[2048];
    size_t n;
} cb;

static void c_uint(cb *c, uint64_t v) { c->n += cbor_encode_uint(v, c->b + c->n, sizeof c->b - c->n); }
static void c_neg(cb *c, uint64_t v) { c->n += cbor_encode_negint(v, c->b + c->n, sizeof c->b - c->n); }
static void c_arr(cb *c, uint64_t n) { c->n += cbor_encode_array_start(n, c->b + c->n, sizeof c->b - c->n); }
static void c_map(cb *c, uint64_t n) { c->n += cbor_encode_map_start(n, c->b + c->n, sizeof c->b - c->n); }
static void c_raw(cb *c, const void *d, size_t len)
{
    memcpy(c->b + c->n, d, len);
    c->n += len;
}
static void c_byte(cb *c, uint8_t v) { c_raw(c, &v, 1); }
static void c_strn(cb *c, const char *s, size_t len)
{
    c->n += cbor_encode_string_start(len, c->b + c->n, sizeof c->b - c->n);
    c_raw(c, s, len);
}
static void c_str(cb *c, const char *s) { c_strn(c, s, strlen(s)); }

/* A valid header, by hand, with every field given. */
static void c_header(cb *c, uint64_t version, uint64_t kind, uint64_t seq, uint64_t ack,
                     uint64_t corr, const char *command, uint64_t flags)
{
    c_arr(c, 7);
    c_uint(c, version);
    c_uint(c, kind);
    c_uint(c, seq);
    c_uint(c, ack);
    c_uint(c, corr);
    c_str(c, command);
    c_uint(c, flags);
}

/* Decode must refuse with MDG_EPROTO and a detail containing `why`. */
static void refuse_header(const void *buf, size_t len, const char *why, int line)
{
    mdg_header h;
    int rc = mdg_wire_decode_header(buf, len, &h);
    t_checks++;
    if (rc != MDG_EPROTO || !strstr(mdg_last_error(), why)) {
        t_failed++;
        fprintf(stderr, "test_wire.c:%d: header decode gave %d (%s), wanted EPROTO with \"%s\"\n",
                line, rc, mdg_last_error(), why);
    }
}
#define REFUSE_HEADER(c, why) refuse_header((c)->b, (c)->n, why, __LINE__)

static void refuse_cbor(const void *buf, size_t len, const char *why, int line)
{
    int rc = mdg_cbor_check(buf, len);
    t_checks++;
    if (rc != MDG_EPROTO || !strstr(mdg_last_error(), why)) {
        t_failed++;
        fprintf(stderr, "test_wire.c:%d: CBOR check gave %d (%s), wanted EPROTO with \"%s\"\n",
                line, rc, mdg_last_error(), why);
    }
}
#define REFUSE_CBOR(buf, len, why) refuse_cbor(buf, len, why, __LINE__)

static void refuse_params(const void *buf, size_t len, const char *why, int line)
{
    mdg_params *p = NULL;
    int rc = mdg_params_decode(buf, len, &p);
    t_checks++;
    if (rc != MDG_EPROTO || p != NULL || !strstr(mdg_last_error(), why)) {
        t_failed++;
        fprintf(stderr, "test_wire.c:%d: params decode gave %d (%s), wanted EPROTO with \"%s\"\n",
                line, rc, mdg_last_error(), why);
    }
    mdg_params_destroy(&p);
}
#define REFUSE_PARAMS(c, why) refuse_params((c)->b, (c)->n, why, __LINE__)

/* ------------------------------------------------------------------ header */

static void test_header_round_trip(void)
{
    mdg_header h = {.kind = MDG_K_CMD, .flags = UINT32_MAX, .seq = UINT64_MAX, .ack = 1ULL << 40,
                    .corr = 12345678901ULL};
    mdg_header d;
    uint8_t buf[MDG_MAX_HEADER];
    char longest[MDG_MAX_COMMAND + 2];

    memset(longest, 'c', sizeof longest);
    longest[MDG_MAX_COMMAND] = '\0';
    CHECK_RC(mdg_header_set_command(&h, longest), 0);
    CHECK(h.command_len == MDG_MAX_COMMAND);
    size_t n = mdg_wire_encode_header(&h, buf, sizeof buf);
    CHECK(n > 0 && n <= MDG_MAX_HEADER);
    CHECK_RC(mdg_wire_decode_header(buf, n, &d), 0);
    CHECK(d.kind == h.kind && d.flags == h.flags && d.seq == h.seq && d.ack == h.ack &&
          d.corr == h.corr);
    CHECK(d.command_len == MDG_MAX_COMMAND && strcmp(d.command, longest) == 0);

    /* 256 bytes is refused and leaves the header as it was */
    longest[MDG_MAX_COMMAND] = 'c';
    longest[MDG_MAX_COMMAND + 1] = '\0';
    CHECK_RC(mdg_header_set_command(&h, longest), MDG_EINVAL);
    CHECK(strstr(mdg_last_error(), "255") != NULL);
    CHECK(h.command_len == MDG_MAX_COMMAND);

    /* NULL means "" (replies carry no command) */
    CHECK_RC(mdg_header_set_command(&h, NULL), 0);
    CHECK(h.command_len == 0 && h.command[0] == '\0');

    /* every kind, zero fields */
    for (int k = MDG_K_HELLO; k <= MDG_K_MAX; k++) {
        mdg_header z = {.kind = (uint8_t)k};
        mdg_header_set_command(&z, k == MDG_K_CMD ? "echo" : "");
        n = mdg_wire_encode_header(&z, buf, sizeof buf);
        CHECK(n > 0);
        memset(&d, 0xee, sizeof d);
        CHECK_RC(mdg_wire_decode_header(buf, n, &d), 0);
        CHECK(d.kind == k && d.seq == 0 && d.ack == 0 && d.corr == 0 && d.flags == 0);
        CHECK(strcmp(d.command, k == MDG_K_CMD ? "echo" : "") == 0);
        CHECK(strcmp(mdg_kind_name(k), "?") != 0);
    }
    CHECK(strcmp(mdg_kind_name(0), "?") == 0 && strcmp(mdg_kind_name(8), "?") == 0);
    CHECK(mdg_kind_sequenced(MDG_K_CMD) && !mdg_kind_sequenced(MDG_K_HELLO));

    /* an encoder given too little room says so with 0, for every short size */
    mdg_header_set_command(&h, "a-command");
    size_t full = mdg_wire_encode_header(&h, buf, sizeof buf);
    int short_ok = 0;
    for (size_t cap = 0; cap < full; cap++)
        short_ok += mdg_wire_encode_header(&h, buf, cap) == 0;
    CHECK(short_ok == (int)full);

    /* the hand-built form decodes the same as the encoder's */
    cb c = {0};
    c_header(&c, MDG_WIRE_VERSION, MDG_K_REPLY, 5, 4, 3, "", MDG_F_MORE);
    CHECK_RC(mdg_wire_decode_header(c.b, c.n, &d), 0);
    CHECK(d.kind == MDG_K_REPLY && d.seq == 5 && d.ack == 4 && d.corr == 3 && d.flags == MDG_F_MORE);
    /* non-minimal integer encodings are still integers */
    static const uint8_t wide[] = {0x87, 0x1b, 0, 0, 0, 0, 0, 0, 0, 2, 0x18, 3, 0x19, 0, 1, 0x1a, 0, 0, 0, 2, 0x00, 0x60, 0x00};
    CHECK_RC(mdg_wire_decode_header(wide, sizeof wide, &d), 0);
    CHECK(d.kind == 3 && d.seq == 1 && d.ack == 2);
}

/* A head frame: the header, then the params, in one frame. */
static void test_head(void)
{
    mdg_header h = {.kind = MDG_K_CMD, .seq = 7, .ack = 3, .corr = 9}, d;
    mdg_header_set_command(&h, "write_note");
    mdg_params *p = mdg_params_new();
    mdg_params_set_str(p, "note", "hello");
    zmq_msg_t pm, head;
    CHECK_RC(mdg_params_encode(p, &pm), 0);
    CHECK_RC(mdg_wire_encode_head(&h, zmq_msg_data(&pm), zmq_msg_size(&pm), &head), 0);
    size_t at = 0, off = 0, len = 0;
    CHECK_RC(mdg_wire_read_head(zmq_msg_data(&head), zmq_msg_size(&head), &at, &d, &off, &len), 0);
    CHECK(at == zmq_msg_size(&head) && len == zmq_msg_size(&pm));
    CHECK(d.kind == MDG_K_CMD && d.seq == 7 && d.ack == 3 && d.corr == 9 && strcmp(d.command, "write_note") == 0);
    CHECK(off + zmq_msg_size(&pm) == zmq_msg_size(&head) &&
          memcmp((uint8_t *)zmq_msg_data(&head) + off, zmq_msg_data(&pm), zmq_msg_size(&pm)) == 0);
    mdg_params *back = NULL;
    const char *note = NULL;
    CHECK_RC(mdg_params_decode((uint8_t *)zmq_msg_data(&head) + off, zmq_msg_size(&head) - off, &back), 0);
    CHECK(mdg_params_get_str(back, "note", &note) == 0 && note && strcmp(note, "hello") == 0);
    /* the header alone is not a header followed by nothing when decoded exactly */
    CHECK_RC(mdg_wire_decode_header(zmq_msg_data(&head), zmq_msg_size(&head), &d), MDG_EPROTO);
    CHECK(strstr(mdg_last_error(), "trailing bytes") != NULL);
    CHECK(mdg_wire_peek_version(zmq_msg_data(&head), zmq_msg_size(&head)) == MDG_WIRE_VERSION);
    static const uint8_t v1[] = {0x87, 1, 1, 0, 0, 0, 0x60, 0}, junk[] = {0xa0, 0x01};
    CHECK(mdg_wire_peek_version(v1, sizeof v1) == 1 && mdg_wire_peek_version(junk, sizeof junk) == -1);
    at = 0;
    CHECK_RC(mdg_wire_read_head(v1, sizeof v1, &at, &d, &off, &len), MDG_EPROTO);
    CHECK(strstr(mdg_last_error(), "older libmessidge") != NULL);
    mdg_params_destroy(&back);
    mdg_params_destroy(&p);
    zmq_msg_close(&pm);
    zmq_msg_close(&head);
}

static void test_header_refused(void)
{
    cb c;
    uint8_t good[MDG_MAX_HEADER];
    size_t good_n;

    /* array length */
    c = (cb){0};
    c_arr(&c, 6);
    c_uint(&c, 2); c_uint(&c, 3); c_uint(&c, 1); c_uint(&c, 0); c_uint(&c, 1); c_str(&c, "x");
    REFUSE_HEADER(&c, "array of 7");
    c = (cb){0};
    c_arr(&c, 8);
    c_uint(&c, 2); c_uint(&c, 3); c_uint(&c, 1); c_uint(&c, 0); c_uint(&c, 1); c_str(&c, "x");
    c_uint(&c, 0); c_uint(&c, 0);
    REFUSE_HEADER(&c, "array of 7");
    c = (cb){0};
    c_arr(&c, 0);
    REFUSE_HEADER(&c, "array of 7");

    /* version and kind */
    c = (cb){0};
    c_header(&c, 3, MDG_K_CMD, 1, 0, 1, "x", 0);
    REFUSE_HEADER(&c, "unsupported protocol version");
    c = (cb){0};
    c_header(&c, 1, MDG_K_CMD, 1, 0, 1, "x", 0); /* an older libmessidge: said so */
    REFUSE_HEADER(&c, "protocol version 1: the peer is an older libmessidge");
    c = (cb){0};
    c_header(&c, 0, MDG_K_CMD, 1, 0, 1, "x", 0);
    REFUSE_HEADER(&c, "version");
    c = (cb){0};
    c_header(&c, MDG_WIRE_VERSION, 0, 1, 0, 1, "x", 0);
    REFUSE_HEADER(&c, "unknown message kind");
    c = (cb){0};
    c_header(&c, MDG_WIRE_VERSION, MDG_K_MAX + 1, 1, 0, 1, "x", 0);
    REFUSE_HEADER(&c, "unknown message kind");
    c = (cb){0};
    c_header(&c, MDG_WIRE_VERSION, 256 + MDG_K_CMD, 1, 0, 1, "x", 0); /* must not wrap to a valid uint8 */
    REFUSE_HEADER(&c, "unknown message kind");

    /* flags wider than 32 bits */
    c = (cb){0};
    c_header(&c, MDG_WIRE_VERSION, MDG_K_CMD, 1, 0, 1, "x", 1ULL << 32);
    REFUSE_HEADER(&c, "flags");

    /* a string where an int belongs, an int where the string belongs */
    c = (cb){0};
    c_arr(&c, 7);
    c_uint(&c, 2); c_uint(&c, 3); c_str(&c, "seq"); c_uint(&c, 0); c_uint(&c, 1); c_str(&c, "x"); c_uint(&c, 0);
    REFUSE_HEADER(&c, "is a string");
    c = (cb){0};
    c_arr(&c, 7);
    c_uint(&c, 2); c_uint(&c, 3); c_uint(&c, 1); c_uint(&c, 0); c_uint(&c, 1); c_uint(&c, 9); c_uint(&c, 0);
    REFUSE_HEADER(&c, "must be a text string");

    /* negative ints, floats, bools, null, bytes, nested containers, tags */
    static const uint8_t *wrong_items[] = {
        (const uint8_t *)"\x20",                 /* -1 */
        (const uint8_t *)"\x3b\x7f\xff\xff\xff\xff\xff\xff\xff", /* -2^63 */
        (const uint8_t *)"\xf9\x3c\x00",         /* 1.0 half */
        (const uint8_t *)"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00", /* 1.0 double */
        (const uint8_t *)"\xf5",                 /* true */
        (const uint8_t *)"\xf6",                 /* null */
        (const uint8_t *)"\x41\x01",             /* bytes */
        (const uint8_t *)"\x81\x01",             /* [1] */
        (const uint8_t *)"\xa0",                 /* {} */
        (const uint8_t *)"\xc1\x01",             /* tag 1 */
        (const uint8_t *)"\x9f\xff",             /* indefinite array */
    };
    static const size_t wrong_len[] = {1, 9, 3, 9, 1, 1, 2, 2, 1, 2, 2};
    for (size_t k = 0; k < sizeof wrong_len / sizeof wrong_len[0]; k++) {
        /* put the wrong item in the seq field */
        c = (cb){0};
        c_arr(&c, 7);
        c_uint(&c, 2); c_uint(&c, 3);
        c_raw(&c, wrong_items[k], wrong_len[k]);
        c_uint(&c, 0); c_uint(&c, 1); c_str(&c, "x"); c_uint(&c, 0);
        REFUSE_HEADER(&c, "bad header");
        /* and in the command field */
        c = (cb){0};
        c_arr(&c, 7);
        c_uint(&c, 2); c_uint(&c, 3); c_uint(&c, 1); c_uint(&c, 0); c_uint(&c, 1);
        c_raw(&c, wrong_items[k], wrong_len[k]);
        c_uint(&c, 0);
        REFUSE_HEADER(&c, "bad header");
    }

    /* the command: too long, NUL inside, indefinite-length */
    char name[MDG_MAX_COMMAND + 2];
    memset(name, 'n', sizeof name);
    name[MDG_MAX_COMMAND + 1] = '\0';
    c = (cb){0};
    c_header(&c, MDG_WIRE_VERSION, MDG_K_CMD, 1, 0, 1, name, 0);
    REFUSE_HEADER(&c, "too long");
    c = (cb){0};
    c_arr(&c, 7);
    c_uint(&c, 2); c_uint(&c, 3); c_uint(&c, 1); c_uint(&c, 0); c_uint(&c, 1);
    c_strn(&c, "ec\0ho", 5);
    c_uint(&c, 0);
    REFUSE_HEADER(&c, "NUL");
    c = (cb){0};
    c_arr(&c, 7);
    c_uint(&c, 2); c_uint(&c, 3); c_uint(&c, 1); c_uint(&c, 0); c_uint(&c, 1);
    c_raw(&c, "\x7f\x61x\xff", 4);
    c_uint(&c, 0);
    REFUSE_HEADER(&c, "bad header");

    /* not an array at all: an int, a string, a map, nothing, not CBOR */
    c = (cb){0};
    c_uint(&c, 3);
    REFUSE_HEADER(&c, "array of 7");
    c = (cb){0};
    c_str(&c, "hello");
    REFUSE_HEADER(&c, "bad header");
    c = (cb){0};
    c_map(&c, 0);
    REFUSE_HEADER(&c, "bad header");
    REFUSE_HEADER(&((cb){.n = 0}), "not valid CBOR");
    refuse_header("GET / HTTP/1.1\r\n", 16, "header", __LINE__);
    refuse_header("\xff\xff\xff", 3, "header", __LINE__);
    refuse_header("\x1c", 1, "not valid CBOR", __LINE__); /* reserved additional info */

    /* trailing bytes */
    mdg_header h = {.kind = MDG_K_CMD, .seq = 1, .corr = 1};
    mdg_header_set_command(&h, "echo");
    good_n = mdg_wire_encode_header(&h, good, sizeof good);
    c = (cb){0};
    c_raw(&c, good, good_n);
    c_byte(&c, 0);
    REFUSE_HEADER(&c, "trailing");
    c = (cb){0};
    c_raw(&c, good, good_n);
    c_raw(&c, good, good_n);
    REFUSE_HEADER(&c, "trailing");

    /* every truncation of a valid header */
    int truncated_refused = 0;
    mdg_header d;
    for (size_t n = 0; n < good_n; n++)
        truncated_refused += mdg_wire_decode_header(good, n, &d) == MDG_EPROTO;
    CHECK(truncated_refused == (int)good_n);

    /* a frame longer than MDG_MAX_HEADER is refused before decoding, even
     * when it starts with a valid header */
    uint8_t big[MDG_MAX_HEADER + 1];
    memset(big, 0, sizeof big);
    memcpy(big, good, good_n);
    refuse_header(big, sizeof big, "too large", __LINE__);
    CHECK_RC(mdg_wire_decode_header(big, good_n, &d), 0);
}

/* ---------------------------------------------------------- CBOR pre-check */

/* n nested one-item arrays around a 0: [[[...[0]...]]] */
static void nested_arrays(cb *c, int n)
{
    *c = (cb){0};
    for (int i = 0; i < n; i++)
        c_arr(c, 1);
    c_uint(c, 0);
}

static void test_check_cbor(void)
{
    cb c;

    /* depth: MDG_MAX_DEPTH levels pass, one more does not; maps and tags
     * count as levels too */
    nested_arrays(&c, MDG_MAX_DEPTH);
    CHECK_RC(mdg_cbor_check(c.b, c.n), 0);
    nested_arrays(&c, MDG_MAX_DEPTH + 1);
    REFUSE_CBOR(c.b, c.n, "nested too deeply");
    nested_arrays(&c, 1000);
    REFUSE_CBOR(c.b, c.n, "nested too deeply");
    c = (cb){0};
    for (int i = 0; i < MDG_MAX_DEPTH + 1; i++) {
        c_map(&c, 1);
        c_str(&c, "k");
    }
    c_uint(&c, 0);
    REFUSE_CBOR(c.b, c.n, "nested too deeply");
    c = (cb){0};
    for (int i = 0; i < MDG_MAX_DEPTH + 1; i++)
        c_byte(&c, 0xc1); /* tag 1 */
    c_uint(&c, 0);
    REFUSE_CBOR(c.b, c.n, "nested too deeply");
    /* indefinite arrays nest too */
    c = (cb){0};
    for (int i = 0; i < MDG_MAX_DEPTH + 1; i++)
        c_byte(&c, 0x9f);
    for (int i = 0; i < MDG_MAX_DEPTH + 1; i++)
        c_byte(&c, 0xff);
    REFUSE_CBOR(c.b, c.n, "nested too deeply");
    /* but many empty or flat containers side by side are fine */
    c = (cb){0};
    c_arr(&c, 500);
    for (int i = 0; i < 500; i++)
        c_arr(&c, 0);
    CHECK_RC(mdg_cbor_check(c.b, c.n), 0);

    /* declared lengths that cannot fit in what is left of the frame */
    static const uint8_t huge_array[] = {0x9b, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x01}; /* 2^60 items */
    REFUSE_CBOR(huge_array, sizeof huge_array, "declared length");
    static const uint8_t max_array[] = {0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0};
    REFUSE_CBOR(max_array, sizeof max_array, "declared length");
    /* 2^64 - 1 must not pass for the "indefinite" mark: closed by a break */
    static const uint8_t max_array_break[] = {0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0xff};
    REFUSE_CBOR(max_array_break, sizeof max_array_break, "declared length");
    static const uint8_t huge_map[] = {0xbb, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x01}; /* 2^62 pairs */
    REFUSE_CBOR(huge_map, sizeof huge_map, "declared length");
    static const uint8_t max_map[] = {0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    REFUSE_CBOR(max_map, sizeof max_map, "declared length");
    static const uint8_t short_map[] = {0xa3, 0x61, 'a', 0x01}; /* 6 items, 3 bytes */
    REFUSE_CBOR(short_map, sizeof short_map, "declared length");
    static const uint8_t huge_bytes[] = {0x5b, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x01};
    REFUSE_CBOR(huge_bytes, sizeof huge_bytes, "truncated");
    static const uint8_t max_str[] = {0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 'a'};
    REFUSE_CBOR(max_str, sizeof max_str, "truncated");
    /* inside a map: an inner array claims more than is left */
    c = (cb){0};
    c_map(&c, 1);
    c_str(&c, "k");
    c_arr(&c, 1000);
    c_uint(&c, 1);
    REFUSE_CBOR(c.b, c.n, "declared length");

    /* indefinite-length strings are refused (text and bytes) */
    static const uint8_t indef_text[] = {0x7f, 0x61, 'a', 0xff};
    REFUSE_CBOR(indef_text, sizeof indef_text, "indefinite");
    static const uint8_t indef_bytes[] = {0x5f, 0x41, 1, 0xff};
    REFUSE_CBOR(indef_bytes, sizeof indef_bytes, "indefinite");
    static const uint8_t indef_in_map[] = {0xa1, 0x61, 'k', 0x7f, 0xff};
    REFUSE_CBOR(indef_in_map, sizeof indef_in_map, "indefinite");

    /* trailing bytes, several items */
    static const uint8_t trailing[] = {0xa0, 0x00};
    REFUSE_CBOR(trailing, sizeof trailing, "trailing");
    static const uint8_t two_maps[] = {0xa0, 0xa0};
    REFUSE_CBOR(two_maps, sizeof two_maps, "trailing");

    /* truncated and broken */
    REFUSE_CBOR("", 0, "truncated");
    static const uint8_t open_map[] = {0xa2, 0x61, 'a', 0x01, 0x61};
    REFUSE_CBOR(open_map, sizeof open_map, "truncated");
    static const uint8_t open_indef[] = {0xbf, 0x61, 'a', 0x01};
    REFUSE_CBOR(open_indef, sizeof open_indef, "truncated");
    static const uint8_t lone_break[] = {0xff};
    REFUSE_CBOR(lone_break, sizeof lone_break, "break");
    static const uint8_t break_in_definite[] = {0x82, 0x01, 0xff};
    REFUSE_CBOR(break_in_definite, sizeof break_in_definite, "break");
    static const uint8_t reserved[] = {0xa1, 0x61, 'a', 0x1c};
    REFUSE_CBOR(reserved, sizeof reserved, "malformed");
    /* tags 6..20: libcbor writes them in a form it cannot read back */
    static const uint8_t tag13_long[] = {0xda, 0, 0, 0, 13, 0x01};
    REFUSE_CBOR(tag13_long, sizeof tag13_long, "tags 6 to 20");
    static const uint8_t tag6_short[] = {0xd8, 6, 0x01};
    REFUSE_CBOR(tag6_short, sizeof tag6_short, "tags 6 to 20");
    static const uint8_t tag13_short[] = {0xcd, 0x01};
    REFUSE_CBOR(tag13_short, sizeof tag13_short, "malformed");
    static const uint8_t tag21[] = {0xd5, 0x01}, tag5[] = {0xc5, 0x01}, tag_big[] = {0xd9, 1, 0, 0x01};
    CHECK_RC(mdg_cbor_check(tag21, sizeof tag21), 0);
    CHECK_RC(mdg_cbor_check(tag5, sizeof tag5), 0);
    CHECK_RC(mdg_cbor_check(tag_big, sizeof tag_big), 0);
    static const uint8_t half_float[] = {0xf9, 0x3c};
    REFUSE_CBOR(half_float, sizeof half_float, "truncated");

    /* accepted: normal nested params as our encoder writes them */
    mdg_params *p = mdg_params_new();
    cbor_item_t *arr = cbor_new_definite_array(3);
    cbor_array_push(arr, cbor_move(cbor_build_string("x")));
    cbor_array_push(arr, cbor_move(cbor_build_float8(1.5)));
    cbor_item_t *m = cbor_new_definite_map(1);
    cbor_map_add(m, (struct cbor_pair){.key = cbor_move(cbor_build_string("deep")),
                                       .value = cbor_move(cbor_new_null())});
    cbor_array_push(arr, cbor_move(m));
    mdg_params_set_item(p, "list", arr);
    mdg_params_set_int(p, "n", -70000);
    mdg_params_set_bytes(p, "pk", "0123456789abcdef0123456789abcdef", 32);
    mdg_params_set_bool(p, "b", true);
    zmq_msg_t zm;
    CHECK_RC(mdg_params_encode(p, &zm), 0);
    CHECK_RC(mdg_cbor_check(zmq_msg_data(&zm), zmq_msg_size(&zm)), 0);
    /* ... and every truncation of it is refused */
    int refused = 0;
    for (size_t n = 0; n < zmq_msg_size(&zm); n++)
        refused += mdg_cbor_check(zmq_msg_data(&zm), n) == MDG_EPROTO;
    CHECK(refused == (int)zmq_msg_size(&zm));
    zmq_msg_close(&zm);
    mdg_params_destroy(&p);

    /* scalars and indefinite containers of definite items pass the check
     * (whether they are params is decode's business) */
    static const uint8_t indef_ok[] = {0x9f, 0x01, 0x9f, 0xff, 0xff};
    CHECK_RC(mdg_cbor_check(indef_ok, sizeof indef_ok), 0);
    static const uint8_t one[] = {0x01};
    CHECK_RC(mdg_cbor_check(one, 1), 0);
}

/* ----------------------------------------------------------- params decode */

static void test_decode_params(void)
{
    cb c;
    mdg_params *p = NULL;

    /* not maps */
    c = (cb){0};
    c_arr(&c, 2);
    c_uint(&c, 1);
    c_uint(&c, 2);
    REFUSE_PARAMS(&c, "must be a map");
    c = (cb){0};
    c_uint(&c, 42);
    REFUSE_PARAMS(&c, "must be a map");
    c = (cb){0};
    c_neg(&c, 0);
    REFUSE_PARAMS(&c, "must be a map");
    c = (cb){0};
    c_str(&c, "{}");
    REFUSE_PARAMS(&c, "must be a map");
    static const uint8_t null_item[] = {0xf6};
    refuse_params(null_item, 1, "must be a map", __LINE__);
    static const uint8_t tagged_map[] = {0xc1, 0xa0};
    refuse_params(tagged_map, 2, "must be a map", __LINE__);

    /* keys that are not text */
    c = (cb){0};
    c_map(&c, 1);
    c_uint(&c, 1);
    c_uint(&c, 2);
    REFUSE_PARAMS(&c, "keys must be text");
    static const uint8_t bytes_key[] = {0xa1, 0x41, 'k', 0x01};
    refuse_params(bytes_key, sizeof bytes_key, "keys must be text", __LINE__);
    static const uint8_t array_key[] = {0xa1, 0x80, 0x01};
    refuse_params(array_key, sizeof array_key, "keys must be text", __LINE__);
    static const uint8_t mixed_keys[] = {0xa2, 0x61, 'a', 0x01, 0xf6, 0x02};
    refuse_params(mixed_keys, sizeof mixed_keys, "keys must be text", __LINE__);

    /* duplicate keys, first, last or among many */
    static const uint8_t dup[] = {0xa3, 0x61, 'a', 1, 0x61, 'b', 2, 0x61, 'a', 3};
    refuse_params(dup, sizeof dup, "duplicate params key 'a'", __LINE__);
    c = (cb){0};
    c_map(&c, 200);
    for (int i = 0; i < 199; i++) {
        char k[8];
        snprintf(k, sizeof k, "k%d", i);
        c_str(&c, k);
        c_uint(&c, (uint64_t)i);
    }
    c_str(&c, "k123");
    c_uint(&c, 0);
    REFUSE_PARAMS(&c, "duplicate params key 'k123'");
    static const uint8_t dup_empty[] = {0xa2, 0x60, 1, 0x60, 2};
    refuse_params(dup_empty, sizeof dup_empty, "duplicate", __LINE__);
    static const uint8_t dup_ctl[] = {0xa2, 0x62, '\n', 'x', 1, 0x62, '\n', 'x', 2};
    refuse_params(dup_ctl, sizeof dup_ctl, "duplicate params key '?x'", __LINE__);
    /* same prefix, different lengths: not duplicates */
    static const uint8_t prefix[] = {0xa2, 0x61, 'a', 1, 0x62, 'a', 'a', 2};
    CHECK_RC(mdg_params_decode(prefix, sizeof prefix, &p), 0);
    mdg_params_destroy(&p);

    /* whatever the pre-check refuses, decode refuses the same way */
    nested_arrays(&c, MDG_MAX_DEPTH + 1);
    REFUSE_PARAMS(&c, "nested too deeply");
    static const uint8_t huge_map[] = {0xbb, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x01};
    refuse_params(huge_map, sizeof huge_map, "declared length", __LINE__);
    static const uint8_t trailing[] = {0xa0, 0xa0};
    refuse_params(trailing, sizeof trailing, "trailing", __LINE__);
    /* an indefinite map with a key and no value */
    static const uint8_t odd_indef[] = {0xbf, 0x61, 'a', 0xff};
    refuse_params(odd_indef, sizeof odd_indef, "a key and no value", __LINE__);

    /* half floats survive a re-encode exactly (libcbor's half encoder
     * would round subnormals and drop a NaN's sign): at the top, in an
     * array, under a tag, as a nested map key */
    static const uint8_t halves[] = {0xa4, 0x61, 's', 0xf9, 0x00, 0xf4,        /* 2^-24 * 244 */
                                     0x61, 'n', 0xf9, 0xfe, 0x00,              /* -NaN */
                                     0x61, 'a', 0x82, 0xf9, 0x03, 0xff, 0xc1, 0xf9, 0x00, 0x01,
                                     0x61, 'm', 0xa1, 0xf9, 0x80, 0x01, 0xf9, 0x3c, 0x00};
    CHECK_RC(mdg_params_decode(halves, sizeof halves, &p), 0);
    double d = 0;
    CHECK_RC(mdg_params_get_double(p, "s", &d), 0);
    CHECK(d == 244.0 / 16777216.0);
    char *t1 = mdg_params_to_text(p);
    zmq_msg_t zm;
    mdg_params *q = NULL;
    CHECK_RC(mdg_params_encode(p, &zm), 0);
    CHECK_RC(mdg_params_decode(zmq_msg_data(&zm), zmq_msg_size(&zm), &q), 0);
    zmq_msg_close(&zm);
    char *t2 = mdg_params_to_text(q);
    CHECK(t1 && t2 && strcmp(t1, t2) == 0);
    if (t1 && t2 && strcmp(t1, t2) != 0)
        fprintf(stderr, "  before: %s\n  after:  %s\n", t1, t2);
    d = 0;
    CHECK_RC(mdg_params_get_double(q, "s", &d), 0);
    CHECK(d == 244.0 / 16777216.0);
    CHECK_RC(mdg_params_get_double(q, "n", &d), 0);
    CHECK(isnan(d) && signbit(d));
    free(t1);
    free(t2);
    mdg_params_destroy(&p);
    mdg_params_destroy(&q);

    /* accepted: an empty map, a map deep at the limit */
    static const uint8_t empty[] = {0xa0};
    CHECK_RC(mdg_params_decode(empty, 1, &p), 0);
    CHECK(p && mdg_params_count(p) == 0);
    mdg_params_destroy(&p);
    c = (cb){0};
    c_map(&c, 1);
    c_str(&c, "deep");
    for (int i = 0; i < MDG_MAX_DEPTH - 1; i++)
        c_arr(&c, 1);
    c_uint(&c, 7);
    CHECK_RC(mdg_params_decode(c.b, c.n, &p), 0);
    CHECK(mdg_params_has(p, "deep"));
    mdg_params_destroy(&p);
}

/* -------------------------------------------------------- fuzzer inputs */

static int write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        if (f)
            fclose(f);
        return 1;
    }
    return fclose(f) != 0;
}

static int write_header(const char *dir, const char *name, int kind, uint64_t seq, uint64_t corr,
                        const char *command, uint32_t flags)
{
    mdg_header h = {.kind = (uint8_t)kind, .seq = seq, .ack = seq ? seq - 1 : 0, .corr = corr, .flags = flags};
    uint8_t buf[MDG_MAX_HEADER];
    mdg_header_set_command(&h, command);
    return write_file(dir, name, buf, mdg_wire_encode_header(&h, buf, sizeof buf));
}

/* A head frame: the header, then the params {"note": "hello"}. */
static int write_head(const char *dir, const char *name, int kind, uint64_t seq, const char *command)
{
    mdg_header h = {.kind = (uint8_t)kind, .seq = seq, .corr = seq};
    mdg_params *p = mdg_params_new();
    zmq_msg_t pm, head;
    mdg_header_set_command(&h, command);
    mdg_params_set_str(p, "note", "hello");
    int rc = mdg_params_encode(p, &pm) || mdg_wire_encode_head(&h, zmq_msg_data(&pm), zmq_msg_size(&pm), &head);
    mdg_params_destroy(&p);
    if (rc)
        return 1;
    zmq_msg_close(&pm);
    rc = write_file(dir, name, zmq_msg_data(&head), zmq_msg_size(&head));
    zmq_msg_close(&head);
    return rc;
}

/* A head frame of three messages (MDG_F_NEXT on the first two). */
static int write_batch(const char *dir, const char *name)
{
    uint8_t buf[1024];
    size_t n = 0;
    static const uint8_t params[] = {0xa1, 0x61, 'i', 0x01};
    for (int i = 0; i < 3; i++) {
        mdg_header h = {.kind = MDG_K_REPLY, .seq = (uint64_t)i + 1, .corr = (uint64_t)i + 1};
        n += mdg_wire_put_head(buf + n, sizeof buf - n, &h, i < 2, params, sizeof params);
    }
    return write_file(dir, name, buf, n);
}

static int write_params(const char *dir, const char *name, mdg_params *p)
{
    zmq_msg_t m;
    int rc = mdg_params_encode(p, &m) ||
             write_file(dir, name, zmq_msg_data(&m), zmq_msg_size(&m));
    zmq_msg_close(&m);
    mdg_params_destroy(&p);
    return rc;
}

static int write_inputs(const char *dir)
{
    int rc = 0;
    mkdir(dir, 0755);
    rc |= write_header(dir, "hdr-hello", MDG_K_HELLO, 0, 0, "", 0);
    rc |= write_header(dir, "hdr-cmd", MDG_K_CMD, 1, 1, "write_note", 0);
    rc |= write_header(dir, "hdr-reply-more", MDG_K_REPLY, 70000, 4294967296ULL, "", MDG_F_MORE);
    rc |= write_header(dir, "hdr-error-notice", MDG_K_ERROR, 3, 0, "", 0);
    rc |= write_head(dir, "head-cmd", MDG_K_CMD, 1, "write_note");
    rc |= write_head(dir, "head-reply", MDG_K_REPLY, 12, "");
    rc |= write_batch(dir, "head-batch");

    rc |= write_params(dir, "params-empty", NULL);
    mdg_params *p = mdg_params_new();
    mdg_params_set_int(p, "version", MDG_WIRE_VERSION);
    mdg_params_set_int(p, "ack", 0);
    rc |= write_params(dir, "params-hello", p);
    p = mdg_params_new();
    mdg_params_set_str(p, "error", "unknown command 'x'");
    mdg_params_set_str(p, "command", "x");
    rc |= write_params(dir, "params-error", p);
    /* one of each type, nested, a tag */
    p = mdg_params_new();
    cbor_item_t *arr = cbor_new_definite_array(4);
    cbor_array_push(arr, cbor_move(cbor_build_bool(false)));
    cbor_array_push(arr, cbor_move(cbor_new_null()));
    cbor_array_push(arr, cbor_move(cbor_build_float2(0.5f)));
    cbor_item_t *m = cbor_new_definite_map(1);
    cbor_map_add(m, (struct cbor_pair){.key = cbor_move(cbor_build_string("k")),
                                       .value = cbor_move(cbor_build_tag(1, cbor_move(cbor_build_uint8(2))))});
    cbor_array_push(arr, cbor_move(m));
    mdg_params_set_item(p, "list", arr);
    mdg_params_set_str(p, "s", "text");
    mdg_params_set_bytes(p, "b", "\x00\x01", 2);
    mdg_params_set_int(p, "neg", INT64_MIN);
    mdg_params_set_int(p, "pos", INT64_MAX);
    mdg_params_set_double(p, "d", -1.25);
    mdg_params_set_item(p, "f4", cbor_build_float4(3.0f));
    rc |= write_params(dir, "params-mixed", p);
    /* indefinite containers (valid, and accepted) */
    static const uint8_t indef[] = {0xbf, 0x61, 'a', 0x9f, 0x01, 0x02, 0xff, 0xff};
    rc |= write_file(dir, "params-indef", indef, sizeof indef);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-inputs") == 0)
        return write_inputs(argv[2]);
    test_header_round_trip();
    test_header_refused();
    test_head();
    test_check_cbor();
    test_decode_params();
    return t_done("test_wire");
}
