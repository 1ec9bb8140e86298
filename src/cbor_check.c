/* cbor_check.c - the limits for CBOR from the network (see cbor_check.h).
 *
 * Everything a peer sends is walked here before libcbor builds anything
 * from it, so that cbor_load only ever sees sane input: a frame of huge
 * declared lengths or deep nesting is refused without allocating. */
#include "cbor_check.h"

#include "internal.h"
#include "wire.h"

#include <cbor.h>
#include <stdint.h>

typedef struct check_state {
    uint64_t left[MDG_MAX_DEPTH + 1]; /* items left per open container; UINT64_MAX = indefinite */
    bool imap[MDG_MAX_DEPTH + 1];     /* the container is an indefinite map... */
    bool odd[MDG_MAX_DEPTH + 1];      /* ...holding a key without its value so far */
    int depth;                       /* open containers; -1 when the top item is done */
    size_t avail;                    /* bytes not yet decoded */
    size_t items;                    /* seen so far, at most MDG_MAX_ITEMS */
    const char *bad;
    bool halves;                     /* saw a half-precision float */
    size_t off;                      /* where the item being decoded starts */
    mdg_cbor_walk *w;
} check_state;

/* One item (leaf or container start) fills a slot of the enclosing one. */
static void take_slot(check_state *s)
{
    if (s->depth < 0) {
        s->bad = "more than one item";
        return;
    }
    if (s->depth == 1 && s->w->mark)
        s->w->mark(s->w->arg, s->off);
    if (s->left[s->depth] != UINT64_MAX)
        s->left[s->depth]--;
    s->odd[s->depth] = s->imap[s->depth] && !s->odd[s->depth];
    _Static_assert(MDG_MAX_ITEMS == 262144, "the text below names the limit");
    if (++s->items > MDG_MAX_ITEMS)
        s->bad = "more than 262144 CBOR items";
}

/* Close finished definite containers. */
static void settle(check_state *s)
{
    while (s->depth >= 0 && s->left[s->depth] == 0)
        s->depth--;
}

static void leaf(check_state *s)
{
    take_slot(s);
    settle(s);
}

static void open_container(check_state *s, uint64_t items)
{
    take_slot(s);
    if (s->bad)
        return;
    if (items != UINT64_MAX && items > s->avail) {
        s->bad = "declared length longer than the frame";
        return;
    }
    if (items == 0) {
        settle(s);
        return;
    }
    if (s->depth + 1 > MDG_MAX_DEPTH) {
        s->bad = "nested too deeply";
        return;
    }
    s->left[++s->depth] = items;
    s->imap[s->depth] = s->odd[s->depth] = false;
}

static void ck_leaf(void *c) { leaf(c); }
static void ck_u8(void *c, uint8_t v) { (void)v; leaf(c); }
static void ck_u16(void *c, uint16_t v) { (void)v; leaf(c); }
static void ck_u32(void *c, uint32_t v) { (void)v; leaf(c); }
static void ck_u64(void *c, uint64_t v) { (void)v; leaf(c); }
static void ck_data(void *c, cbor_data d, uint64_t l) { (void)d; (void)l; leaf(c); }

/* Well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing
 * past U+10FFFF), as libcbor's loader demands of text strings: a text
 * that passed here must load, wherever it is relayed to. */
bool mdg_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t more;
        uint8_t lo = 0x80, hi = 0xbf; /* the second byte's range */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            more = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            more = 2;
            lo = c == 0xe0 ? 0xa0 : 0x80; /* overlong */
            hi = c == 0xed ? 0x9f : 0xbf; /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            more = 3;
            lo = c == 0xf0 ? 0x90 : 0x80; /* overlong */
            hi = c == 0xf4 ? 0x8f : 0xbf; /* past U+10FFFF */
        } else {
            return false;
        }
        if (n - i - 1 < more || s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= more; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return false;
        i += more + 1;
    }
    return true;
}

