/* fuzz_wire.c - libFuzzer target for everything that decodes bytes from
 * the network: the header decoder, a message's head frame (header, then
 * params), the CBOR pre-check, and the params decoder (with the text form
 * and a re-encode round trip).
 *
 * Run: fuzz_wire -max_total_time=60 CORPUS_DIR tests/fuzz-inputs
 * Properties checked beyond "no crash, no leak, no UB":
 *  - a decoded header re-encodes and decodes to the same fields;
 *  - a head frame's params start after its header, inside the frame, and
 *    a head made again of that header and those params decodes the same;
 *    a head frame of several messages (MDG_F_NEXT) reads message by
 *    message, each inside the frame;
 *  - mdg_params_decode never accepts what mdg_cbor_check refuses;
 *  - decoded params re-encode, decode again, and print the same text;
 *  - a Messidge 1.x frame that parses and opens in clear rebuilds into a
 *    frame with the same fields; opening under a key or reading it as a
 *    hello answer never crashes;
 *  - a fleet payload (fleet_wire.c) as it came never opens without its
 *    key; the input sealed as a payload's inside (so the layout behind the
 *    box is the fuzzer's) opens into frames that add up to what was
 *    sealed, or is refused. */
#include "cbor_check.h"
#include "fleet.h"
#include "inbound.h"
#include "legacy.h"
#include "params.h"
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fail(const char *what, const uint8_t *data, size_t size)
{
    fprintf(stderr, "fuzz_wire: %s (input of %zu bytes; last error: %s)\n", what, size,
            mdg_last_error());
    (void)data;
    abort();
}

static void header_round_trip(const uint8_t *data, size_t size)
{
    mdg_header h, again;
    uint8_t buf[MDG_MAX_HEADER];
    if (mdg_wire_decode_header(data, size, &h) != 0)
        return;
    if (h.kind < 1 || h.kind > MDG_K_MAX || h.command_len > MDG_MAX_COMMAND ||
        strlen(h.command) != h.command_len)
        fail("decoded header out of range", data, size);
    size_t n = mdg_wire_encode_header(&h, buf, sizeof buf);
    if (n == 0 || n > size) /* ours is minimal: never longer than what we read */
        fail("decoded header does not re-encode", data, size);
    if (mdg_wire_decode_header(buf, n, &again) != 0 || again.kind != h.kind ||
        again.seq != h.seq || again.ack != h.ack || again.corr != h.corr ||
        again.flags != h.flags || again.command_len != h.command_len ||
        memcmp(again.command, h.command, h.command_len) != 0)
        fail("header round trip differs", data, size);
}

/* Use the typed getters on every key, as handlers would. */
static void touch_params(mdg_params *p, const uint8_t *data, size_t size)
{
    cbor_item_t *map = mdg_params_map(p); /* what passed the checks must load */
    if (!map)
        fail("decoded params do not load as a libcbor tree", data, size);
    size_t n = cbor_map_size(map);
    struct cbor_pair *pairs = cbor_map_handle(map);
    for (size_t i = 0; i < n && i < 64; i++) {
        char key[64];
        size_t kl = cbor_string_length(pairs[i].key);
        if (kl >= sizeof key)
            continue;
        memcpy(key, cbor_string_handle(pairs[i].key), kl);
        key[kl] = '\0';
        const char *s;
        const uint8_t *b;
        size_t bl;
        int64_t iv;
        double d;
        bool bv;
        mdg_params_get_str(p, key, &s);
        mdg_params_get_bytes(p, key, &b, &bl);
        mdg_params_get_int(p, key, &iv);
        mdg_params_get_double(p, key, &d);
        mdg_params_get_bool(p, key, &bv);
    }
}

