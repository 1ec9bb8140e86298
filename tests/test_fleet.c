/* test_fleet.c - brokers in a fleet over NATS (docs/fleet.md): a user of
 * broker A calls a node of broker B as if it were local. Each run starts
 * its own nats-server on loopback (natsserver.c) and two brokers in this
 * process.
 *   - the guide's divide node: 10/5 = 2.0, and its error reflected
 *   - the node sees the same provenance as from a user of its own broker
 *   - a stream of 10,000 replies, in order, none lost
 *   - calls with params near max_payload among small ones: all answered
 *   - a caller that stops reading has the node paused across the fleet
 *   - nats-server restarted mid-stream: nothing lost, nothing doubled
 *   - a NATS client that is not a broker (garbage, forged, unknown key)
 *     is refused and logged, and the fleet goes on
 *   - a node that leaves B leaves A's offers and node list (a call to
 *     it pending fails to its caller, once); a broker
 *     that leaves takes its nodes with it */
#include "fleet.h"
#include "natsserver.h"
#include "testutil.h"

#include <nats/nats.h>
#include <sodium.h>

#define STREAM_PARTS T_STREAM_PARTS

/* -------------------------------------------------------------- the node */

/* "hang": taken, never answered (a call pending when the node leaves) */
static atomic_int hangs;

static void h_hang(mdg_msg *m, void *arg)
{
    (void)m;
    (void)arg;
    atomic_fetch_add(&hangs, 1);
}

