/* test_legacy_conn.c - the connection's legacy mode (opts.legacy): a C
 * user and a C node speaking Messidge 1.x, over real sockets.
 *
 * Part one: the Python 1.x broker stand-in (tests/legacy/peer.py broker,
 * written from the 1.x spec) with a C node serving divide and a stream, a
 * Python 1.x node, and a C user doing the guide's demo calls through it;
 * key files cross both ways (C writes the client pairs, Python the
 * broker's). Refused keys, a wrong pinned broker key, and a broker
 * restart follow.
 *
 * Part two: a fake 1.x broker made of a raw ROUTER and the codec, to check
 * the bytes the C user sends (hello, sealed params and bulk, reply uuids,
 * 'ka', no acks) and that garbage from the broker is dropped with a log
 * line while the link goes on. */
#include "legacy.h"
#include "legacy_peer.h"
#include "testutil.h"

#include <stdatomic.h>
#include <sodium.h>
#include <zmq.h>

#define LOC "127.0.0.1"
#define BIG (1 << 20)
#define STREAM_MORE 5 /* reply_more replies before the final one */

static char dir[] = "/tmp/mdg-legacy-conn.XXXXXX";

/* ------------------------------------------------------------ the C node */

/* Who the broker says called: its 'user' and 'session' params. */
static void h_whoami(mdg_msg *m, void *arg)
{
    (void)arg;
    const uint8_t *v;
    size_t len;
    mdg_params *r = mdg_params_new();
    if (mdg_params_get_bytes(mdg_msg_params(m), "user", &v, &len) == 0)
        mdg_params_set_bytes(r, "user", v, len);
    if (mdg_params_get_bytes(mdg_msg_params(m), "session", &v, &len) == 0)
        mdg_params_set_bytes(r, "session", v, len);
    mdg_msg_reply(m, r, NULL, 0);
}

/* A long-term channel: STREAM_MORE replies that say more follow, then the
 * final one. */
static void h_stream(mdg_msg *m, void *arg)
{
    (void)arg;
    for (int i = 0; i <= STREAM_MORE; i++) {
        mdg_params *r = mdg_params_new();
        mdg_params_set_int(r, "i", i);
        if (i < STREAM_MORE)
            mdg_msg_reply_more(m, r, NULL, 0);
        else
            mdg_msg_reply(m, r, NULL, 0);
    }
}