static void params_round_trip(const uint8_t *data, size_t size)
{
    int checked = mdg_cbor_check(data, size);
    mdg_params *p = NULL, *q = NULL;
    if (mdg_params_decode(data, size, &p) != 0) {
        if (p)
            fail("failed decode left params behind", data, size);
        return;
    }
    if (checked != 0)
        fail("mdg_params_decode accepted what mdg_cbor_check refused", data, size);
    char *text = mdg_params_to_text(p);
    if (!text)
        fail("no text for decoded params", data, size);
    touch_params(p, data, size);

    zmq_msg_t m;
    if (mdg_params_encode(p, &m) != 0)
        fail("decoded params do not re-encode", data, size);
    if (mdg_params_decode(zmq_msg_data(&m), zmq_msg_size(&m), &q) != 0)
        fail("re-encoded params do not decode", data, size);
    char *text2 = mdg_params_to_text(q);
    if (!text2 || strcmp(text, text2) != 0) {
        fprintf(stderr, "first:  %s\nsecond: %s\n", text, text2 ? text2 : "(null)");
        fail("params text differs after a round trip", data, size);
    }
    /* a params map that came off the wire can be changed like any other */
    mdg_params_set_str(q, "user", "stamped");
    mdg_params_remove(q, "session");
    zmq_msg_close(&m);
    free(text);
    free(text2);
    mdg_params_destroy(&p);
    mdg_params_destroy(&q);
}

static void legacy_round_trip(const uint8_t *data, size_t size)
{
    static const uint8_t key[MDG_LEGACY_KEY] = {1}, pk[MDG_KEY_BYTES] = {9}, sk[MDG_KEY_BYTES] = {7};
    uint8_t session_key[MDG_LEGACY_KEY], rid[MDG_LEGACY_MAX_RID];
    size_t rid_len;
    bool sealed;
    mdg_legacy_parse_welcome(data, size, pk, sk, &sealed, session_key, rid, &rid_len);

    mdg_legacy_frame f, again;
    uint8_t uuid[MDG_LEGACY_MAX_UUID];
    size_t uuid_len = mdg_legacy_peek_uuid(data, size, uuid);
    if (mdg_legacy_parse(data, size, &f) != 0)
        return;
    if (uuid_len != f.uuid_len || memcmp(uuid, f.uuid, uuid_len) != 0)
        fail("peek_uuid disagrees with parse", data, size);
    mdg_params *p = NULL;
    zmq_msg_t bulk, out;
    if (mdg_legacy_open(&f, key, &p, &bulk) == 0) /* a forged box must not open */
        fail("a box opened under a key no one used", data, size);
    zmq_msg_close(&bulk);
    if (mdg_legacy_open(&f, NULL, &p, &bulk) == 0) {
        touch_params(p, data, size);
        if (mdg_legacy_build(&out, NULL, f.nonce, f.nonce_len, f.command, f.command_len, f.uuid, f.uuid_len, p,
                             zmq_msg_data(&bulk), zmq_msg_size(&bulk)) != 0 ||
            mdg_legacy_parse(zmq_msg_data(&out), zmq_msg_size(&out), &again) != 0)
            fail("an opened 1.x frame does not rebuild", data, size);
        if (again.command_len != f.command_len || memcmp(again.command, f.command, f.command_len) != 0 ||
            again.uuid_len != f.uuid_len || memcmp(again.uuid, f.uuid, f.uuid_len) != 0 ||
            again.bulk_len != f.bulk_len || (f.bulk_len && memcmp(again.bulk, f.bulk, f.bulk_len) != 0))
            fail("1.x frame round trip differs", data, size);
        mdg_legacy_frame_free(&again);
        zmq_msg_close(&out);
        mdg_params_destroy(&p);
    }
    zmq_msg_close(&bulk);
    mdg_legacy_frame_free(&f);
}

/* The input as a head frame: its params, where the header says they
 * start, go through the params checks too. */
static void head_round_trip(const uint8_t *data, size_t size)
{
    mdg_header h, again;
    size_t at = 0, off = 0, len = 0, at2 = 0, off2 = 0, len2 = 0;
    zmq_msg_t head;
    if (mdg_wire_read_head(data, size, &at, &h, &off, &len) != 0)
        return;
    if (off == 0 || off > size || off > MDG_MAX_HEADER || len > size - off)
        fail("head frame's params out of range", data, size);
    params_round_trip(data + off, len);
    if (mdg_wire_encode_head(&h, data + off, len, &head) != 0)
        fail("decoded head does not re-encode", data, size);
    if (mdg_wire_read_head(zmq_msg_data(&head), zmq_msg_size(&head), &at2, &again, &off2, &len2) != 0 ||
        again.kind != h.kind || again.seq != h.seq || again.corr != h.corr || len2 != len ||
        memcmp((const uint8_t *)zmq_msg_data(&head) + off2, data + off, len) != 0)
        fail("head round trip differs", data, size);
    zmq_msg_close(&head);
}

