/* test_nodes.c - nodes over real sockets: routing user calls to nodes by
 * public key, reply routing, long-term channels, resource offers, the
 * broker's own sends, and every bad input of the nodes issue. */
#include "internal.h"
#include "testutil.h"
#include "rawpeer.h"
#include "wire.h"

#include <stdatomic.h>
#include <zmq.h>

#define STREAM_PARTS 10000

/* ------------------------------------------------------------ the broker */

typedef struct world {
    atomic_int joined, left;
    atomic_int broker_cmd_seen;
} world;

static void *node_joined(mdg_broker *b, const uint8_t pk[32], void *arg)
{
    (void)b; (void)pk;
    world *w = arg;
    atomic_fetch_add(&w->joined, 1);
    return w;
}

static void node_left(mdg_broker *b, const uint8_t pk[32], void *data, void *arg)
{
    (void)b; (void)pk; (void)data;
    world *w = arg;
    atomic_fetch_add(&w->left, 1);
}

static void h_user_only(mdg_msg *m, void *arg)
{
    (void)arg;
    mdg_msg_reply(m, NULL, NULL, 0);
}

static void h_node_report(mdg_msg *m, void *arg)
{
    world *w = arg;
    const uint8_t *pk;
    size_t len;
    /* the broker stamps 'node' on messages from nodes, and no session */
    if (mdg_params_get_bytes(mdg_msg_params(m), "node", &pk, &len) == 0 && len == 32 &&
        !mdg_params_has(mdg_msg_params(m), "session"))
        atomic_fetch_add(&w->broker_cmd_seen, 1);
    mdg_msg_reply(m, NULL, NULL, 0);
}

static const mdg_cmd broker_cmds[] = {
    {"user_only", h_user_only, NULL, MDG_CMD_NEEDS_REPLY | MDG_CMD_USER_ONLY},
    {"node_report", h_node_report, NULL, MDG_CMD_NEEDS_REPLY | MDG_CMD_NODE_ONLY},
    MDG_CMD_END,
};

/* -------------------------------------------------------------- the node */

typedef struct node_state {
    atomic_int pushed; /* commands the broker sent us directly */
    mdg_msg *hung;     /* a call we never answer */
} node_state;

/* A long-term channel: many replies from another thread, then a final one. */
static void *stream_thread(void *arg)
{
    mdg_msg *m = arg;
    for (int i = 0; i < STREAM_PARTS; i++) {
        mdg_params *r = mdg_params_new();
        mdg_params_set_int(r, "i", i);
        if (i + 1 < STREAM_PARTS)
            mdg_msg_reply_more(m, r, NULL, 0);
        else
            mdg_msg_reply(m, r, NULL, 0);
    }
    mdg_msg_destroy(&m);
    return NULL;
}

static void h_stream(mdg_msg *m, void *arg)
{
    (void)arg;
    pthread_t t;
    pthread_create(&t, NULL, stream_thread, mdg_msg_keep(m));
    pthread_detach(t);
}

static void h_hang(mdg_msg *m, void *arg)
{
    node_state *ns = arg;
    ns->hung = mdg_msg_keep(m); /* never answered */
}

static void h_pushed(mdg_msg *m, void *arg)
{
    (void)m;
    node_state *ns = arg;
    atomic_fetch_add(&ns->pushed, 1);
}

static const mdg_cmd node_cmds[] = {
    {"divide", t_divide, MDG_REQUIRE("dividend", "devisor"), MDG_CMD_NEEDS_REPLY},
    {"whoami", t_whoami, NULL, MDG_CMD_NEEDS_REPLY},
    {"stream", h_stream, NULL, MDG_CMD_NEEDS_REPLY},
    {"hang", h_hang, NULL, MDG_CMD_NEEDS_REPLY},
    {"pushed", h_pushed, NULL, 0},
    MDG_CMD_END,
};

