/* wire.c - encoding and decoding of native frames, with libcbor.
 *
 * Everything from the network passes mdg_wire_check_cbor first: it walks the
 * bytes with libcbor's streaming decoder and refuses what could make the
 * loader allocate or recurse without bound (huge declared lengths, deep
 * nesting), so that cbor_load only ever sees sane input. */
#include "wire.h"

#include "internal.h"
#include "params.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char *mdg_kind_name(int kind)
{
    static const char *names[] = {"?", "hello", "welcome", "command", "reply", "error", "bye", "ack"};
    return kind >= 1 && kind <= MDG_K_MAX ? names[kind] : "?";
}

int mdg_header_set_command(mdg_header *h, const char *command)
{
    size_t n = command ? strlen(command) : 0;
    if (n > MDG_MAX_COMMAND)
        return mdg_fail(MDG_EINVAL, "command name longer than %d bytes", MDG_MAX_COMMAND);
    memcpy(h->command, command ? command : "", n);
    h->command[n] = '\0';
    h->command_len = (uint8_t)n;
    return 0;
}

size_t mdg_wire_encode_header(const mdg_header *h, uint8_t *buf, size_t cap)
{
    size_t n = 0;
#define ENC(call)                   \
    do {                            \
        size_t w = (call);          \
        if (!w)                     \
            return 0;               \
        n += w;                     \
    } while (0)
    ENC(cbor_encode_array_start(7, buf + n, cap - n));
    ENC(cbor_encode_uint(MDG_WIRE_VERSION, buf + n, cap - n));
    ENC(cbor_encode_uint(h->kind, buf + n, cap - n));
    ENC(cbor_encode_uint(h->seq, buf + n, cap - n));
    ENC(cbor_encode_uint(h->ack, buf + n, cap - n));
    ENC(cbor_encode_uint(h->corr, buf + n, cap - n));
    ENC(cbor_encode_string_start(h->command_len, buf + n, cap - n));
    if (cap - n < h->command_len)
        return 0;
    memcpy(buf + n, h->command, h->command_len);
    n += h->command_len;
    ENC(cbor_encode_uint(h->flags, buf + n, cap - n));
#undef ENC
    return n;
}

/* ---------------------------------------------------------- header decode */

/* The header is decoded with the streaming decoder: one callback per field,
 * no allocation. Any item of the wrong type sets `bad`. */
typedef struct hdr_state {
    mdg_header *h;
    int field; /* -1 before the array start */
    const char *bad;
} hdr_state;

static void hdr_uint(hdr_state *s, uint64_t v)
{
    mdg_header *h = s->h;
    if (s->field < 0) { /* the first item is not the array */
        s->bad = "header must be an array of 7 fields";
        return;
    }
    switch (s->field++) {
    case 0:
        if (v == 1)
            s->bad = "protocol version 1: the peer is an older libmessidge (this one speaks version 2)";
        else if (v != MDG_WIRE_VERSION)
            s->bad = "unsupported protocol version";
        break;
    case 1:
        if (v < 1 || v > MDG_K_MAX)
            s->bad = "unknown message kind";
        h->kind = (uint8_t)v;
        break;
    case 2: h->seq = v; break;
    case 3: h->ack = v; break;
    case 4: h->corr = v; break;
    case 6:
        if (v > UINT32_MAX)
            s->bad = "flags out of range";
        h->flags = (uint32_t)v;
        break;
    default: s->bad = "field 'command' must be a text string";
    }
}

static void cb_u8(void *c, uint8_t v) { hdr_uint(c, v); }
static void cb_u16(void *c, uint16_t v) { hdr_uint(c, v); }
static void cb_u32(void *c, uint32_t v) { hdr_uint(c, v); }
static void cb_u64(void *c, uint64_t v) { hdr_uint(c, v); }