static const mdg_cmd node_cmds[] = {
    {"divide", t_divide, MDG_REQUIRE("dividend", "devisor"), MDG_CMD_NEEDS_REPLY},
    {"whoami", t_whoami, NULL, MDG_CMD_NEEDS_REPLY},
    {"stream", t_stream, NULL, MDG_CMD_NEEDS_REPLY},
    {"hang", h_hang, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* answers (replies or errors) to pipelined calls */
static atomic_int answered, answered_ok;

static void on_answer(mdg_msg *r, void *arg)
{
    (void)arg;
    if (!mdg_msg_is_error(r))
        atomic_fetch_add(&answered_ok, 1);
    atomic_fetch_add(&answered, 1);
}

/* ------------------------------------------------------------ the brokers */

/* A broker command: how many nodes it routes to, and whether pk is one. */
static void count_node(const uint8_t pk[MDG_KEY_BYTES], bool local, void *arg)
{
    (void)local;
    mdg_params *r = arg;
    char b64[MDG_KEY_B64_LEN + 1];
    mdg_pk_to_b64(pk, b64);
    mdg_params_set_bool(r, b64, true);
}

static void h_fleet_nodes(mdg_msg *m, void *arg)
{
    mdg_broker *b = *(mdg_broker **)arg;
    mdg_params *r = mdg_params_new();
    mdg_broker_each_node(b, count_node, r);
    mdg_msg_reply(m, r, NULL, 0);
}

static const mdg_cmd broker_cmds[] = {
    {"fleet_nodes", h_fleet_nodes, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

typedef struct side {
    mdg_keys *keys;
    mdg_broker *b;
} side;

/* port 0: a free one */
static void make_broker(side *s, const char *url, const uint8_t *node_pk, int port)
{
    mdg_broker_options o = {.bind_address = "127.0.0.1", .port = port};
    mdg_fleet_options fo = {.url = url, .name = "test-fleet", .beat_ms = 100, .silence_ms = 5000};
    if (mdg_broker_new(&s->b, s->keys, &o) || mdg_broker_join_fleet(s->b, &fo) ||
        mdg_broker_set_commands(s->b, broker_cmds, &s->b) || mdg_broker_allow_any(s->b) ||
        (node_pk && mdg_broker_allow(s->b, node_pk, MDG_ROLE_NODE))) {
        fprintf(stderr, "cannot make a broker: %s\n", mdg_last_error());
        exit(2);
    }
}

static void start_broker(side *s)
{
    if (mdg_broker_start(s->b)) {
        fprintf(stderr, "cannot start a broker: %s\n", mdg_last_error());
        exit(2);
    }
}

/* The divide node, connected to broker s. */
static mdg_conn *start_node(const side *s, const mdg_keys *nkeys)
{
    mdg_conn *node = NULL;
    mdg_conn_options no = {.port = mdg_broker_port(s->b), .reflect_errors = true};
    if (mdg_conn_new_with_keys(&node, "127.0.0.1", mdg_keys_public(s->keys), nkeys, &no) ||
        mdg_conn_register_commands(node, node_cmds, NULL) || mdg_conn_start(node) ||
        mdg_conn_wait_until_ready(node, 5000)) {
        fprintf(stderr, "node failed to start: %s\n", mdg_last_error());
        exit(2);
    }
    return node;
}



/* Whether broker s lists node pk (asked through user u of it). */
static bool lists_node(mdg_conn *u, const uint8_t *pk)
{
    mdg_msg *r = NULL;
    char b64[MDG_KEY_B64_LEN + 1];
    mdg_pk_to_b64(pk, b64);
    if (mdg_conn_call(u, "fleet_nodes", NULL, NULL, 0, 5000, &r) != 0)
        return false;
    bool has = mdg_params_has(mdg_msg_params(r), b64);
    mdg_msg_destroy(&r);
    return has;
}



/* ---------------------------------------------------------------- offers */

typedef struct offer_seen {
    pthread_mutex_t lock;
    atomic_int got;
    bool has_node;
    const uint8_t *node;
} offer_seen;

static void h_offer(mdg_msg *m, void *arg)
{
    offer_seen *o = arg;
    cbor_item_t *list = mdg_params_get(mdg_msg_params(m), "nodes");
    bool has = false;
    for (size_t i = 0; list && cbor_isa_array(list) && i < cbor_array_size(list); i++) {
        cbor_item_t *b = cbor_array_handle(list)[i];
        if (cbor_isa_bytestring(b) && cbor_bytestring_length(b) == 32 &&
            memcmp(cbor_bytestring_handle(b), o->node, 32) == 0)
            has = true;
    }
    pthread_mutex_lock(&o->lock);
    o->has_node = has;
    pthread_mutex_unlock(&o->lock);
    atomic_store(&o->got, 1);
}

static const mdg_cmd user_cmds[] = {
    {"resource_offer", h_offer, NULL, 0},
    MDG_CMD_END,
};

/* A new user of broker s: whether its resource offer lists node. -1: no offer came. */
static int offer_lists(side *s, const uint8_t *node)
{
    offer_seen o = {.lock = PTHREAD_MUTEX_INITIALIZER, .node = node};
    mdg_conn *u = t_client(s->b, s->keys, NULL, user_cmds, &o);
    mdg_conn_start(u);
    WAIT_UNTIL(atomic_load(&o.got), 5000);
    int r = atomic_load(&o.got) ? o.has_node : -1;
    mdg_conn_disconnect(u);
    mdg_conn_destroy(&u);
    return r;
}

/* Whether broker b's /metrics text has the line "NAME value" with value >= min. */
static bool metric_at_least(mdg_broker *b, const char *name, unsigned long long min)
{
    char *text = mdg_broker_metrics_text(b), line[200];
    snprintf(line, sizeof line, "\n%s", name); /* a value's line, not its # HELP */
    const char *at = text ? strstr(text, line) : NULL;
    bool ok = at && strtoull(at + strlen(line), NULL, 10) >= min;
    free(text);
    return ok;
}

/* --------------------------------------------------- a NATS client, not a broker */

static void intruder(const char *url, side *a, side *b)
{
    natsConnection *nc = NULL;
    char hex[65], subject[160];
    sodium_bin2hex(hex, sizeof hex, mdg_keys_public(a->keys), 32);
    snprintf(subject, sizeof subject, "mdg.fleet.test-fleet.%s", hex);
    CHECK(natsConnection_ConnectTo(&nc, url) == NATS_OK);
    if (!nc)
        return;
    /* garbage */
    natsConnection_PublishString(nc, subject, "hello, I am not a broker");
    /* a forged call to B's node "from B": B's key in the envelope, a real
     * call's head frame inside, claiming a newest incarnation (that would
     * make A forget B), but sealed with a key that is not B's */
    uint8_t fake_sk[32], fake_pk[32], shared[crypto_box_BEFORENMBYTES];
    crypto_box_keypair(fake_pk, fake_sk);
    CHECK(crypto_box_beforenm(shared, mdg_keys_public(a->keys), fake_sk) == 0);
    mdg_params *p = t_to_node(mdg_keys_public(b->keys));
    mdg_params_set_double(p, "dividend", 1);
    mdg_params_set_double(p, "devisor", 1);
    mdg_header h = {.kind = MDG_K_CMD, .seq = 1, .corr = 99};
    mdg_header_set_command(&h, "divide");
    zmq_msg_t pm, head;
    uint8_t *msg = NULL;
    size_t len = 0;
    CHECK(mdg_params_encode(p, &pm) == 0 && mdg_wire_encode_head(&h, zmq_msg_data(&pm), zmq_msg_size(&pm), &head) == 0);
    CHECK(fleet_wire_seal(shared, mdg_keys_public(b->keys), UINT64_MAX, 0, zmq_msg_data(&head), zmq_msg_size(&head),
                          NULL, 0, &msg, &len) == 0);
    if (msg)
        natsConnection_Publish(nc, subject, msg, (int)len);
    free(msg);
    /* the same from a well-made key that is not a member */
    CHECK(fleet_wire_seal(shared, fake_pk, UINT64_MAX, 0, zmq_msg_data(&head), zmq_msg_size(&head), NULL, 0, &msg,
                          &len) == 0);
    if (msg)
        natsConnection_Publish(nc, subject, msg, (int)len);
    free(msg);
    zmq_msg_close(&head);
    zmq_msg_close(&pm);
    mdg_params_destroy(&p);
    /* a real message of each broker to the other, sent back to it under
     * the other's name: the pair's box key is the same both ways, so only
     * keys bound to a direction refuse it (else the one with the newer
     * incarnation would take its own message for the other's restart) */
    side *ends[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        side *from = ends[i], *to = ends[1 - i];
        char to_subject[160], from_subject[160];
        sodium_bin2hex(hex, sizeof hex, mdg_keys_public(to->keys), 32);
        snprintf(to_subject, sizeof to_subject, "mdg.fleet.test-fleet.%s", hex);
        sodium_bin2hex(hex, sizeof hex, mdg_keys_public(from->keys), 32);
        snprintf(from_subject, sizeof from_subject, "mdg.fleet.test-fleet.%s", hex);
        natsSubscription *sub = NULL;
        natsMsg *seen = NULL;
        CHECK(natsConnection_SubscribeSync(&sub, nc, to_subject) == NATS_OK);
        CHECK(sub && natsSubscription_NextMsg(&seen, sub, 5000) == NATS_OK); /* a beat comes every 500 ms */
        if (seen && natsMsg_GetDataLength(seen) > 3 + 32) {
            size_t n = (size_t)natsMsg_GetDataLength(seen);
            uint8_t *back = malloc(n);
            memcpy(back, natsMsg_GetData(seen), n);
            memcpy(back + 3, mdg_keys_public(to->keys), 32); /* "from the other" */
            natsConnection_Publish(nc, from_subject, back, (int)n);
            free(back);
        }
        natsMsg_Destroy(seen);
        natsSubscription_Destroy(sub);
    }
    natsConnection_FlushTimeout(nc, 2000);
    natsConnection_Destroy(nc);
}

/* ------------------------------------------------------------------- main */

int main(void)
{
    t_capture_log();
    if (sodium_init() < 0)
        return 2;
    t_nats nats = {0};
    if (t_nats_start(&nats, t_free_port()) != 0)
        return 2;
    side A = {0}, B = {0};
    mdg_keys *nkeys = NULL;
    mdg_keys_new(&A.keys);
    mdg_keys_new(&B.keys);
    mdg_keys_new(&nkeys);
    const uint8_t *npk = mdg_keys_public(nkeys);
    make_broker(&A, nats.url, NULL, 0);
    make_broker(&B, nats.url, npk, 0);
    CHECK_RC(mdg_broker_fleet_member(A.b, mdg_keys_public(B.keys)), 0);
    CHECK_RC(mdg_broker_fleet_member(B.b, mdg_keys_public(A.keys)), 0);
    start_broker(&A);
    start_broker(&B);

    /* the node on B, a user on each */
    mdg_conn *node = start_node(&B, nkeys);
    mdg_conn *ua = t_client(A.b, A.keys, NULL, NULL, NULL), *ub = t_client(B.b, B.keys, NULL, NULL, NULL);
    CHECK_RC(mdg_conn_start(ua), 0);
    CHECK_RC(mdg_conn_start(ub), 0);
    CHECK_RC(mdg_conn_wait_until_ready(ua, 5000), 0);
    CHECK_RC(mdg_conn_wait_until_ready(ub, 5000), 0);

    /* one directory: A learns of B's node */
    WAIT_UNTIL(lists_node(ua, npk), 10000);
    CHECK(lists_node(ua, npk));
    CHECK(offer_lists(&A, npk) == 1);

    /* the guide's divide, across the fleet */
    mdg_msg *r = NULL;
    mdg_params *p;
    double q = 0;
    CHECK_RC(t_divide_via(ua, npk, 10, 5, 10000, &q), 0);
    CHECK(q == 2.0);
    CHECK_RC(t_divide_via(ua, npk, 10, 0, 10000, &q), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "Devisor cannot be zero") != NULL);
    printf("divide across the fleet: 10/5 = %g, and the error reflected\n", q);

    /* provenance: as the node's own broker would stamp it */
    const uint8_t *v;
    size_t len, sid_len;
    mdg_keys *ua_keys = NULL;
    (void)ua_keys;
    CHECK_RC(mdg_conn_call(ua, "whoami", t_to_node(npk), NULL, 0, 10000, &r), 0);
    mdg_msg *rb = NULL;
    CHECK_RC(mdg_conn_call(ub, "whoami", t_to_node(npk), NULL, 0, 10000, &rb), 0);
    if (r && rb) {
        const uint8_t *sid = mdg_conn_session_id(ua, &sid_len);
        int64_t ca = -1, cb = -1;
        bool saw = true;
        CHECK(mdg_params_get_bytes(mdg_msg_params(r), "session", &v, &len) == 0 && len == 16 && sid_len == 16 &&
              memcmp(v, sid, 16) == 0);
        CHECK(mdg_params_get_bytes(mdg_msg_params(r), "user", &v, &len) == 0 && len == 32);
        CHECK(mdg_params_get_bool(mdg_msg_params(r), "saw_node", &saw) == 0 && !saw);
        mdg_params_get_int(mdg_msg_params(r), "count", &ca);
        mdg_params_get_int(mdg_msg_params(rb), "count", &cb);
        CHECK(ca == cb && ca == 2); /* user and session, nothing else */
        sid = mdg_conn_session_id(ub, &sid_len);
        CHECK(mdg_params_get_bytes(mdg_msg_params(rb), "session", &v, &len) == 0 && memcmp(v, sid, 16) == 0);
    }
    mdg_msg_destroy(&r);
    mdg_msg_destroy(&rb);
    /* the user key stamped is the caller's own: a call with a forged one */
    p = t_to_node(npk);
    uint8_t forged[32] = {1, 2, 3};
    mdg_params_set_bytes(p, "user", forged, 32);
    CHECK_RC(mdg_conn_call(ua, "whoami", p, NULL, 0, 10000, &r), 0);
    CHECK(r && mdg_params_get_bytes(mdg_msg_params(r), "user", &v, &len) == 0 && memcmp(v, forged, 32) != 0);
    mdg_msg_destroy(&r);

    /* a call larger than the NATS server's max_payload (1 MiB by default)
     * is refused at once, not sent again for ever */
    size_t big_len = 2u << 20;
    uint8_t *big = calloc(1, big_len);
    CHECK_RC(mdg_conn_call(ua, "whoami", t_to_node(npk), big, big_len, 10000, &r), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "max_payload") != NULL);
    free(big);
    CHECK_RC(mdg_conn_call(ua, "whoami", t_to_node(npk), "small", 5, 10000, &r), 0);
    size_t blen = 0;
    const void *bulk = r ? mdg_msg_bulk(r, &blen) : NULL;
    CHECK(bulk && blen == 5 && memcmp(bulk, "small", 5) == 0); /* a bulk part crosses both ways */
    mdg_msg_destroy(&r);

    /* a call whose params are near max_payload in a pipeline of small
     * ones: those waiting for room at the node go on together, and in
     * one NATS message with it they would be over max_payload (refused
     * by NATS, sent again for ever, none of them answered) */
    size_t near_len = (1u << 20) - 600; /* max_payload less room for the head */
    uint8_t *near = calloc(1, near_len);
    for (int i = 0; i < 400; i++) {
        p = t_to_node(npk);
        if (i % 100 == 99)
            CHECK_RC(mdg_params_set_bytes(p, "pad", near, near_len), 0);
        CHECK_RC(mdg_conn_send_cb(ua, "whoami", p, NULL, 0, on_answer, NULL), 0);
    }
    free(near);
    WAIT_UNTIL(atomic_load(&answered) == 400, 20000);
    CHECK(atomic_load(&answered) == 400 && atomic_load(&answered_ok) == 400);

    /* a stream of 10,000 replies back to the caller, in order */
    t_reader rd = {0};
    CHECK_RC(mdg_conn_send_cb(ua, "stream", t_to_node(npk), NULL, 0, t_on_part, &rd), 0);
    WAIT_UNTIL(atomic_load(&rd.done), 60000);
    CHECK(atomic_load(&rd.done) && atomic_load(&rd.next) == STREAM_PARTS && atomic_load(&rd.bad) == 0 &&
          atomic_load(&rd.errors) == 0);
    printf("stream across the fleet: %ld replies, %ld out of order\n", (long)atomic_load(&rd.next),
           (long)atomic_load(&rd.bad));

    /* a caller that stops reading: its broker (A) has the node paused
     * through the node's broker (B), and nothing is lost once it reads */
    mdg_conn *slow = t_client(A.b, A.keys, NULL, NULL, NULL);
    CHECK_RC(mdg_conn_start(slow), 0);
    CHECK_RC(mdg_conn_wait_until_ready(slow, 5000), 0);
    t_reader held = {.hold = 1};
    p = t_to_node(npk);
    mdg_params_set_int(p, "n", 40000);
    t_clear_log();
    CHECK_RC(mdg_conn_send_cb(slow, "stream", p, NULL, 0, t_on_part, &held), 0);
    WAIT_UNTIL(t_logged("says pause for call"), 30000);
    CHECK(t_logged("says pause for call"));
    atomic_store(&held.hold, 0);
    WAIT_UNTIL(atomic_load(&held.done), 60000);
    CHECK(atomic_load(&held.next) == 40000 && atomic_load(&held.bad) == 0 && atomic_load(&held.errors) == 0);
    CHECK(t_logged("says resume for call"));
    printf("a caller at A that stopped reading: the node at B paused, then %ld of 40000 replies in order\n",
           (long)atomic_load(&held.next));
    mdg_conn_disconnect(slow);
    mdg_conn_destroy(&slow);

    /* nats-server restarted in the middle of a stream */
    t_reader rr = {0};
    p = t_to_node(npk);
    mdg_params_set_int(p, "n", 20000);
    mdg_params_set_int(p, "pace_us", 150);
    CHECK_RC(mdg_conn_send_cb(ua, "stream", p, NULL, 0, t_on_part, &rr), 0);
    WAIT_UNTIL(atomic_load(&rr.next) >= 2000, 30000);
    CHECK(atomic_load(&rr.next) >= 2000 && !atomic_load(&rr.done));
    long at_stop = (long)atomic_load(&rr.next);
    t_nats_stop(&nats);
    CHECK(t_nats_start(&nats, nats.port) == 0);
    WAIT_UNTIL(atomic_load(&rr.done), 90000);
    CHECK(atomic_load(&rr.done) && atomic_load(&rr.next) == 20000 && atomic_load(&rr.bad) == 0 &&
          atomic_load(&rr.errors) == 0);
    printf("nats-server restarted at reply %ld: %ld of 20000 replies, %ld out of order or doubled\n", at_stop,
           (long)atomic_load(&rr.next), (long)atomic_load(&rr.bad));
    /* and calls go on */
    CHECK_RC(t_divide_via(ua, npk, 9, 3, 10000, &q), 0);
    CHECK(q == 3.0);

    /* a NATS client that is not a broker */
    t_clear_log();
    intruder(nats.url, &A, &B);
    WAIT_UNTIL(t_logged("not a fleet message") && t_logged("does not open"), 5000);
    CHECK(t_logged("not a fleet message"));
    CHECK(t_logged("does not open")); /* the forged one: B's key, not sealed by B */
    CHECK(!t_logged("restarted") && !t_logged("joined")); /* a message sent back was not taken */
    /* /metrics counts every refusal (the log lines are rate-limited) and
     * shows the fleet's health */
    WAIT_UNTIL(metric_at_least(A.b, "messidge_fleet_refusals_total{reason=\"forged\"} ", 2), 5000);
    CHECK(metric_at_least(A.b, "messidge_fleet_refusals_total{reason=\"forged\"} ", 2)); /* the forgery, B's sent back */
    CHECK(metric_at_least(A.b, "messidge_fleet_refusals_total{reason=\"garbage\"} ", 1));
    CHECK(metric_at_least(A.b, "messidge_fleet_refusals_total{reason=\"not_a_member\"} ", 1));
    CHECK(metric_at_least(A.b, "messidge_fleet_members{state=\"up\"} ", 1));
    CHECK(metric_at_least(A.b, "messidge_fleet_nats_connected ", 1));
    CHECK(metric_at_least(A.b, "messidge_fleet_remote_nodes ", 1));
    WAIT_UNTIL(t_logged("not a member of the fleet"), 3000); /* rate-limited: within a second */
    CHECK(t_logged("not a member of the fleet"));
    CHECK_RC(t_divide_via(ua, npk, 1, 4, 10000, &q), 0);
    CHECK(q == 0.25);

    /* the node leaves B with a call from A pending: the caller hears
     * why, and B's error for the call is taken at A as its answer, not
     * refused as one for a call not pending there */
    t_reader hung = {0};
    CHECK_RC(mdg_conn_send_cb(ua, "hang", t_to_node(npk), NULL, 0, t_on_part, &hung), 0);
    WAIT_UNTIL(atomic_load(&hangs) == 1, 10000);
    CHECK(atomic_load(&hangs) == 1);
    t_clear_log();
    mdg_conn_disconnect(node);
    mdg_conn_destroy(&node);
    WAIT_UNTIL(atomic_load(&hung.done), 10000);
    CHECK(atomic_load(&hung.errors) == 1);
    WAIT_UNTIL(!lists_node(ua, npk), 10000);
    CHECK(!lists_node(ua, npk));
    CHECK(!t_logged("not pending"));
    CHECK(offer_lists(&A, npk) == 0);
    CHECK_RC(t_divide_via(ua, npk, 1, 1, 10000, &q), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "not connected") != NULL);

    /* a broker that leaves takes its nodes with it, at once */
    node = start_node(&B, nkeys);
    WAIT_UNTIL(lists_node(ua, npk), 10000);
    CHECK(lists_node(ua, npk));
    mdg_conn_disconnect(ub);
    mdg_conn_destroy(&ub);
    int b_port = mdg_broker_port(B.b);
    mdg_broker_destroy(&B.b);
    int64_t t0 = now_ms();
    WAIT_UNTIL(!lists_node(ua, npk), 4000); /* well within silence_ms: its goodbye */
    CHECK(!lists_node(ua, npk));
    printf("broker B left: its node withdrawn from A in %lld ms\n", (long long)(now_ms() - t0));

    /* B starts again (same keys, a new incarnation): A hears it at once,
     * and its node is back in A's list with calls through it */
    make_broker(&B, nats.url, npk, b_port); /* where the node reconnects */
    CHECK_RC(mdg_broker_fleet_member(B.b, mdg_keys_public(A.keys)), 0);
    start_broker(&B);
    WAIT_UNTIL(lists_node(ua, npk), 15000); /* the node reconnects with its backoff */
    CHECK(lists_node(ua, npk));
    CHECK_RC(t_divide_via(ua, npk, 7, 2, 10000, &q), 0);
    CHECK(q == 3.5);
    printf("broker B restarted: its node listed at A and called through it again\n");

    mdg_conn_destroy(&node);
    mdg_broker_destroy(&B.b);
    mdg_conn_disconnect(ua);
    mdg_conn_destroy(&ua);
    mdg_broker_destroy(&A.b);
    t_nats_stop(&nats);
    unlink(nats.log);
    mdg_keys_destroy(&A.keys);
    mdg_keys_destroy(&B.keys);
    mdg_keys_destroy(&nkeys);
    nats_Close();
    return t_done("test_fleet");
}