static void ck_text(void *c, cbor_data d, uint64_t l)
{
    if (!mdg_utf8_valid(d, (size_t)l)) {
        ((check_state *)c)->bad = "a text string is not valid UTF-8";
        return;
    }
    leaf(c);
}
static void ck_f(void *c, float v) { (void)v; leaf(c); }
static void ck_f2(void *c, float v)
{
    ((check_state *)c)->halves = true;
    ck_f(c, v);
}
static void ck_d(void *c, double v) { (void)v; leaf(c); }
static void ck_b(void *c, bool v) { (void)v; leaf(c); }
static void ck_indef_string(void *c) { ((check_state *)c)->bad = "indefinite-length strings are not accepted"; }
/* UINT64_MAX marks indefinite containers: a definite array declaring
 * 2^64 - 1 items must not pass for one (any count above avail is refused). */
static void ck_array(void *c, uint64_t n) { open_container(c, n == UINT64_MAX ? UINT64_MAX - 1 : n); }
static void ck_map(void *c, uint64_t n) { open_container(c, n > UINT64_MAX / 2 ? UINT64_MAX - 1 : n * 2); }
static void ck_indef(void *c) { open_container(c, UINT64_MAX); }
static void ck_indef_map(void *c)
{
    check_state *s = c;
    int depth = s->depth;
    open_container(s, UINT64_MAX);
    if (!s->bad && s->depth > depth)
        s->imap[s->depth] = true;
}
/* libcbor 0.8 writes tags 6..20 in their one-byte form, which its own
 * decoder refuses: a params map carrying one (sent in a longer form) would
 * decode here but not where the broker relays it. Refused at the door. */
static void ck_tag(void *c, uint64_t t)
{
    if (t >= 6 && t <= 20) {
        ((check_state *)c)->bad = "CBOR tags 6 to 20 are not accepted";
        return;
    }
    open_container(c, 1);
}
static void ck_break(void *c)
{
    check_state *s = c;
    if (s->depth < 0 || s->left[s->depth] != UINT64_MAX) {
        s->bad = "unexpected break";
        return;
    }
    if (s->odd[s->depth]) {
        s->bad = "a map with a key and no value";
        return;
    }
    s->depth--;
    settle(s);
}

static const struct cbor_callbacks check_callbacks = {
    .uint8 = ck_u8, .uint16 = ck_u16, .uint32 = ck_u32, .uint64 = ck_u64,
    .negint8 = ck_u8, .negint16 = ck_u16, .negint32 = ck_u32, .negint64 = ck_u64,
    .string = ck_text, .string_start = ck_indef_string,
    .byte_string = ck_data, .byte_string_start = ck_indef_string,
    .array_start = ck_array, .indef_array_start = ck_indef,
    .map_start = ck_map, .indef_map_start = ck_indef_map,
    .tag = ck_tag,
    .float2 = ck_f2, .float4 = ck_f, .float8 = ck_d,
    .undefined = ck_leaf, .null = ck_leaf, .boolean = ck_b, .indef_break = ck_break,
};

int mdg_cbor_walk_item(const void *buf, size_t len, mdg_cbor_walk *w)
{
    check_state s = {.depth = 0, .left = {1}, .w = w};
    size_t off = 0;

    w->indefinite = len > 0 && (((const uint8_t *)buf)[0] & 0x1f) == 31;
    while (s.depth >= 0 && !s.bad) {
        s.avail = len - off;
        s.off = off;
        struct cbor_decoder_result r =
            cbor_stream_decode((cbor_data)buf + off, len - off, &check_callbacks, &s);
        if (r.status == CBOR_DECODER_NEDATA)
            return mdg_fail(MDG_EPROTO, "CBOR truncated at byte %zu", off);
        if (r.status != CBOR_DECODER_FINISHED)
            return mdg_fail(MDG_EPROTO, "malformed CBOR at byte %zu", off);
        off += r.read;
    }
    if (s.bad)
        return mdg_fail(MDG_EPROTO, "refused CBOR: %s", s.bad);
    w->halves = s.halves;
    w->used = off;
    return 0;
}

int mdg_cbor_check(const void *buf, size_t len)
{
    mdg_cbor_walk w = {0};
    int rc = mdg_cbor_walk_item(buf, len, &w);
    if (rc == 0 && w.used != len)
        return mdg_fail(MDG_EPROTO, "trailing bytes after CBOR item");
    return rc;
}

int mdg_cbor_item_len(const void *buf, size_t len, size_t *used)
{
    mdg_cbor_walk w = {0};
    int rc = mdg_cbor_walk_item(buf, len, &w);
    *used = w.used;
    return rc;
}