static void cb_string(void *c, cbor_data data, uint64_t len)
{
    hdr_state *s = c;
    if (s->field++ != 5) {
        s->bad = "a header field other than 'command' is a string";
        return;
    }
    if (len > MDG_MAX_COMMAND) {
        s->bad = "command name too long";
        return;
    }
    memcpy(s->h->command, data, len);
    s->h->command[len] = '\0';
    s->h->command_len = (uint8_t)len;
    if (memchr(s->h->command, '\0', len))
        s->bad = "command name contains NUL";
}

static void cb_array(void *c, uint64_t size)
{
    hdr_state *s = c;
    if (s->field != -1 || size != 7)
        s->bad = "header must be an array of 7 fields";
    s->field = 0;
}

static void cb_other(void *c)
{
    ((hdr_state *)c)->bad = "header field has the wrong type";
}
static void cb_other_u64(void *c, uint64_t v) { (void)v; cb_other(c); }
static void cb_other_data(void *c, cbor_data d, uint64_t l) { (void)d; (void)l; cb_other(c); }
static void cb_other_f(void *c, float v) { (void)v; cb_other(c); }
static void cb_other_d(void *c, double v) { (void)v; cb_other(c); }
static void cb_other_b(void *c, bool v) { (void)v; cb_other(c); }
static void cb_other_u8(void *c, uint8_t v) { (void)v; cb_other(c); }
static void cb_other_u16(void *c, uint16_t v) { (void)v; cb_other(c); }
static void cb_other_u32(void *c, uint32_t v) { (void)v; cb_other(c); }

static const struct cbor_callbacks hdr_callbacks = {
    .uint8 = cb_u8, .uint16 = cb_u16, .uint32 = cb_u32, .uint64 = cb_u64,
    .negint8 = cb_other_u8, .negint16 = cb_other_u16, .negint32 = cb_other_u32,
    .negint64 = cb_other_u64,
    .string = cb_string, .string_start = cb_other,
    .byte_string = cb_other_data, .byte_string_start = cb_other,
    .array_start = cb_array, .indef_array_start = cb_other,
    .map_start = cb_other_u64, .indef_map_start = cb_other,
    .tag = cb_other_u64,
    .float2 = cb_other_f, .float4 = cb_other_f, .float8 = cb_other_d,
    .undefined = cb_other, .null = cb_other, .boolean = cb_other_b, .indef_break = cb_other,
};

/* The header at the start of buf; *used gets its length. */
static int decode_header_at(const void *buf, size_t len, mdg_header *h, size_t *used)
{
    hdr_state s = {.h = h, .field = -1};
    size_t off = 0;

    memset(h, 0, sizeof *h);
    /* 8 items: the array start and its 7 fields */
    for (int i = 0; i < 8 && !s.bad; i++) {
        struct cbor_decoder_result r =
            cbor_stream_decode((cbor_data)buf + off, len - off, &hdr_callbacks, &s);
        if (r.status != CBOR_DECODER_FINISHED)
            return mdg_fail(MDG_EPROTO, "header is not valid CBOR (truncated or malformed)");
        off += r.read;
        if (i == 0 && s.field != 0)
            s.bad = "header must be an array of 7 fields";
    }
    if (!s.bad && off > MDG_MAX_HEADER)
        s.bad = "header too large";
    if (s.bad)
        return mdg_fail(MDG_EPROTO, "bad header: %s", s.bad);
    *used = off;
    return 0;
}

int mdg_wire_decode_header(const void *buf, size_t len, mdg_header *h)
{
    size_t used;
    if (len > MDG_MAX_HEADER)
        return mdg_fail(MDG_EPROTO, "header frame too large (%zu bytes)", len);
    int rc = decode_header_at(buf, len, h, &used);
    if (rc == 0 && used != len)
        return mdg_fail(MDG_EPROTO, "bad header: trailing bytes after the header");
    return rc;
}

static int cbor_item_len(const void *buf, size_t len, size_t *used);