static mdg_conn *start_node(mdg_broker *b, const mdg_keys *bkeys, const mdg_keys *nkeys, node_state *ns)
{
    mdg_conn *c = NULL;
    mdg_conn_options o = {.port = mdg_broker_port(b), .reflect_errors = true};
    if (mdg_conn_new_with_keys(&c, "127.0.0.1", mdg_keys_public(bkeys), nkeys, &o) ||
        mdg_conn_register_commands(c, node_cmds, ns) || mdg_conn_start(c) ||
        mdg_conn_wait_until_ready(c, 5000)) {
        fprintf(stderr, "node failed to start: %s\n", mdg_last_error());
        exit(2);
    }
    return c;
}

/* -------------------------------------------------------------- the user */

typedef struct user_state {
    pthread_mutex_t lock;
    uint8_t offered[8][32];
    atomic_int n_offered, offers;
    atomic_int parts, out_of_order, finals, pushed;
} user_state;

static void h_offer(mdg_msg *m, void *arg)
{
    user_state *u = arg;
    cbor_item_t *list = mdg_params_get(mdg_msg_params(m), "nodes");
    pthread_mutex_lock(&u->lock);
    int n = 0;
    if (list && cbor_isa_array(list)) {
        for (size_t i = 0; i < cbor_array_size(list) && n < 8; i++) {
            cbor_item_t *it = cbor_array_get(list, i);
            if (cbor_isa_bytestring(it) && cbor_bytestring_length(it) == 32)
                memcpy(u->offered[n++], cbor_bytestring_handle(it), 32);
            cbor_decref(&it);
        }
    }
    atomic_store(&u->n_offered, n);
    pthread_mutex_unlock(&u->lock);
    atomic_fetch_add(&u->offers, 1);
}

static void h_user_pushed(mdg_msg *m, void *arg)
{
    (void)m;
    user_state *u = arg;
    atomic_fetch_add(&u->pushed, 1);
}

static const mdg_cmd user_cmds[] = {
    {"resource_offer", h_offer, MDG_REQUIRE("nodes"), 0},
    {"pushed", h_user_pushed, NULL, 0},
    MDG_CMD_END,
};

static void on_part(mdg_msg *reply, void *arg)
{
    user_state *u = arg;
    int64_t i = -1;
    mdg_params_get_int(mdg_msg_params(reply), "i", &i);
    if (i != atomic_load(&u->parts))
        atomic_fetch_add(&u->out_of_order, 1);
    atomic_fetch_add(&u->parts, 1);
    if (!mdg_msg_more(reply))
        atomic_fetch_add(&u->finals, 1);
}

static mdg_params *to_node(const uint8_t *pk, size_t len)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_bytes(p, "node", pk, len);
    return p;
}

/* A raw CURVE DEALER, to say what a well-behaved connection never would. */
static void *raw_connect(void *ctx, const mdg_broker *b, const mdg_keys *bkeys, const mdg_keys *keys)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    char ep[64];
    int linger = 0;
    zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, mdg_keys_public(bkeys), 32);
    zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, mdg_keys_public(keys), 32);
    zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, mdg_keys_secret(keys), 32);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", mdg_broker_port(b));
    zmq_connect(s, ep);
    return s;
}

static void raw_send(void *s, int kind, uint64_t seq, uint64_t corr, const char *cmd,
                     const void *params, size_t plen)
{
    mdg_header h = {.kind = (uint8_t)kind, .seq = seq, .corr = corr};
    zmq_msg_t head;
    mdg_header_set_command(&h, cmd);
    mdg_wire_encode_head(&h, params, plen, &head);
    zmq_msg_send(&head, s, 0);
}

/* Each raw socket's reader: a frame may hold several messages. */
static struct {
    void *sock;
    t_wire_reader rd;
} readers[4];