static const mdg_cmd node_cmds[] = {
    {"divide", t_divide, MDG_REQUIRE("dividend", "devisor"), MDG_CMD_NEEDS_REPLY},
    {"whoami", h_whoami, NULL, MDG_CMD_NEEDS_REPLY},
    {"stream", h_stream, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* ------------------------------------------------------------ the C user */

typedef struct user_state {
    pthread_mutex_t lock;
    atomic_int offers;
    uint8_t nodes[4][MDG_KEY_BYTES];
    int n_nodes;
    atomic_int ev[5];   /* events seen, by mdg_conn_event */
    atomic_int replies; /* callback replies seen */
    int64_t got[32];    /* their "i" (or -1 for an error) */
    atomic_int notes_cb;
    char notes_text[256];
} user_state;

static void h_offer(mdg_msg *m, void *arg)
{
    user_state *u = arg;
    cbor_item_t *list = mdg_params_get(mdg_msg_params(m), "nodes");
    pthread_mutex_lock(&u->lock);
    u->n_nodes = 0;
    for (size_t i = 0; list && cbor_isa_array(list) && i < cbor_array_size(list) && i < 4; i++) {
        cbor_item_t *pk = cbor_array_handle(list)[i];
        if (cbor_isa_bytestring(pk) && cbor_bytestring_length(pk) == MDG_KEY_BYTES)
            memcpy(u->nodes[u->n_nodes++], cbor_bytestring_handle(pk), MDG_KEY_BYTES);
    }
    pthread_mutex_unlock(&u->lock);
    atomic_fetch_add(&u->offers, 1);
}

static const mdg_cmd user_cmds[] = {
    {"resource_offer", h_offer, MDG_REQUIRE("nodes"), 0},
    MDG_CMD_END,
};

static void on_event(mdg_conn *c, int ev, const char *detail, void *arg)
{
    (void)c;
    (void)detail;
    user_state *u = arg;
    if (ev > 0 && ev < 5)
        atomic_fetch_add(&u->ev[ev], 1);
}

/* Each reply of a stream: its index, in arrival order. */
static void on_part(mdg_msg *r, void *arg)
{
    user_state *u = arg;
    int64_t i = -1;
    if (!mdg_msg_is_error(r))
        mdg_params_get_int(mdg_msg_params(r), "i", &i);
    int n = atomic_load(&u->replies);
    if (n < 32)
        u->got[n] = i;
    atomic_fetch_add(&u->replies, 1);
}

static void on_notes(mdg_msg *r, void *arg)
{
    user_state *u = arg;
    char *text = mdg_params_to_text(mdg_msg_params(r));
    snprintf(u->notes_text, sizeof u->notes_text, "%s", text ? text : "");
    free(text);
    atomic_fetch_add(&u->notes_cb, 1);
}

/* A call to node pk; the reply (or NULL) in *reply. */
static int call_node(mdg_conn *c, const uint8_t *pk, const char *cmd, mdg_params *p, const void *bulk,
                     size_t len, mdg_msg **reply)
{
    if (!p)
        p = mdg_params_new();
    mdg_params_set_bytes(p, "node", pk, MDG_KEY_BYTES);
    return mdg_conn_call(c, cmd, p, bulk, len, 10000, reply);
}

static mdg_params *divide_params(double a, double b)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_double(p, "dividend", a);
    mdg_params_set_double(p, "devisor", b);
    return p;
}

/* divide a/b on a node: the quotient (negative when the call failed: *rc
 * and mdg_last_error() say why) */
static double divide(mdg_conn *c, const uint8_t *pk, double a, double b, int *rc)
{
    mdg_msg *r = NULL;
    double q = -1;
    *rc = call_node(c, pk, "divide", divide_params(a, b), NULL, 0, &r);
    if (*rc == 0 && mdg_params_get_double(mdg_msg_params(r), "quotient", &q) != 0)
        q = -2;
    mdg_msg_destroy(&r);
    return q;
}

/* ------------------------------------------------------ the Python peers */

static int broker_port;

static void start_broker(py_peer *b, bool write_keys)
{
    char user_pub[300], cnode_pub[300], pynode_pub[300], port[16];
    snprintf(user_pub, sizeof user_pub, "%s/%s.pub", dir, LOC);
    snprintf(cnode_pub, sizeof cnode_pub, "%s/cnode.pub", dir);
    snprintf(pynode_pub, sizeof pynode_pub, "%s/pynode.pub", dir);
    snprintf(port, sizeof port, "%d", broker_port);
    const char *args[] = {"broker", "--prefix", dir, "--name", "broker", "--port", port,
                          "--user-pub", user_pub, "--node-pub", cnode_pub, pynode_pub,
                          write_keys ? "--write-keys" : NULL, NULL};
    if (py_start(b, args) != 0 || !py_wait_for(b, "READY ", 10000) || !py_wait_for(b, "\n", 2000)) {
        fprintf(stderr, "the Python 1.x broker did not start:\n%s\n", b->out);
        exit(2);
    }
    broker_port = atoi(strstr(b->out, "READY ") + 6);
}

static mdg_conn *start_conn(const uint8_t *server_pk, const mdg_keys *keys, const mdg_cmd *cmds, void *arg,
                            bool node)
{
    mdg_conn *c = NULL;
    mdg_conn_options o = {.port = broker_port, .legacy = node ? MDG_LEGACY_NODE : MDG_LEGACY_USER, .reflect_errors = node,
                          .reconnect_max_ms = 400};
    if (mdg_conn_new_with_keys(&c, LOC, server_pk, keys, &o) != 0) {
        fprintf(stderr, "cannot make a connection: %s\n", mdg_last_error());
        exit(2);
    }
    if (cmds)
        mdg_conn_register_commands(c, cmds, arg);
    CHECK_RC(mdg_conn_start(c), 0);
    return c;
}

/* ---------------------------------------- part one: the 1.x broker stand-in */

static void guide_demo(mdg_conn *user, user_state *us)
{
    mdg_msg *r = NULL;
    mdg_params *p = mdg_params_new();
    mdg_params_set_str(p, "note", "a legacy note");
    CHECK_RC(mdg_conn_send(user, "write_note", p, NULL, 0), 0);

    CHECK_RC(mdg_conn_call(user, "fetch_notes", NULL, NULL, 0, 10000, &r), 0);
    cbor_item_t *notes = r ? mdg_params_get(mdg_msg_params(r), "notes") : NULL;
    CHECK(notes && cbor_isa_array(notes) && cbor_array_size(notes) == 1);
    if (notes && cbor_isa_array(notes) && cbor_array_size(notes) == 1) {
        cbor_item_t *s = cbor_array_handle(notes)[0];
        CHECK(cbor_isa_string(s) && cbor_string_length(s) == 13 &&
              memcmp(cbor_string_handle(s), "a legacy note", 13) == 0);
    }
    mdg_msg_destroy(&r);

    CHECK_RC(mdg_conn_send_cb(user, "fetch_notes", NULL, NULL, 0, on_notes, us), 0);
    WAIT_FOR(atomic_load(&us->notes_cb) == 1, 5000);
    CHECK(atomic_load(&us->notes_cb) == 1 && strstr(us->notes_text, "a legacy note"));

    CHECK_RC(mdg_conn_call(user, "raise_exception", NULL, NULL, 0, 10000, &r), MDG_EREMOTE);
    CHECK(strcmp(mdg_last_error(), "raise_exception was called") == 0);
    CHECK(r == NULL);
}

/* The C node through the Python broker: divide, errors, who called,
 * 1 MiB of bulk each way, a long-term stream. */
static void via_c_node(mdg_conn *user, user_state *us, const uint8_t *cnode)
{
    int rc;
    mdg_msg *r = NULL;
    CHECK(divide(user, cnode, 10.0, 5.0, &rc) == 2.0);
    CHECK_RC(rc, 0);
    divide(user, cnode, 1.0, 0.0, &rc);
    CHECK_RC(rc, MDG_EREMOTE);
    CHECK(strcmp(mdg_last_error(), "Devisor cannot be zero") == 0);

    /* the session id is the rid the 1.x broker gave (it stamps it on calls) */
    size_t sid_len;
    const uint8_t *sid = mdg_conn_session_id(user, &sid_len);
    const uint8_t *v;
    size_t len;
    CHECK_RC(call_node(user, cnode, "whoami", NULL, NULL, 0, &r), 0);
    CHECK(sid_len == 5 && mdg_params_get_bytes(mdg_msg_params(r), "session", &v, &len) == 0 &&
          len == sid_len && memcmp(v, sid, len) == 0);
    mdg_msg_destroy(&r);

    uint8_t *big = malloc(BIG);
    randombytes_buf(big, BIG);
    CHECK_RC(call_node(user, cnode, "divide", divide_params(9.0, 3.0), big, BIG, &r), 0);
    const void *back = r ? mdg_msg_bulk(r, &len) : NULL;
    CHECK(back && len == BIG && memcmp(back, big, BIG) == 0);
    mdg_msg_destroy(&r);
    free(big);

    atomic_store(&us->replies, 0);
    mdg_params *p = mdg_params_new();
    mdg_params_set_bytes(p, "node", cnode, MDG_KEY_BYTES);
    CHECK_RC(mdg_conn_send_cb(user, "stream", p, NULL, 0, on_part, us), 0);
    WAIT_FOR(atomic_load(&us->replies) >= STREAM_MORE + 1, 5000);
    usleep(200000); /* any extra reply would be a routing bug */
    CHECK(atomic_load(&us->replies) == STREAM_MORE + 1);
    for (int i = 0; i <= STREAM_MORE && i < atomic_load(&us->replies); i++)
        CHECK(us->got[i] == i);
}

/* A Python 1.x node through the Python broker. */
static void via_py_node(mdg_conn *user, user_state *us, const uint8_t *pynode)
{
    int rc;
    mdg_msg *r = NULL;
    size_t len;
    CHECK_RC(call_node(user, pynode, "divide", divide_params(10.0, 5.0), "BULK", 4, &r), 0);
    double q = 0;
    const void *back = r ? mdg_msg_bulk(r, &len) : NULL;
    CHECK(r && mdg_params_get_double(mdg_msg_params(r), "quotient", &q) == 0 && q == 2.0);
    CHECK(back && len == 4 && memcmp(back, "BULK", 4) == 0);
    mdg_msg_destroy(&r);
    divide(user, pynode, 1.0, 0.0, &rc);
    CHECK_RC(rc, MDG_EREMOTE);
    CHECK(strcmp(mdg_last_error(), "Devisor cannot be zero") == 0);

    mdg_params *p = mdg_params_new();
    mdg_params_set_int(p, "dividend", 1);
    mdg_params_set_int(p, "devisor", 1);
    CHECK_RC(call_node(user, pynode, "divide", p, NULL, 0, &r), MDG_EREMOTE);
    CHECK(strcmp(mdg_last_error(), "Divide only takes two floats.") == 0);

    /* its long-term replies ('ka' each) all reach the callback */
    atomic_store(&us->replies, 0);
    p = mdg_params_new();
    mdg_params_set_bytes(p, "node", pynode, MDG_KEY_BYTES);
    mdg_params_set_int(p, "count", 4);
    CHECK_RC(mdg_conn_send_cb(user, "stream", p, NULL, 0, on_part, us), 0);
    WAIT_FOR(atomic_load(&us->replies) >= 4, 5000);
    usleep(200000);
    CHECK(atomic_load(&us->replies) == 4);
    for (int i = 0; i < 4 && i < atomic_load(&us->replies); i++)
        CHECK(us->got[i] == i);
}

/* Keys the broker does not know, a broker key that is not the pinned one,
 * and a native client at this 1.x broker. */
static void refusals(const uint8_t *bpk, const mdg_keys *ukeys)
{
    mdg_keys *stranger = NULL;
    mdg_keys_new(&stranger);
    mdg_conn *c = start_conn(bpk, stranger, NULL, NULL, false);
    CHECK_RC(mdg_conn_wait_until_ready(c, 5000), MDG_EAUTH);
    CHECK(strstr(mdg_last_error(), "Authentication failed") != NULL);
    mdg_conn_destroy(&c);
    mdg_keys_destroy(&stranger);

    uint8_t wrong[MDG_KEY_BYTES];
    randombytes_buf(wrong, sizeof wrong);
    c = start_conn(wrong, ukeys, NULL, NULL, false);
    CHECK_RC(mdg_conn_wait_until_ready(c, 5000), MDG_EHANDSHAKE);
    mdg_conn_destroy(&c);

    /* a native client (no legacy mode) pointed at the 1.x broker is told
     * that it speaks no CURVE, not that its key is wrong */
    mdg_conn_options native = {.port = broker_port};
    CHECK_RC(mdg_conn_new_with_keys(&c, LOC, bpk, ukeys, &native), 0);
    CHECK_RC(mdg_conn_start(c), 0);
    CHECK_RC(mdg_conn_wait_until_ready(c, 5000), MDG_EHANDSHAKE);
    CHECK(strstr(mdg_last_error(), "does not speak CURVE") != NULL);
    CHECK(strstr(mdg_last_error(), "not the one pinned") == NULL);
    mdg_conn_destroy(&c);
}

/* The broker restarts: both C peers come back by themselves (reported as
 * recovered: 1.x cannot tell), the user gets a new session (its offer)
 * and calls work again. */
static void restart(py_peer *broker, mdg_conn *user, user_state *us, const uint8_t *cnode)
{
    int offers = atomic_load(&us->offers), rc = -1;
    py_stop(broker);
    WAIT_FOR(atomic_load(&us->ev[MDG_EV_DISCONNECTED]) == 1, 5000);
    CHECK(atomic_load(&us->ev[MDG_EV_DISCONNECTED]) == 1);
    start_broker(broker, false); /* same port, the key files it wrote */
    WAIT_FOR(atomic_load(&us->ev[MDG_EV_RECOVERED]) == 1, 5000);
    CHECK(atomic_load(&us->ev[MDG_EV_RECOVERED]) == 1);
    WAIT_FOR(atomic_load(&us->offers) > offers, 5000);
    CHECK(atomic_load(&us->offers) > offers);
    for (int i = 0; i < 50 && rc != 0; i++) { /* until the node is back too */
        if (divide(user, cnode, 8.0, 2.0, &rc) != 4.0 && rc == 0)
            rc = -1;
        if (rc)
            usleep(100000);
    }
    CHECK_RC(rc, 0);
}

static void with_python_broker(void)
{
    mdg_keys *ukeys = NULL, *cnkeys = NULL, *pykeys = NULL, *bkeys = NULL;
    py_peer broker, pynode;
    char spk_file[300], port[16];
    user_state us = {.lock = PTHREAD_MUTEX_INITIALIZER};

    /* C writes the clients' key pairs; Python reads them */
    mdg_keys_new(&ukeys);
    mdg_keys_new(&cnkeys);
    mdg_keys_new(&pykeys);
    CHECK_RC(mdg_keys_save(ukeys, LOC, dir), 0);
    CHECK_RC(mdg_keys_save(cnkeys, "cnode", dir), 0);
    CHECK_RC(mdg_keys_save(pykeys, "pynode", dir), 0);
    start_broker(&broker, true);
    /* Python wrote the broker's pair; C reads it and pins its pk */
    CHECK_RC(mdg_keys_load(&bkeys, "broker", dir), 0);
    if (!bkeys)
        exit(2);
    const uint8_t *bpk = mdg_keys_public(bkeys);
    CHECK_RC(mdg_server_pk_save(bpk, LOC, dir), 0);

    mdg_conn *cnode = start_conn(bpk, cnkeys, node_cmds, NULL, true);
    CHECK_RC(mdg_conn_wait_until_ready(cnode, 10000), 0);
    snprintf(spk_file, sizeof spk_file, "%s/broker.pub", dir);
    snprintf(port, sizeof port, "%d", broker_port);
    const char *nargs[] = {"node", "--prefix", dir, "--name", "pynode", "--server-pk-file", spk_file,
                           "--location", LOC, "--port", port, NULL};
    CHECK(py_start(&pynode, nargs) == 0 && py_wait_for(&pynode, "node ready", 10000));

    /* the user from its key files, as mdg_conn_new reads them */
    mdg_conn *user = NULL;
    mdg_conn_options o = {.port = broker_port, .legacy = MDG_LEGACY_USER, .reconnect_max_ms = 400};
    CHECK_RC(mdg_conn_new(&user, LOC, dir, &o), 0);
    if (!user)
        exit(2);
    mdg_conn_register_commands(user, user_cmds, &us);
    mdg_conn_set_event_handler(user, on_event, &us);
    CHECK_RC(mdg_conn_start(user), 0);
    CHECK_RC(mdg_conn_wait_until_ready(user, 10000), 0);
    WAIT_FOR(atomic_load(&us.ev[MDG_EV_CONNECTED]) == 1, 2000); /* the event follows READY */
    CHECK(atomic_load(&us.ev[MDG_EV_CONNECTED]) == 1);
    WAIT_FOR(atomic_load(&us.offers) == 1, 5000);
    CHECK(atomic_load(&us.offers) == 1 && us.n_nodes == 2);
    CHECK(memcmp(us.nodes[0], mdg_keys_public(cnkeys), MDG_KEY_BYTES) == 0);
    CHECK(memcmp(us.nodes[1], mdg_keys_public(pykeys), MDG_KEY_BYTES) == 0);

    guide_demo(user, &us);
    via_c_node(user, &us, mdg_keys_public(cnkeys));
    via_py_node(user, &us, mdg_keys_public(pykeys));
    refusals(bpk, ukeys);
    restart(&broker, user, &us, mdg_keys_public(cnkeys));

    mdg_conn_destroy(&user);
    mdg_conn_destroy(&cnode);
    py_stop(&pynode);
    py_stop(&broker);
    mdg_keys_destroy(&ukeys);
    mdg_keys_destroy(&cnkeys);
    mdg_keys_destroy(&pykeys);
    mdg_keys_destroy(&bkeys);
}

/* -------------------------------------------- part two: a fake 1.x broker */

typedef struct fake {
    void *ctx, *sock;
    uint8_t rid[256];
    size_t rid_len;
    uint8_t key[MDG_LEGACY_KEY]; /* the session key it gave */
} fake;

/* A fake broker bound on a free loopback port (returned). */
static int fake_open(fake *fk)
{
    char ep[64];
    size_t eplen = sizeof ep;
    memset(fk, 0, sizeof *fk);
    fk->ctx = zmq_ctx_new();
    fk->sock = zmq_socket(fk->ctx, ZMQ_ROUTER);
    CHECK(zmq_bind(fk->sock, "tcp://127.0.0.1:*") == 0);
    zmq_getsockopt(fk->sock, ZMQ_LAST_ENDPOINT, ep, &eplen);
    return atoi(strrchr(ep, ':') + 1);
}

static void fake_close(fake *fk)
{
    zmq_close(fk->sock);
    zmq_ctx_term(fk->ctx);
}

/* The next frame from the C user (its rid kept), or false after ms. */
static bool fake_recv(fake *fk, zmq_msg_t *frame, int ms)
{
    zmq_pollitem_t it = {.socket = fk->sock, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, ms) <= 0)
        return false;
    int n = zmq_recv(fk->sock, fk->rid, sizeof fk->rid, 0);
    fk->rid_len = n > 0 ? (size_t)n : 0;
    zmq_msg_init(frame);
    return zmq_msg_recv(frame, fk->sock, 0) >= 0;
}