int mdg_wire_read_head(const void *buf, size_t len, size_t *off, mdg_header *h, size_t *params_off,
                       size_t *params_len)
{
    size_t used;
    int rc = decode_header_at((const uint8_t *)buf + *off, len - *off, h, &used);
    if (rc)
        return rc;
    size_t ps = *off + used;
    if (h->flags & MDG_F_NEXT) {
        if ((rc = cbor_item_len((const uint8_t *)buf + ps, len - ps, params_len)) != 0)
            return rc;
        h->flags &= ~(uint32_t)MDG_F_NEXT;
    } else {
        *params_len = len - ps;
    }
    *params_off = ps;
    *off = ps + *params_len;
    return 0;
}

size_t mdg_wire_put_head(uint8_t *buf, size_t cap, const mdg_header *h, bool next, const void *params,
                         size_t params_len)
{
    mdg_header nh = *h;
    nh.flags = next ? nh.flags | MDG_F_NEXT : nh.flags & ~(uint32_t)MDG_F_NEXT;
    size_t n = mdg_wire_encode_header(&nh, buf, cap);
    if (!n || cap - n < params_len)
        return 0;
    if (params_len)
        memcpy(buf + n, params, params_len);
    return n + params_len;
}

int mdg_wire_peek_version(const void *buf, size_t len)
{
    const uint8_t *b = buf;
    /* a definite array of 7, then a small uint: 0x87 then 0x00..0x17 */
    return len >= 2 && b[0] == 0x87 && b[1] <= 0x17 ? b[1] : -1;
}

int mdg_wire_encode_head(const mdg_header *h, const void *params, size_t params_len, zmq_msg_t *out)
{
    uint8_t hbuf[MDG_MAX_HEADER];
    size_t hlen = mdg_wire_encode_header(h, hbuf, sizeof hbuf);
    if (!hlen)
        return mdg_fail(MDG_EINVAL, "header does not encode");
    if (zmq_msg_init_size(out, hlen + params_len) != 0)
        return mdg_fail(MDG_ENOMEM, "out of memory encoding a message");
    uint8_t *d = zmq_msg_data(out);
    memcpy(d, hbuf, hlen);
    if (params_len)
        memcpy(d + hlen, params, params_len);
    return 0;
}

/* -------------------------------------------------------------- CBOR check */

typedef struct check_state {
    uint64_t left[MDG_MAX_DEPTH + 1]; /* items left per open container; UINT64_MAX = indefinite */
    int depth;                       /* open containers; -1 when the top item is done */
    size_t avail;                    /* bytes not yet decoded */
    size_t items;                    /* seen so far, at most MDG_MAX_ITEMS */
    const char *bad;
    bool halves;                     /* saw a half-precision float */
} check_state;

/* One item (leaf or container start) fills a slot of the enclosing one. */
static void take_slot(check_state *s)
{
    if (s->depth < 0) {
        s->bad = "more than one item";
        return;
    }
    if (s->left[s->depth] != UINT64_MAX)
        s->left[s->depth]--;
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
}

static void ck_leaf(void *c) { leaf(c); }
static void ck_u8(void *c, uint8_t v) { (void)v; leaf(c); }
static void ck_u16(void *c, uint16_t v) { (void)v; leaf(c); }
static void ck_u32(void *c, uint32_t v) { (void)v; leaf(c); }
static void ck_u64(void *c, uint64_t v) { (void)v; leaf(c); }
static void ck_data(void *c, cbor_data d, uint64_t l) { (void)d; (void)l; leaf(c); }
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
    s->depth--;
    settle(s);
}

static const struct cbor_callbacks check_callbacks = {
    .uint8 = ck_u8, .uint16 = ck_u16, .uint32 = ck_u32, .uint64 = ck_u64,
    .negint8 = ck_u8, .negint16 = ck_u16, .negint32 = ck_u32, .negint64 = ck_u64,
    .string = ck_data, .string_start = ck_indef_string,
    .byte_string = ck_data, .byte_string_start = ck_indef_string,
    .array_start = ck_array, .indef_array_start = ck_indef,
    .map_start = ck_map, .indef_map_start = ck_indef,
    .tag = ck_tag,
    .float2 = ck_f2, .float4 = ck_f, .float8 = ck_d,
    .undefined = ck_leaf, .null = ck_leaf, .boolean = ck_b, .indef_break = ck_break,
};

