/* wire.c - encoding and decoding of native frames, with libcbor: headers
 * with the streaming decoder (no allocation), head frames of one or more
 * messages, and sending. Params are params.c's; the limits any CBOR from
 * the network is held to are cbor_check.c's. */
#include "wire.h"

#include "cbor_check.h"
#include "internal.h"

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

/* h with these flags (a message of a head frame has MDG_F_NEXT set or
 * cleared without a copy of its header). */
static size_t encode_header(const mdg_header *h, uint32_t flags, uint8_t *buf, size_t cap)
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
    ENC(cbor_encode_uint(flags, buf + n, cap - n));
#undef ENC
    return n;
}

size_t mdg_wire_encode_header(const mdg_header *h, uint8_t *buf, size_t cap)
{
    return encode_header(h, h->flags, buf, cap);
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

    /* every field the wire has (the command's bytes are written up to its NUL) */
    h->kind = 0;
    h->flags = 0;
    h->seq = h->ack = h->corr = 0;
    h->command_len = 0;
    h->command[0] = '\0';
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

int mdg_wire_read_head(const void *buf, size_t len, size_t *off, mdg_header *h, size_t *params_off,
                       size_t *params_len)
{
    return mdg_wire_read_head_walk(buf, len, off, h, params_off, params_len, NULL);
}

int mdg_wire_read_head_walk(const void *buf, size_t len, size_t *off, mdg_header *h, size_t *params_off,
                            size_t *params_len, mdg_cbor_walk *walk)
{
    size_t used;
    int rc = decode_header_at((const uint8_t *)buf + *off, len - *off, h, &used);
    if (rc)
        return rc;
    size_t ps = *off + used;
    if (h->flags & MDG_F_NEXT) {
        mdg_cbor_walk own = {0}, *w = walk ? walk : &own;
        if ((rc = mdg_cbor_walk_item((const uint8_t *)buf + ps, len - ps, w)) != 0)
            return rc;
        *params_len = w->used;
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
    size_t n = encode_header(h, next ? h->flags | MDG_F_NEXT : h->flags & ~(uint32_t)MDG_F_NEXT, buf, cap);
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