/* Send one frame (taken) to the C user, with extra frames after it. */
static void fake_send(fake *fk, zmq_msg_t *frame, int extra)
{
    zmq_send(fk->sock, fk->rid, fk->rid_len, ZMQ_SNDMORE);
    zmq_msg_send(frame, fk->sock, extra ? ZMQ_SNDMORE : 0);
    for (int i = 0; i < extra; i++)
        zmq_send(fk->sock, "x", 1, i + 1 < extra ? ZMQ_SNDMORE : 0);
}

static void fake_send_raw(fake *fk, const void *data, size_t len)
{
    zmq_msg_t m;
    zmq_msg_init_size(&m, len);
    memcpy(zmq_msg_data(&m), data, len);
    fake_send(fk, &m, 0);
}

/* A sealed frame from the fake broker. */
static void fake_frame(fake *fk, const char *command, const char *uuid, mdg_params *p, const char *bulk)
{
    zmq_msg_t m;
    mdg_legacy_build(&m, fk->key, NULL, 0, command, strlen(command), uuid, strlen(uuid), p, bulk,
                     bulk ? strlen(bulk) : 0);
    mdg_params_destroy(&p);
    fake_send(fk, &m, 0);
}

/* Receive and open the user's next frame. */
static bool fake_expect(fake *fk, mdg_legacy_frame *lf, mdg_params **p, zmq_msg_t *bulk)
{
    zmq_msg_t m;
    bool ok = fake_recv(fk, &m, 5000) && mdg_legacy_parse(zmq_msg_data(&m), zmq_msg_size(&m), lf) == 0;
    zmq_msg_close(&m);
    if (ok && mdg_legacy_open(lf, fk->key, p, bulk) != 0) {
        mdg_legacy_frame_free(lf);
        ok = false;
    }
    return ok;
}