/* The check of the one item at buf's start (*used: its length; trailing
 * bytes allowed), also telling whether half floats were seen. */
static int check_item(const void *buf, size_t len, bool *halves, size_t *used)
{
    check_state s = {.depth = 0, .left = {1}};
    size_t off = 0;

    while (s.depth >= 0 && !s.bad) {
        s.avail = len - off;
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
    *halves = s.halves;
    *used = off;
    return 0;
}

/* The check, also telling whether half floats were seen. */
static int check_cbor(const void *buf, size_t len, bool *halves)
{
    size_t used;
    int rc = check_item(buf, len, halves, &used);
    if (rc == 0 && used != len)
        return mdg_fail(MDG_EPROTO, "trailing bytes after CBOR item");
    return rc;
}

static int cbor_item_len(const void *buf, size_t len, size_t *used)
{
    bool halves;
    return check_item(buf, len, &halves, used);
}

int mdg_wire_check_cbor(const void *buf, size_t len)
{
    bool halves;
    return check_cbor(buf, len, &halves);
}

/* libcbor 0.8 re-encodes half floats lossily (subnormals lose digits, a
 * NaN loses its sign), so a value relayed by the broker would change.
 * Decoded halves become singles, which hold every half exactly and
 * re-encode bit for bit. Depth is bounded by the check. */
static int widen_halves(cbor_item_t **slot)
{
    cbor_item_t *it = *slot;
    switch (cbor_typeof(it)) {
    case CBOR_TYPE_FLOAT_CTRL:
        if (cbor_float_get_width(it) == CBOR_FLOAT_16) {
            cbor_item_t *w = cbor_build_float4(cbor_float_get_float2(it));
            if (!w)
                return MDG_ENOMEM;
            cbor_decref(slot);
            *slot = w;
        }
        return 0;
    case CBOR_TYPE_ARRAY: {
        cbor_item_t **h = cbor_array_handle(it);
        for (size_t i = 0; i < cbor_array_size(it); i++)
            if (widen_halves(&h[i]))
                return MDG_ENOMEM;
        return 0;
    }
    case CBOR_TYPE_MAP: {
        struct cbor_pair *h = cbor_map_handle(it);
        for (size_t i = 0; i < cbor_map_size(it); i++)
            if (widen_halves(&h[i].key) || widen_halves(&h[i].value))
                return MDG_ENOMEM;
        return 0;
    }
    case CBOR_TYPE_TAG: {
        cbor_item_t *inner = cbor_tag_item(it), *orig = inner; /* incref'd */
        int rc = widen_halves(&inner);
        if (!rc && inner != orig) {
            cbor_tag_set_item(it, inner); /* increfs inner, keeps orig's ref */
            cbor_decref(&orig);           /* the tag's old reference */
        }
        cbor_decref(&inner);
        return rc;
    }
    default:
        return 0;
    }
}

/* Order of text keys for the duplicate check: length, then bytes. */
static int key_cmp(const void *a, const void *b)
{
    const cbor_item_t *x = *(cbor_item_t *const *)a, *y = *(cbor_item_t *const *)b;
    size_t lx = cbor_string_length(x), ly = cbor_string_length(y);
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return lx ? memcmp(cbor_string_handle(x), cbor_string_handle(y), lx) : 0;
}

/* A key may appear once: with duplicates, our getters see the first value
 * while another decoder (or a forwarded copy) may keep the last, so a
 * sender could slip a forged "user" past the broker's stamp. Sorting keeps
 * this O(n log n) for maps with many keys. Keys are definite text (the
 * check above refuses indefinite strings). */
static int duplicate_key(const cbor_item_t *key)
{
    /* name the key in the error, printable bytes only (it is logged) */
    char name[65];
    size_t kl = cbor_string_length(key), j;
    const unsigned char *kd = cbor_string_handle(key);
    for (j = 0; j < kl && j < sizeof name - 1; j++)
        name[j] = kd[j] >= 0x20 && kd[j] < 0x7f ? (char)kd[j] : '?';
    name[j] = '\0';
    return mdg_fail(MDG_EPROTO, "duplicate params key '%s'", name);
}

static int check_unique_keys(const cbor_item_t *map)
{
    size_t n = cbor_map_size(map);
    if (n < 2)
        return 0;
    struct cbor_pair *pairs = cbor_map_handle(map);
    if (n <= 8) { /* the usual params: pairwise, no allocation */
        for (size_t i = 1; i < n; i++)
            for (size_t j = 0; j < i; j++)
                if (key_cmp(&pairs[i].key, &pairs[j].key) == 0)
                    return duplicate_key(pairs[i].key);
        return 0;
    }
    cbor_item_t **keys = malloc(n * sizeof *keys);
    if (!keys)
        return mdg_fail(MDG_ENOMEM, "out of memory decoding params");
    for (size_t i = 0; i < n; i++)
        keys[i] = pairs[i].key;
    qsort(keys, n, sizeof *keys, key_cmp);
    int rc = 0;
    for (size_t i = 1; i < n && !rc; i++)
        if (key_cmp(&keys[i - 1], &keys[i]) == 0)
            rc = duplicate_key(keys[i]);
    free(keys);
    return rc;
}

int mdg_wire_decode_params(const void *buf, size_t len, mdg_params **out)
{
    struct cbor_load_result res;
    bool halves = false;
    int rc = check_cbor(buf, len, &halves);
    if (rc)
        return rc;
    cbor_item_t *item = cbor_load(buf, len, &res);
    if (!item)
        return res.error.code == CBOR_ERR_MEMERROR
                   ? mdg_fail(MDG_ENOMEM, "out of memory decoding params")
                   : mdg_fail(MDG_EPROTO, "params are not valid CBOR");
    if (!cbor_isa_map(item)) {
        cbor_decref(&item);
        return mdg_fail(MDG_EPROTO, "params must be a map");
    }
    struct cbor_pair *pairs = cbor_map_handle(item);
    for (size_t i = 0; i < cbor_map_size(item); i++) {
        if (!cbor_isa_string(pairs[i].key)) {
            cbor_decref(&item);
            return mdg_fail(MDG_EPROTO, "params keys must be text strings");
        }
    }
    if ((rc = check_unique_keys(item)) != 0 || (halves && (rc = widen_halves(&item)) != 0)) {
        cbor_decref(&item);
        return rc == MDG_ENOMEM ? mdg_fail(rc, "out of memory decoding params") : rc;
    }
    *out = mdg_params_wrap(item);
    return *out ? 0 : MDG_ENOMEM;
}

static void free_cbor_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

int mdg_wire_encode_params(const mdg_params *p, zmq_msg_t *out)
{
    static const uint8_t empty_map = 0xa0;
    if (!p || mdg_params_count(p) == 0) {
        zmq_msg_init_size(out, 1);
        memcpy(zmq_msg_data(out), &empty_map, 1);
        return 0;
    }
    /* Typical params fit a stack buffer: one encoding pass and one zmq
     * buffer. libcbor 0.8's serialize_alloc starts at 32 bytes and encodes
     * everything again after each doubling, so it is only for large maps. */
    uint8_t stack[2048];
    size_t sn = cbor_serialize(mdg_params_map(p), stack, sizeof stack);
    if (sn) {
        if (zmq_msg_init_size(out, sn) != 0)
            return mdg_fail(MDG_ENOMEM, "cannot encode params");
        memcpy(zmq_msg_data(out), stack, sn);
        return 0;
    }
    unsigned char *data = NULL;
    size_t cap = 0, n = cbor_serialize_alloc(mdg_params_map(p), &data, &cap);
    if (!n) {
        free(data);
        return mdg_fail(MDG_ENOMEM, "cannot encode params");
    }
    if (zmq_msg_init_data(out, data, n, free_cbor_buf, NULL) != 0) {
        free(data);
        return mdg_fail(MDG_ENOMEM, "cannot encode params");
    }
    return 0;
}

/* ----------------------------------------------------------------- frames */

int mdg_frames_recv(void *sock, mdg_frames *f)
{
    zmq_msg_t extra;
    int more = 1;
    f->n = 0;
    f->dropped = 0;
    while (more) {
        zmq_msg_t *m = f->n < MDG_MAX_FRAMES ? &f->part[f->n] : &extra;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, f->n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            int e = errno;
            zmq_msg_close(m);
            mdg_frames_close(f);
            return e == EAGAIN ? MDG_EAGAIN : mdg_fail(MDG_ESYS, "receive: %s", zmq_strerror(e));
        }
        more = zmq_msg_more(m);
        if (m == &extra) {
            zmq_msg_close(m);
            f->dropped++;
        } else {
            f->n++;
        }
    }
    return 0;
}