static t_wire_reader *reader_of(void *s)
{
    for (int i = 0; i < 4; i++)
        if (readers[i].sock == s)
            return &readers[i].rd;
    for (int i = 0; i < 4; i++)
        if (!readers[i].sock) {
            readers[i].sock = s;
            return &readers[i].rd;
        }
    fprintf(stderr, "test_nodes: more raw sockets than readers\n");
    exit(2);
}

/* Receive until a message of `kind` (or timeout); returns its header. */
static bool raw_recv(void *s, int kind, mdg_header *h, char *params_text, size_t text_len, int ms)
{
    int64_t end = mdg_now_ms() + ms;
    while (mdg_now_ms() < end) {
        mdg_inbound in;
        int64_t left = end - mdg_now_ms();
        if (t_wire_next(reader_of(s), s, &in, left > 0 ? (int)left : 0) != 0)
            continue;
        *h = in.h;
        bool ok = h->kind == kind;
        if (ok && params_text) {
            mdg_params *p = NULL;
            params_text[0] = '\0';
            if (mdg_inbound_take_params(&in, &p) == 0) {
                char *t = mdg_params_to_text(p);
                snprintf(params_text, text_len, "%s", t ? t : "");
                free(t);
                mdg_params_destroy(&p);
            }
        }
        mdg_inbound_close(&in);
        if (ok)
            return true;
    }
    return false;
}

/* A raw socket closed: its reader goes too. */
static void raw_closed(void *s)
{
    for (int i = 0; i < 4; i++)
        if (readers[i].sock == s) {
            t_wire_reader_close(&readers[i].rd);
            readers[i].sock = NULL;
        }
}

/* Forward ids are not handed out again by another broker (a restarted
 * broker process, here a second broker object): a node still answering a
 * call of the broker that has gone never names a call of the next one.
 * They used to start at 1 in every broker, so after a restart a node's
 * late replies to its old call went to another caller's first call. */
typedef struct answers {
    atomic_int n, stale;
} answers;

static void on_answer(mdg_msg *reply, void *arg)
{
    answers *a = arg;
    if (mdg_params_has(mdg_msg_params(reply), "stale"))
        atomic_fetch_add(&a->stale, 1);
    atomic_fetch_add(&a->n, 1);
}

static void test_fresh_forward_ids(void *ctx)
{
    mdg_keys *nk = NULL, *uk = NULL;
    mdg_keys_new(&nk);
    mdg_keys_new(&uk);
    uint64_t call[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        mdg_keys *bk = NULL;
        mdg_broker *b = NULL;
        mdg_broker_options bo = {.bind_address = "127.0.0.1", .port = 0};
        mdg_keys_new(&bk);
        CHECK_RC(mdg_broker_new(&b, bk, &bo), 0);
        mdg_broker_allow(b, mdg_keys_public(uk), MDG_ROLE_USER);
        mdg_broker_allow(b, mdg_keys_public(nk), MDG_ROLE_NODE);
        CHECK_RC(mdg_broker_start(b), 0);
        void *rawn = raw_connect(ctx, b, bk, nk);
        mdg_header h;
        char text[512];
        raw_send(rawn, MDG_K_HELLO, 0, 0, "", "\xa0", 1);
        CHECK(raw_recv(rawn, MDG_K_WELCOME, &h, NULL, 0, 5000));
        mdg_conn *u = NULL;
        mdg_conn_options uo = {.port = mdg_broker_port(b)};
        CHECK_RC(mdg_conn_new_with_keys(&u, "127.0.0.1", mdg_keys_public(bk), uk, &uo), 0);
        CHECK_RC(mdg_conn_start(u), 0);
        CHECK_RC(mdg_conn_wait_until_ready(u, 5000), 0);
        answers a = {0};
        CHECK_RC(mdg_conn_send_cb(u, "anything", to_node(mdg_keys_public(nk), 32), NULL, 0, on_answer, &a), 0);
        CHECK(raw_recv(rawn, MDG_K_CMD, &h, NULL, 0, 5000));
        call[i] = h.corr;
        if (i == 1) {
            /* the node answers its call of the first broker, late */
            t_clear_log();
            raw_send(rawn, MDG_K_REPLY, 1, call[0], "", "\xa1\x65stale\xf5", 8); /* {stale: true} */
            CHECK(raw_recv(rawn, MDG_K_ERROR, &h, text, sizeof text, 5000));
            CHECK(h.corr == 0 && strstr(text, "no such call pending for this node") != NULL);
            raw_send(rawn, MDG_K_REPLY, 2, call[1], "", "\xa0", 1); /* and its own */
            WAIT_FOR(atomic_load(&a.n) == 1, 5000);
            CHECK(atomic_load(&a.n) == 1 && atomic_load(&a.stale) == 0);
            printf("forward ids: the first call to the node was %llu in one broker, %llu in the next; "
                   "the late answer to the old one was %s\n",
                   (unsigned long long)call[0], (unsigned long long)call[1],
                   atomic_load(&a.stale) ? "DELIVERED to the new caller" : "refused");
        }
        mdg_conn_destroy(&u);
        raw_closed(rawn);
        zmq_close(rawn);
        mdg_broker_destroy(&b);
        mdg_keys_destroy(&bk);
    }
    CHECK(call[0] != 0 && call[1] != 0 && call[0] != call[1]);
    mdg_keys_destroy(&nk);
    mdg_keys_destroy(&uk);
}