static bool field_is(const uint8_t *data, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(data, want, len) == 0;
}

static void h_ping(mdg_msg *m, void *arg)
{
    (void)arg;
    size_t len;
    const void *bulk = mdg_msg_bulk(m, &len);
    mdg_params *r = mdg_params_new();
    mdg_params_set_bool(r, "pong", true);
    mdg_msg_reply(m, r, bulk, len);
}

static void h_fail(mdg_msg *m, void *arg)
{
    (void)arg;
    mdg_msg_fail(m, "nope");
}

static void h_more(mdg_msg *m, void *arg)
{
    (void)arg;
    mdg_msg_reply_more(m, NULL, NULL, 0);
    mdg_msg_reply_more(m, NULL, NULL, 0);
    mdg_msg_reply(m, NULL, NULL, 0);
}

static atomic_int pinged;
static void h_pinged(mdg_msg *m, void *arg)
{
    (void)m;
    (void)arg;
    atomic_fetch_add(&pinged, 1);
}

/* A blocking call from a handler (a nested wait on the loop thread): what
 * else arrives meanwhile waits for the handler to return. */
static mdg_conn *fake_user;
static void h_nested(mdg_msg *m, void *arg)
{
    (void)arg;
    mdg_msg *r = NULL;
    int64_t v = -1;
    if (mdg_conn_call(fake_user, "inner", NULL, NULL, 0, 5000, &r) == 0)
        mdg_params_get_int(mdg_msg_params(r), "v", &v);
    mdg_msg_destroy(&r);
    mdg_params *p = mdg_params_new();
    mdg_params_set_int(p, "v", v);
    mdg_params_set_int(p, "pinged", atomic_load(&pinged));
    mdg_msg_reply(m, p, NULL, 0);
}