void mdg_frames_close(mdg_frames *f)
{
    for (int i = 0; i < f->n; i++)
        zmq_msg_close(&f->part[i]);
    f->n = 0;
}

void mdg_frames_move(mdg_frames *dst, mdg_frames *src)
{
    for (int i = 0; i < src->n; i++) {
        zmq_msg_init(&dst->part[i]);
        zmq_msg_move(&dst->part[i], &src->part[i]);
        zmq_msg_close(&src->part[i]);
    }
    dst->n = src->n;
    dst->dropped = src->dropped;
    src->n = 0;
}

int mdg_wire_send(void *sock, const void *rid, size_t rid_len, const mdg_header *h,
                  zmq_msg_t *params, zmq_msg_t *bulk)
{
    zmq_msg_t head;
    int rc = mdg_wire_encode_head(h, zmq_msg_data(params), zmq_msg_size(params), &head);
    if (rc) {
        if (bulk)
            zmq_msg_close(bulk);
        return rc;
    }
    /* Only the first part can meet a full queue: then nothing is sent and
     * the caller keeps bulk to try again. */
    if (rid && zmq_send(sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        goto first;
    if (zmq_msg_send(&head, sock, (bulk ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&head);
        if (!rid)
            goto first;
        goto fail;
    }
    if (bulk && zmq_msg_send(bulk, sock, ZMQ_DONTWAIT) < 0)
        goto fail;
    return 0;
first:
    if (errno == EAGAIN) {
        zmq_msg_close(&head);
        return MDG_EAGAIN;
    }
    zmq_msg_close(&head);
fail:
    rc = errno == EAGAIN        ? MDG_EAGAIN
         : errno == EHOSTUNREACH ? mdg_fail(MDG_ECLOSED, "peer is not connected")
                                 : mdg_fail(MDG_ESYS, "send: %s", zmq_strerror(errno));
    if (bulk)
        zmq_msg_close(bulk);
    return rc;
}

int mdg_wire_send_head(void *sock, const void *rid, size_t rid_len, zmq_msg_t *head)
{
    if ((!rid || zmq_send(sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0) &&
        zmq_msg_send(head, sock, ZMQ_DONTWAIT) >= 0)
        return 0;
    if (errno == EAGAIN && !rid)
        return MDG_EAGAIN; /* nothing went: head is still the caller's */
    int rc = errno == EAGAIN        ? MDG_EAGAIN
             : errno == EHOSTUNREACH ? mdg_fail(MDG_ECLOSED, "peer is not connected")
                                     : mdg_fail(MDG_ESYS, "send: %s", zmq_strerror(errno));
    if (rc != MDG_EAGAIN)
        zmq_msg_close(head);
    return rc;
}