int main(void)
{
    t_capture_log();
    world w = {0};
    mdg_broker_hooks hooks = {.node_joined = node_joined, .node_left = node_left};
    mdg_keys *bkeys = NULL, *ukeys = NULL, *nkeys = NULL, *n2keys = NULL;
    mdg_keys_new(&ukeys);
    mdg_keys_new(&nkeys);
    mdg_keys_new(&n2keys);

    mdg_broker *b = NULL;
    /* a short grace for nodes: a node that vanishes is given up quickly */
    mdg_broker_options bo = {.bind_address = "127.0.0.1", .port = 0, .node_grace_ms = 300};
    mdg_keys_new(&bkeys);
    CHECK_RC(mdg_broker_new(&b, bkeys, &bo), 0);
    mdg_broker_set_commands(b, broker_cmds, &w);
    mdg_broker_set_hooks(b, &hooks, &w);
    mdg_broker_allow(b, mdg_keys_public(ukeys), MDG_ROLE_USER);
    mdg_broker_allow(b, mdg_keys_public(nkeys), MDG_ROLE_NODE);
    mdg_broker_allow(b, mdg_keys_public(n2keys), MDG_ROLE_NODE);
    CHECK_RC(mdg_broker_start(b), 0);

    node_state ns = {0};
    mdg_conn *node = start_node(b, bkeys, nkeys, &ns);
    WAIT_FOR(atomic_load(&w.joined) == 1, 2000);
    CHECK(atomic_load(&w.joined) == 1);
    const uint8_t *npk = mdg_keys_public(nkeys);

    /* the user gets a resource offer listing the node */
    user_state us = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mdg_conn *user = NULL;
    mdg_conn_options uo = {.port = mdg_broker_port(b)};
    CHECK_RC(mdg_conn_new_with_keys(&user, "127.0.0.1", mdg_keys_public(bkeys), ukeys, &uo), 0);
    mdg_conn_register_commands(user, user_cmds, &us);
    CHECK_RC(mdg_conn_start(user), 0);
    CHECK_RC(mdg_conn_wait_until_ready(user, 5000), 0);
    WAIT_FOR(atomic_load(&us.offers) == 1, 2000);
    CHECK(atomic_load(&us.offers) == 1);
    CHECK(atomic_load(&us.n_offered) == 1 && memcmp(us.offered[0], npk, 32) == 0);

    /* the guide's demo: 10.0/5.0 = 2.0, and the expected error */
    mdg_msg *r = NULL;
    mdg_params *p = to_node(npk, 32);
    mdg_params_set_double(p, "dividend", 10.0);
    mdg_params_set_double(p, "devisor", 5.0);
    CHECK_RC(mdg_conn_call(user, "divide", p, NULL, 0, 5000, &r), 0);
    double q = 0;
    CHECK_RC(mdg_params_get_double(mdg_msg_params(r), "quotient", &q), 0);
    CHECK(q == 2.0);
    mdg_msg_destroy(&r);
    p = to_node(npk, 32);
    mdg_params_set_double(p, "dividend", 10.0);
    mdg_params_set_double(p, "devisor", 0.0);
    CHECK_RC(mdg_conn_call(user, "divide", p, NULL, 0, 5000, &r), MDG_EREMOTE);
    CHECK(strcmp(mdg_last_error(), "Devisor cannot be zero") == 0);
    /* the node's own table validates too: a missing param */
    p = to_node(npk, 32);
    mdg_params_set_double(p, "dividend", 1.0);
    CHECK_RC(mdg_conn_call(user, "divide", p, NULL, 0, 5000, &r), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "missing required param 'devisor'") != NULL);

    /* the node learns who called from the broker, not from the caller */
    p = to_node(npk, 32);
    uint8_t forged[32] = {9};
    mdg_params_set_bytes(p, "user", forged, 32);
    uint8_t blob[3000];
    for (size_t i = 0; i < sizeof blob; i++)
        blob[i] = (uint8_t)i;
    CHECK_RC(mdg_conn_call(user, "whoami", p, blob, sizeof blob, 5000, &r), 0);
    const uint8_t *v;
    size_t len;
    bool saw_node = true;
    CHECK_RC(mdg_params_get_bytes(mdg_msg_params(r), "user", &v, &len), 0);
    CHECK(len == 32 && memcmp(v, mdg_keys_public(ukeys), 32) == 0);
    CHECK_RC(mdg_params_get_bytes(mdg_msg_params(r), "session", &v, &len), 0);
    CHECK(len == 16);
    uint8_t session[16];
    memcpy(session, v, 16);
    CHECK_RC(mdg_params_get_bool(mdg_msg_params(r), "saw_node", &saw_node), 0);
    CHECK(!saw_node);
    const void *rb = mdg_msg_bulk(r, &len);
    CHECK(len == sizeof blob && memcmp(rb, blob, len) == 0);
    mdg_msg_destroy(&r);

    /* a long-term channel: 10,000 replies, complete and in order */
    CHECK_RC(mdg_conn_send_cb(user, "stream", to_node(npk, 32), NULL, 0, on_part, &us), 0);
    WAIT_FOR(atomic_load(&us.finals) == 1, 30000);
    CHECK(atomic_load(&us.parts) == STREAM_PARTS);
    CHECK(atomic_load(&us.out_of_order) == 0);
    CHECK(atomic_load(&us.finals) == 1);
    WAIT_FOR(mdg_broker_forward_count(b) == 0, 2000);
    CHECK(mdg_broker_forward_count(b) == 0);
    printf("stream: %d parts received in order, %d final\n", atomic_load(&us.parts), atomic_load(&us.finals));

    /* bad node params: unknown, wrong length, not bytes */
    uint8_t unknown[32];
    memset(unknown, 0x42, sizeof unknown);
    CHECK_RC(mdg_conn_call(user, "divide", to_node(unknown, 32), NULL, 0, 5000, &r), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "is not connected") != NULL);
    CHECK(strstr(mdg_last_error(), "QkJCQkJC") != NULL); /* names the node */
    CHECK_RC(mdg_conn_call(user, "divide", to_node(npk, 16), NULL, 0, 5000, &r), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "32 bytes") != NULL);
    p = mdg_params_new();
    mdg_params_set_str(p, "node", "not bytes");
    CHECK_RC(mdg_conn_call(user, "divide", p, NULL, 0, 5000, &r), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "32 bytes") != NULL);
    CHECK(t_logged("refused"));

    /* a node may not use user-only commands, nor call other nodes */
    CHECK_RC(mdg_conn_call(node, "user_only", NULL, NULL, 0, 5000, &r), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "may only be sent by a user") != NULL);
    CHECK_RC(mdg_conn_call(node, "divide", to_node(npk, 32), NULL, 0, 5000, &r), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "nodes cannot call nodes") != NULL);
    CHECK_RC(mdg_conn_call(node, "node_report", NULL, NULL, 0, 5000, &r), 0);
    mdg_msg_destroy(&r);
    CHECK(atomic_load(&w.broker_cmd_seen) == 1);
    /* a user may not impersonate a node */
    CHECK_RC(mdg_conn_call(user, "node_report", NULL, NULL, 0, 5000, &r), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "may only be sent by a node") != NULL);

    /* the broker sends to a node and to a session, from another thread */
    CHECK_RC(mdg_broker_send_node(b, npk, "pushed", NULL, NULL, 0), 0);
    CHECK_RC(mdg_broker_send_session(b, session, 16, "pushed", NULL, NULL, 0), 0);
    WAIT_FOR(atomic_load(&ns.pushed) == 1 && atomic_load(&us.pushed) == 1, 5000);
    CHECK(atomic_load(&ns.pushed) == 1);
    CHECK(atomic_load(&us.pushed) == 1);

    /* raw peers: a node replying to a call it was never sent, a user
     * replying at all, a node sending garbage */
    void *ctx = zmq_ctx_new();
    mdg_keys *rawkeys = NULL;
    mdg_keys_new(&rawkeys);
    mdg_broker_allow(b, mdg_keys_public(rawkeys), MDG_ROLE_USER); /* allow-list is live */
    void *rawn = raw_connect(ctx, b, bkeys, n2keys); /* the second node key */
    mdg_header h;
    char text[512];
    raw_send(rawn, MDG_K_HELLO, 0, 0, "", "\xa0", 1);
    CHECK(raw_recv(rawn, MDG_K_WELCOME, &h, NULL, 0, 5000));
    t_clear_log();
    raw_send(rawn, MDG_K_REPLY, 1, 999, "", "\xa0", 1);
    CHECK(raw_recv(rawn, MDG_K_ERROR, &h, text, sizeof text, 5000));
    CHECK(strstr(text, "no such call") != NULL);
    CHECK(t_logged("not pending for it"));

    void *rawu = raw_connect(ctx, b, bkeys, rawkeys);
    raw_send(rawu, MDG_K_HELLO, 0, 0, "", "\xa0", 1);
    CHECK(raw_recv(rawu, MDG_K_WELCOME, &h, NULL, 0, 5000));
    raw_send(rawu, MDG_K_REPLY, 1, 1, "", "\xa0", 1);
    CHECK(raw_recv(rawu, MDG_K_ERROR, &h, text, sizeof text, 5000));
    CHECK(strstr(text, "only accepted from the node") != NULL);

    /* a gap in the sequence: the message is dropped (never processed out of
     * order) and the sender is asked to say hello again (to resend) */
    t_clear_log();
    raw_send(rawu, MDG_K_CMD, 5, 77, "nosuch", "\xa0", 1); /* 2 expected */
    CHECK(raw_recv(rawu, MDG_K_ERROR, &h, text, sizeof text, 5000));
    CHECK(h.corr == 0 && strstr(text, "say hello again") != NULL && strstr(text, "resync") != NULL);
    CHECK(t_logged("seq gap"));
    raw_send(rawu, MDG_K_CMD, 2, 78, "nosuch", "\xa0", 1); /* the next one is taken */
    CHECK(raw_recv(rawu, MDG_K_ERROR, &h, text, sizeof text, 5000));
    CHECK(h.corr == 78 && strstr(text, "unknown command") != NULL); /* nothing for 77 */

    /* the raw node gets a real call and answers garbage: refused, and the
     * caller hears it at once (it does not wait for an answer that the
     * node believes it gave); a later answer finds no call */
    t_call gc;
    t_call_start(&gc, user, "noop", to_node(mdg_keys_public(n2keys), 32), 8000);
    CHECK(raw_recv(rawn, MDG_K_CMD, &h, NULL, 0, 5000));
    uint64_t call_corr = h.corr;
    raw_send(rawn, MDG_K_REPLY, 2, call_corr, "", "\xff\xff", 2);
    CHECK(raw_recv(rawn, MDG_K_ERROR, &h, text, sizeof text, 5000));
    CHECK(strstr(text, "was refused") != NULL);
    pthread_join(gc.t, NULL);
    printf("a node's garbage reply: the call failed with \"%s\"\n", gc.text);
    CHECK_RC(gc.rc, MDG_EREMOTE);
    CHECK(strstr(gc.text, "was refused") != NULL);
    WAIT_FOR(mdg_broker_forward_count(b) == 0, 2000);
    CHECK(mdg_broker_forward_count(b) == 0);
    raw_send(rawn, MDG_K_REPLY, 3, call_corr, "", "\xa0", 1);
    CHECK(raw_recv(rawn, MDG_K_ERROR, &h, text, sizeof text, 5000));
    CHECK(strstr(text, "no such call") != NULL);

    /* a reply the broker passes on (a well-formed CBOR map) but the caller
     * cannot decode (a key that is not text): the call ends with an error
     * instead of waiting for ever */
    t_call bm;
    t_call_start(&bm, user, "anything", to_node(mdg_keys_public(n2keys), 32), 8000);
    CHECK(raw_recv(rawn, MDG_K_CMD, &h, NULL, 0, 5000));
    raw_send(rawn, MDG_K_REPLY, 4, h.corr, "", "\xa1\x01\x02", 3);
    pthread_join(bm.t, NULL);
    CHECK_RC(bm.rc, MDG_EREMOTE);
    CHECK(strstr(bm.text, "malformed reply from the broker") != NULL);

    /* two replies in one head frame, the first's params not a map: the
     * broker walked them to find the second (so takes them as checked),
     * still refuses the first, which ends the call, and reads the second
     * (for no call now) */
    mdg_conn_call(user, "noop", to_node(mdg_keys_public(n2keys), 32), NULL, 0, 1, &r); /* times out: fine */
    CHECK(raw_recv(rawn, MDG_K_CMD, &h, NULL, 0, 5000));
    {
        uint8_t frame[256];
        size_t n = 0;
        mdg_header r1 = {.kind = MDG_K_REPLY, .seq = 5, .corr = h.corr}, r2 = r1;
        r2.seq = 6;
        n += mdg_wire_put_head(frame + n, sizeof frame - n, &r1, true, "\x81\x01", 2);
        n += mdg_wire_put_head(frame + n, sizeof frame - n, &r2, false, "\xa0", 1);
        zmq_send(rawn, frame, n, 0);
    }
    CHECK(raw_recv(rawn, MDG_K_ERROR, &h, text, sizeof text, 5000));
    CHECK(strstr(text, "was refused") != NULL && strstr(text, "must be a map") != NULL);
    CHECK(raw_recv(rawn, MDG_K_ERROR, &h, text, sizeof text, 5000));
    CHECK(strstr(text, "no such call") != NULL);
    WAIT_FOR(mdg_broker_forward_count(b) == 0, 2000);
    CHECK(mdg_broker_forward_count(b) == 0);

    /* a node that dies with a blocking call pending: the caller gets an
     * error quickly, not a hang (raw node closed without a goodbye, so the
     * broker learns it from the dropped connection) */
    t_call bc;
    t_call_start(&bc, user, "anything", to_node(mdg_keys_public(n2keys), 32), 8000);
    CHECK(raw_recv(rawn, MDG_K_CMD, &h, NULL, 0, 5000));
    int64_t t0 = mdg_now_ms();
    raw_closed(rawn);
    zmq_close(rawn);
    pthread_join(bc.t, NULL);
    CHECK_RC(bc.rc, MDG_EREMOTE);
    CHECK(strstr(bc.text, "went away before answering") != NULL);
    printf("call to a node that died: failed %lld ms after the link dropped (grace 300 ms): %s\n",
           (long long)(mdg_now_ms() - t0), bc.text);
    CHECK(mdg_now_ms() - t0 < 3000); /* the node's grace (300 ms) plus the check interval */

    /* the same with a well-behaved node holding the call */
    node_state ns2 = {0};
    mdg_conn *node2 = start_node(b, bkeys, n2keys, &ns2);
    WAIT_FOR(mdg_broker_node_count(b) == 2, 2000);
    int rc = mdg_conn_send_cb(user, "hang", to_node(mdg_keys_public(n2keys), 32), NULL, 0, on_part, &us);
    CHECK_RC(rc, 0);
    WAIT_FOR(ns2.hung != NULL, 5000);
    CHECK(ns2.hung != NULL);
    int finals_before = atomic_load(&us.finals);
    mdg_msg_destroy(&ns2.hung);
    mdg_conn_destroy(&node2);
    WAIT_FOR(atomic_load(&us.finals) == finals_before + 1, 5000);
    CHECK(atomic_load(&us.finals) == finals_before + 1);
    CHECK(mdg_broker_forward_count(b) == 0);

    /* a node that reconnects replaces its old connection */
    int joined = atomic_load(&w.joined), left = atomic_load(&w.left);
    node_state ns3 = {0};
    mdg_conn *node3 = start_node(b, bkeys, nkeys, &ns3); /* same key as `node` */
    WAIT_FOR(atomic_load(&w.joined) == joined + 1 && atomic_load(&w.left) == left + 1, 5000);
    CHECK(atomic_load(&w.joined) == joined + 1);
    CHECK(atomic_load(&w.left) == left + 1);
    p = to_node(npk, 32);
    mdg_params_set_double(p, "dividend", 9.0);
    mdg_params_set_double(p, "devisor", 3.0);
    CHECK_RC(mdg_conn_call(user, "divide", p, NULL, 0, 5000, &r), 0);
    mdg_msg_destroy(&r);

    /* channels whose caller went away are cleaned up */
    CHECK_RC(mdg_conn_send_cb(user, "hang", to_node(npk, 32), NULL, 0, on_part, &us), 0);
    WAIT_FOR(ns3.hung != NULL, 5000);
    CHECK(mdg_broker_forward_count(b) == 1);
    mdg_conn_destroy(&user);
    WAIT_FOR(mdg_broker_forward_count(b) == 0, 5000);
    CHECK(mdg_broker_forward_count(b) == 0);
    /* the node is told that its caller has gone: its late answer fails
     * here instead of travelling to the broker for nothing */
    WAIT_FOR(t_logged("the broker ended call"), 5000);
    CHECK(t_logged("the broker ended call"));
    CHECK_RC(mdg_msg_reply(ns3.hung, NULL, NULL, 0), MDG_ECLOSED);
    mdg_msg_destroy(&ns3.hung);

    test_fresh_forward_ids(ctx);

    raw_closed(rawu);
    zmq_close(rawu);
    zmq_ctx_term(ctx);
    mdg_conn_destroy(&node3);
    mdg_conn_destroy(&node);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&ukeys);
    mdg_keys_destroy(&nkeys);
    mdg_keys_destroy(&n2keys);
    mdg_keys_destroy(&rawkeys);
    return t_done("test_nodes");
}