static const mdg_cmd fake_user_cmds[] = {
    {"ping", h_ping, NULL, 0},
    {"nested", h_nested, NULL, 0},
    {"fail", h_fail, NULL, 0},
    {"more", h_more, NULL, 0},
    {"pinged", h_pinged, NULL, 0},
    MDG_CMD_END,
};

static atomic_int notices;
static char notice_text[128];
static void on_error(const char *command, const char *text, void *arg)
{
    (void)command;
    (void)arg;
    snprintf(notice_text, sizeof notice_text, "%s", text);
    atomic_fetch_add(&notices, 1);
}

/* The hello, byte for byte (spec 2), and the welcome. */
static void fake_handshake(fake *fk, const mdg_keys *ukeys, const mdg_keys *fkeys)
{
    zmq_msg_t m;
    uint8_t want[54] = {0x85, 0x40, 0x44, 'a', 'u', 't', 'h', 0x40, 0xa2, 0x64, 'u', 's', 'e', 'r', 0x58, 0x20};
    memcpy(want + 16, mdg_keys_public(ukeys), 32);
    memcpy(want + 48, "\x63rid\x40\x40", 6);
    CHECK(fake_recv(fk, &m, 5000));
    CHECK(zmq_msg_size(&m) == sizeof want && memcmp(zmq_msg_data(&m), want, sizeof want) == 0);
    zmq_msg_close(&m);
    mdg_legacy_build_welcome(&m, mdg_keys_public(ukeys), mdg_keys_secret(fkeys), fk->key, "fake-rid", 8);
    fake_send(fk, &m, 0);
}