/* The input as a head frame of several messages: each read in turn, its
 * params inside the frame and after its header, until the frame ends or
 * one does not read. */
/* The walk's marks, as mdg_inbound keeps them. */
typedef struct marks {
    uint32_t at[MDG_INBOUND_MARKS];
    size_t n;
} marks;

static void keep_mark(void *arg, size_t off)
{
    marks *m = arg;
    if (m->n < MDG_INBOUND_MARKS)
        m->at[m->n] = (uint32_t)off;
    m->n++;
}

/* Params decoded from the walk that found their end are the params
 * decoded afresh: both refuse, or both give the same bytes. */
static void walked_same(const uint8_t *data, size_t size, const uint8_t *p, size_t len, const marks *m,
                        const mdg_cbor_walk *w)
{
    mdg_params *a = NULL, *b = NULL;
    if (m->n > MDG_INBOUND_MARKS)
        return;
    int ra = mdg_params_decode(p, len, &a), rb = mdg_params_decode_walked(p, len, m->at, m->n, w->halves,
                                                                            w->indefinite, &b);
    if ((ra == 0) != (rb == 0))
        fail("params decoded from the walk's marks differ from params decoded afresh", data, size);
    if (ra == 0) {
        size_t na = mdg_params_encoded_size(a), nb = mdg_params_encoded_size(b);
        uint8_t *ea = malloc(na), *eb = malloc(nb);
        if (!ea || !eb)
            abort();
        mdg_params_write(a, ea, na);
        mdg_params_write(b, eb, nb);
        if (na != nb || memcmp(ea, eb, na) != 0)
            fail("params decoded from the walk's marks encode differently", data, size);
        free(ea);
        free(eb);
    }
    mdg_params_destroy(&a);
    mdg_params_destroy(&b);
}

static void batch_walk(const uint8_t *data, size_t size)
{
    size_t off = 0, poff, plen;
    mdg_header h;
    for (int n = 0; off < size && n < 1000; n++) {
        size_t at = off;
        marks m = {.n = 0};
        mdg_cbor_walk w = {.mark = keep_mark, .arg = &m};
        if (mdg_wire_read_head_walk(data, size, &off, &h, &poff, &plen, &w) != 0)
            return;
        if (poff <= at || poff > size || plen > size - poff || off != poff + plen || (h.flags & MDG_F_NEXT))
            fail("batched message out of its frame", data, size);
        params_round_trip(data + poff, plen);
        if (off < size) /* walked: not the last */
            walked_same(data, size, data + poff, plen, &m, &w);
    }
}

/* A fleet payload: the input as it came, then the input as the sealed
 * inside of one from a fixed member. */
static void fleet_open(const uint8_t *data, size_t size)
{
    static uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES];
    static uint8_t shared[crypto_box_BEFORENMBYTES];
    static bool ready;
    if (!ready) {
        if (sodium_init() < 0)
            abort();
        crypto_box_keypair(pk, sk);
        if (crypto_box_beforenm(shared, pk, sk) != 0)
            abort();
        ready = true;
    }
    fleet_envelope env;
    if (fleet_wire_open(shared, data, size, &env) == 0)
        fail("a fleet payload opened without being sealed", data, size);
    size_t prefix = 3 + MDG_KEY_BYTES + crypto_box_NONCEBYTES;
    uint8_t *msg = malloc(prefix + crypto_box_MACBYTES + size);
    if (!msg)
        return;
    memcpy(msg, "MF\1", 3);
    memcpy(msg + 3, pk, MDG_KEY_BYTES);
    memset(msg + 3 + MDG_KEY_BYTES, 7, crypto_box_NONCEBYTES);
    crypto_box_easy_afternm(msg + prefix, data, size, msg + 3 + MDG_KEY_BYTES, shared);
    if (fleet_wire_open(shared, msg, prefix + crypto_box_MACBYTES + size, &env) == 0) {
        size_t got = 0;
        for (int i = 1; i < env.frames.n; i++)
            got += zmq_msg_size(&env.frames.part[i]);
        if (env.frames.n < 2 || got + 21 != size)
            fail("an opened fleet payload's frames do not add up", data, size);
        mdg_frames_close(&env.frames);
    }
    free(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    header_round_trip(data, size);
    head_round_trip(data, size);
    batch_walk(data, size);
    params_round_trip(data, size);
    legacy_round_trip(data, size);
    fleet_open(data, size);
    return 0;
}
