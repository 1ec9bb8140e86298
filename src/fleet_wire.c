/* fleet_wire.c - one message between brokers of a fleet as a NATS
 * payload (docs/fleet.md, "On the wire"):
 *
 *   "MF" 1 | sender's public key (32) | nonce (24) | crypto_box of:
 *       sender's incarnation (8, little-endian)
 *       receiver's incarnation as the sender knows it (8; 0: unknown)
 *       flags (1: bit 0, a bulk follows the head)
 *       head length (4, little-endian) | head frame (wire.h) | bulk
 *
 * The box (libsodium's crypto_box_easy with the pair's precomputed key)
 * both encrypts and proves that the holder of the sender's secret key
 * wrote it for this receiver; the head frame is the project's own wire, so
 * the same decoder (mdg_inbound_next) reads it. */
#include "fleet.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC_LEN 3
#define PREFIX_LEN (MAGIC_LEN + MDG_KEY_BYTES + crypto_box_NONCEBYTES)
#define PLAIN_HEAD (8 + 8 + 1 + 4)

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

const uint8_t *fleet_wire_sender(const void *data, size_t len)
{
    const uint8_t *d = data;
    if (len < PREFIX_LEN + crypto_box_MACBYTES + PLAIN_HEAD || d[0] != 'M' || d[1] != 'F' ||
        d[2] != FLEET_WIRE_VERSION)
        return NULL;
    return d + MAGIC_LEN;
}

int fleet_wire_seal(const uint8_t *shared, const uint8_t sender_pk[MDG_KEY_BYTES], uint64_t src_inc,
                    uint64_t dst_inc, const void *head, size_t head_len, const void *bulk, size_t bulk_len,
                    uint8_t **out, size_t *out_len)
{
    size_t plain_len = PLAIN_HEAD + head_len + bulk_len;
    uint8_t *msg = head_len <= UINT32_MAX ? malloc(PREFIX_LEN + crypto_box_MACBYTES + plain_len) : NULL;
    if (!msg)
        return mdg_fail(MDG_ENOMEM, "out of memory sealing a fleet message");
    /* the plain text is laid out where its box goes and sealed in place
     * (libsodium's _easy functions allow it): one buffer, one copy */
    uint8_t *plain = msg + PREFIX_LEN + crypto_box_MACBYTES;
    put_u64(plain, src_inc);
    put_u64(plain + 8, dst_inc);
    plain[16] = bulk ? 1 : 0;
    for (int i = 0; i < 4; i++)
        plain[17 + i] = (uint8_t)(head_len >> (8 * i));
    memcpy(plain + PLAIN_HEAD, head, head_len);
    if (bulk_len)
        memcpy(plain + PLAIN_HEAD + head_len, bulk, bulk_len);
    msg[0] = 'M';
    msg[1] = 'F';
    msg[2] = FLEET_WIRE_VERSION;
    memcpy(msg + MAGIC_LEN, sender_pk, MDG_KEY_BYTES);
    uint8_t *nonce = msg + MAGIC_LEN + MDG_KEY_BYTES;
    randombytes_buf(nonce, crypto_box_NONCEBYTES);
    crypto_box_easy_afternm(msg + PREFIX_LEN, plain, plain_len, nonce, shared);
    *out = msg;
    *out_len = PREFIX_LEN + crypto_box_MACBYTES + plain_len;
    return 0;
}

/* An opened payload's plain text, one buffer that the head and the bulk
 * frames point into (no copy of either): freed when both are closed,
 * perhaps on libzmq's I/O thread once the bulk is sent on. */
typedef struct opened {
    atomic_int refs;
    uint8_t plain[];
} opened;

static void release_opened(void *data, void *hint)
{
    (void)data;
    opened *o = hint;
    if (atomic_fetch_sub(&o->refs, 1) == 1)
        free(o);
}

/* A frame of len bytes at data, inside o: 0, or -1 (out of memory) with
 * o's reference for it dropped. */
static int frame_in(zmq_msg_t *part, opened *o, uint8_t *data, size_t len)
{
    if (zmq_msg_init_data(part, data, len, release_opened, o) == 0)
        return 0;
    release_opened(data, o);
    return -1;
}

int fleet_wire_open(const uint8_t *shared, const void *data, size_t len, fleet_envelope *env)
{
    const uint8_t *d = data;
    memset(env, 0, sizeof *env);
    if (!fleet_wire_sender(data, len))
        return mdg_fail(MDG_EPROTO, "not a fleet message (%zu bytes)", len);
    size_t plain_len = len - PREFIX_LEN - crypto_box_MACBYTES;
    opened *o = malloc(sizeof *o + plain_len);
    if (!o)
        return mdg_fail(MDG_ENOMEM, "out of memory opening a fleet message");
    uint8_t *plain = o->plain;
    if (crypto_box_open_easy_afternm(plain, d + PREFIX_LEN, len - PREFIX_LEN, d + MAGIC_LEN + MDG_KEY_BYTES,
                                     shared) != 0) {
        free(o);
        return mdg_fail(MDG_EPROTO, "a fleet message that does not open with its sender's key (forged or damaged)");
    }
    size_t head_len = (size_t)plain[17] | (size_t)plain[18] << 8 | (size_t)plain[19] << 16 | (size_t)plain[20] << 24;
    bool has_bulk = plain[16] & 1;
    if (head_len > plain_len - PLAIN_HEAD || head_len == 0 || (plain[16] & ~1u) ||
        (!has_bulk && head_len != plain_len - PLAIN_HEAD)) {
        free(o);
        return mdg_fail(MDG_EPROTO, "a fleet message with a bad layout");
    }
    env->src_inc = get_u64(plain);
    env->dst_inc = get_u64(plain + 8);
    mdg_frames *f = &env->frames;
    zmq_msg_init(&f->part[0]);
    f->n = 1;
    atomic_init(&o->refs, has_bulk ? 2 : 1); /* one for each frame */
    int rc = frame_in(&f->part[1], o, plain + PLAIN_HEAD, head_len);
    if (rc == 0)
        f->n = 2;
    else if (has_bulk)
        release_opened(NULL, o); /* the bulk's frame will not be made */
    if (rc == 0 && has_bulk && (rc = frame_in(&f->part[2], o, plain + PLAIN_HEAD + head_len,
                                               plain_len - PLAIN_HEAD - head_len)) == 0)
        f->n = 3;
    if (rc != 0) {
        mdg_frames_close(f);
        return mdg_fail(MDG_ENOMEM, "out of memory opening a fleet message");
    }
    return 0;
}