/* Garbage from the broker: each dropped with a log line, link kept. */
static void fake_garbage(fake *fk)
{
    uint8_t other[MDG_LEGACY_KEY];
    zmq_msg_t m;
    fake_send_raw(fk, "\xff\xff not CBOR", 11);
    fake_send_raw(fk, "\x83\x40\x40\x40", 4); /* a second welcome */
    memcpy(other, fk->key, sizeof other);
    other[0] ^= 1;
    mdg_legacy_build(&m, other, NULL, 0, "ping", 4, "", 0, NULL, NULL, 0); /* forged box */
    fake_send(fk, &m, 0);
    mdg_legacy_build(&m, NULL, NULL, 0, "ping", 4, "", 0, NULL, NULL, 0); /* plaintext on a sealed link */
    fake_send(fk, &m, 0);
    mdg_legacy_build(&m, fk->key, NULL, 0, "ping", 4, "", 0, NULL, NULL, 0);
    fake_send(fk, &m, 1); /* two frames */
    fake_frame(fk, "", "no-such-call", NULL, NULL);
    mdg_legacy_build(&m, fk->key, NULL, 0, "pi\0ng", 5, "", 0, NULL, NULL, 0);
    fake_send(fk, &m, 0);
    fake_frame(fk, "pinged", "", NULL, NULL); /* and then a valid command */
    WAIT_FOR(atomic_load(&pinged) == 1, 5000);
    CHECK(atomic_load(&pinged) == 1);
    CHECK(t_logged("1.x frame from the broker dropped: refused CBOR"));
    CHECK(t_logged("must be a 5-element array"));
    CHECK(t_logged("params do not open with the session key"));
    CHECK(t_logged("plaintext params on an encrypted 1.x session"));
    CHECK(t_logged("has 2 frames, not one"));
    CHECK(t_logged("neither a command nor a reply to one of our calls"));
    CHECK(t_logged("a command name over 255 bytes or with a NUL byte"));
}

/* Commands from the broker: replies carry their uuid, b'' or 'ka' as
 * command (never the bulk), sealed params and bulk, exceptions. */
static void fake_commands(fake *fk)
{
    mdg_legacy_frame lf;
    mdg_params *p = NULL;
    zmq_msg_t bulk;
    bool pong = false;
    const char *text = NULL;
    fake_frame(fk, "ping", "u-1", NULL, "abc");
    CHECK(fake_expect(fk, &lf, &p, &bulk));
    CHECK(lf.item && field_is(lf.command, lf.command_len, "") && field_is(lf.uuid, lf.uuid_len, "u-1"));
    CHECK(lf.item && lf.bulk_len == 3 + 16 && zmq_msg_size(&bulk) == 3 && memcmp(zmq_msg_data(&bulk), "abc", 3) == 0);
    CHECK(p && mdg_params_get_bool(p, "pong", &pong) == 0 && pong);
    mdg_legacy_frame_free(&lf);
    mdg_params_destroy(&p);
    zmq_msg_close(&bulk);

    fake_frame(fk, "fail", "u-2", NULL, NULL);
    CHECK(fake_expect(fk, &lf, &p, &bulk));
    CHECK(lf.item && field_is(lf.uuid, lf.uuid_len, "u-2"));
    CHECK(p && mdg_params_get_str(p, "exception", &text) == 0 && strcmp(text, "nope") == 0);
    mdg_legacy_frame_free(&lf);
    mdg_params_destroy(&p);
    zmq_msg_close(&bulk);

    /* a stream: 'ka' on every reply, the last too (the broker routes by it) */
    fake_frame(fk, "more", "u-3", NULL, NULL);
    for (int i = 0; i < 3; i++) {
        CHECK(fake_expect(fk, &lf, &p, &bulk));
        CHECK(lf.item && field_is(lf.uuid, lf.uuid_len, "u-3") && field_is(lf.command, lf.command_len, "ka"));
        mdg_legacy_frame_free(&lf);
        mdg_params_destroy(&p);
        zmq_msg_close(&bulk);
    }
}

static void fake_nested(fake *fk)
{
    mdg_legacy_frame lf;
    mdg_params *p = NULL;
    zmq_msg_t bulk;
    char uuid[MDG_LEGACY_MAX_UUID + 1] = "";
    int64_t v = 0, seen = -1;
    int before = atomic_load(&pinged);
    fake_frame(fk, "nested", "u-4", NULL, NULL);
    CHECK(fake_expect(fk, &lf, &p, &bulk));
    CHECK(lf.item && field_is(lf.command, lf.command_len, "inner") && lf.uuid_len > 0);
    if (lf.item)
        memcpy(uuid, lf.uuid, lf.uuid_len);
    mdg_legacy_frame_free(&lf);
    mdg_params_destroy(&p);
    zmq_msg_close(&bulk);
    fake_frame(fk, "pinged", "", NULL, NULL); /* deferred until h_nested returns */
    p = mdg_params_new();
    mdg_params_set_int(p, "v", 42);
    fake_frame(fk, "", uuid, p, NULL);
    p = NULL;
    CHECK(fake_expect(fk, &lf, &p, &bulk));
    CHECK(lf.item && field_is(lf.uuid, lf.uuid_len, "u-4"));
    CHECK(p && mdg_params_get_int(p, "v", &v) == 0 && v == 42);
    CHECK(p && mdg_params_get_int(p, "pinged", &seen) == 0 && seen == before);
    mdg_legacy_frame_free(&lf);
    mdg_params_destroy(&p);
    zmq_msg_close(&bulk);
    WAIT_FOR(atomic_load(&pinged) == before + 1, 5000);
    CHECK(atomic_load(&pinged) == before + 1);
}

/* Calls from the user: sealed, a uuid only when replies are wanted, every
 * reply to a callback call delivered, exceptions as MDG_EREMOTE. */
static void fake_calls(fake *fk, mdg_conn *user, user_state *us)
{
    mdg_legacy_frame lf;
    mdg_params *p = NULL, *q;
    zmq_msg_t bulk;
    char uuid[MDG_LEGACY_MAX_UUID + 1] = "";
    const char *note = NULL;

    p = mdg_params_new();
    mdg_params_set_str(p, "note", "n");
    CHECK_RC(mdg_conn_send(user, "write_note", p, "SECRETBULK", 10), 0);
    p = NULL;
    CHECK(fake_expect(fk, &lf, &p, &bulk));
    CHECK(lf.item && field_is(lf.command, lf.command_len, "write_note") && lf.uuid_len == 0);
    CHECK(lf.item && lf.nonce_len == 24 && lf.bulk_len == 10 + 16 && cbor_isa_bytestring(lf.params));
    for (size_t i = 0; lf.item && i + 10 <= lf.bulk_len; i++) /* sealed: not in clear */
        CHECK(memcmp(lf.bulk + i, "SECRETBULK", 10) != 0);
    CHECK(p && mdg_params_get_str(p, "note", &note) == 0 && strcmp(note, "n") == 0);
    mdg_legacy_frame_free(&lf);
    mdg_params_destroy(&p);
    zmq_msg_close(&bulk);

    atomic_store(&us->replies, 0);
    CHECK_RC(mdg_conn_send_cb(user, "count", NULL, NULL, 0, on_part, us), 0);
    CHECK(fake_expect(fk, &lf, &p, &bulk));
    CHECK(lf.item && lf.uuid_len > 0 && lf.uuid_len <= MDG_LEGACY_MAX_UUID);
    if (lf.item)
        memcpy(uuid, lf.uuid, lf.uuid_len);
    mdg_legacy_frame_free(&lf);
    mdg_params_destroy(&p);
    zmq_msg_close(&bulk);
    char long_bulk[301]; /* 1.x replies carry their bulk in the command field, however long */
    memset(long_bulk, 'b', 300);
    long_bulk[300] = '\0';
    for (int i = 0; i < 3; i++) { /* 1.x cannot mark the last: all reach the callback */
        q = mdg_params_new();
        mdg_params_set_int(q, "i", i);
        fake_frame(fk, i == 1 ? long_bulk : "", uuid, q, NULL);
    }
    q = mdg_params_new();
    mdg_params_set_str(q, "exception", "late failure");
    fake_frame(fk, "", uuid, q, NULL);
    WAIT_FOR(atomic_load(&us->replies) == 4, 5000);
    CHECK(atomic_load(&us->replies) == 4 && us->got[0] == 0 && us->got[1] == 1 && us->got[2] == 2 &&
          us->got[3] == -1);

    t_call bc;
    t_call_start(&bc, user, "boom", NULL, 5000);
    CHECK(fake_expect(fk, &lf, &p, &bulk));
    snprintf(uuid, sizeof uuid, "%.*s", lf.item ? (int)lf.uuid_len : 0, lf.item ? (const char *)lf.uuid : "");
    mdg_legacy_frame_free(&lf);
    mdg_params_destroy(&p);
    zmq_msg_close(&bulk);
    q = mdg_params_new();
    mdg_params_set_str(q, "exception", "boom was called");
    fake_frame(fk, "", uuid, q, NULL);
    pthread_join(bc.t, NULL);
    CHECK_RC(bc.rc, MDG_EREMOTE);
    CHECK(strcmp(bc.text, "boom was called") == 0);

    /* an exception for nothing in particular: the error handler's */
    q = mdg_params_new();
    mdg_params_set_str(q, "exception", "Message parameters must be a dictionary.");
    fake_frame(fk, "", "", q, NULL);
    WAIT_FOR(atomic_load(&notices) == 1, 5000);
    CHECK(atomic_load(&notices) == 1 && strcmp(notice_text, "Message parameters must be a dictionary.") == 0);
}

/* Answered callback calls are kept for more replies, but at most
 * queue_limit of them: the oldest is forgotten with a log line. */
static void fake_linger_bound(fake *fk, mdg_conn *user, user_state *us, int limit)
{
    char first[MDG_LEGACY_MAX_UUID + 1] = "";
    atomic_store(&us->replies, 0);
    for (int i = 0; i <= limit; i++) {
        mdg_legacy_frame lf;
        mdg_params *p = NULL;
        zmq_msg_t bulk;
        CHECK_RC(mdg_conn_send_cb(user, "count", NULL, NULL, 0, on_part, us), 0);
        CHECK(fake_expect(fk, &lf, &p, &bulk));
        char uuid[MDG_LEGACY_MAX_UUID + 1] = "";
        if (lf.item)
            memcpy(uuid, lf.uuid, lf.uuid_len);
        if (i == 0)
            memcpy(first, uuid, sizeof first);
        mdg_legacy_frame_free(&lf);
        mdg_params_destroy(&p);
        zmq_msg_close(&bulk);
        fake_frame(fk, "", uuid, NULL, NULL);
    }
    WAIT_FOR(atomic_load(&us->replies) == limit + 1, 5000);
    CHECK(t_logged("answered 1.x calls kept for further replies: the oldest"));
    fake_frame(fk, "", first, NULL, NULL); /* the forgotten one: no callback */
    usleep(200000);
    CHECK(atomic_load(&us->replies) == limit + 1);
}

/* An unboxed welcome would turn a user's encryption off (and skip the
 * pinned key): refused; a node takes it, as 1.x nodes are plaintext. */
static void fake_unsealed_welcome(void)
{
    for (int node = 0; node < 2; node++) {
        fake fk;
        mdg_keys *ukeys = NULL, *fkeys = NULL;
        mdg_conn *c = NULL;
        mdg_keys_new(&ukeys);
        mdg_keys_new(&fkeys);
        mdg_conn_options o = {.port = fake_open(&fk), .legacy = node ? MDG_LEGACY_NODE : MDG_LEGACY_USER};
        CHECK_RC(mdg_conn_new_with_keys(&c, LOC, mdg_keys_public(fkeys), ukeys, &o), 0);
        CHECK_RC(mdg_conn_start(c), 0);
        zmq_msg_t m;
        CHECK(fake_recv(&fk, &m, 5000));
        zmq_msg_close(&m);
        mdg_legacy_build_welcome(&m, NULL, mdg_keys_secret(fkeys), fk.key, "rid", 3);
        fake_send(&fk, &m, 0);
        CHECK_RC(mdg_conn_wait_until_ready(c, 5000), node ? 0 : MDG_EHANDSHAKE);
        if (!node)
            CHECK(strstr(mdg_last_error(), "boxed us no session key") != NULL);
        mdg_conn_destroy(&c);
        fake_close(&fk);
        mdg_keys_destroy(&ukeys);
        mdg_keys_destroy(&fkeys);
    }
    mdg_conn_options bad = {.legacy = 3};
    mdg_keys *k = NULL;
    mdg_conn *c = NULL;
    mdg_keys_new(&k);
    CHECK_RC(mdg_conn_new_with_keys(&c, LOC, mdg_keys_public(k), k, &bad), MDG_EINVAL);
    mdg_keys_destroy(&k);
}

static void with_fake_broker(void)
{
    fake fk;
    mdg_keys *ukeys = NULL, *fkeys = NULL;
    user_state us = {.lock = PTHREAD_MUTEX_INITIALIZER};
    int limit = 4;
    mdg_keys_new(&ukeys);
    mdg_keys_new(&fkeys);
    broker_port = fake_open(&fk);

    mdg_conn *user = NULL;
    mdg_conn_options o = {.port = broker_port, .legacy = MDG_LEGACY_USER, .heartbeat_ms = 100, .queue_limit = limit,
                          .reflect_errors = true};
    CHECK_RC(mdg_conn_new_with_keys(&user, LOC, mdg_keys_public(fkeys), ukeys, &o), 0);
    if (!user)
        exit(2);
    fake_user = user;
    mdg_conn_register_commands(user, fake_user_cmds, NULL);
    mdg_conn_set_error_handler(user, on_error, NULL);
    CHECK_RC(mdg_conn_start(user), 0);
    fake_handshake(&fk, ukeys, fkeys);
    CHECK_RC(mdg_conn_wait_until_ready(user, 5000), 0);
    size_t sid_len;
    const uint8_t *sid = mdg_conn_session_id(user, &sid_len);
    CHECK(sid_len == 8 && memcmp(sid, "fake-rid", 8) == 0);

    fake_garbage(&fk);
    fake_commands(&fk);
    fake_nested(&fk);
    fake_calls(&fk, user, &us);
    fake_linger_bound(&fk, user, &us, limit);

    /* no acknowledgements nor keepalives in 1.x (heartbeat is 100 ms here) */
    zmq_msg_t m;
    CHECK(!fake_recv(&fk, &m, 500));

    mdg_conn_destroy(&user);
    fake_close(&fk);
    mdg_keys_destroy(&ukeys);
    mdg_keys_destroy(&fkeys);
}

int main(void)
{
    t_capture_log();
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    with_python_broker();
    with_fake_broker();
    fake_unsealed_welcome();
    char out[256];
    t_run(out, sizeof out, "rm -rf %s", dir);
    return t_done("test_legacy_conn");
}
