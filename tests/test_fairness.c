/* test_fairness.c - one user cannot take a node away from the others, and
 * every call the broker took ends in a reply or an error:
 *
 *  a. a user that floods a node with calls and never reads its replies
 *     (a raw socket speaking the wire): another user's calls to the same
 *     node are still answered promptly, and the flooder is held back by
 *     its share of the node (node_window);
 *  b. a node streaming to a caller that stops reading: the node is asked
 *     to pause that one channel, another user's calls are answered, and
 *     when the caller reads again it gets the whole stream in order;
 *  c. a node that goes away while a user with a small queue has thousands
 *     of calls for it: each call gets its answer (an error), none is lost;
 *     fire-and-forget commands it never acknowledged draw a notice;
 *  d. one call's stream cannot fill a node's link ahead of its other
 *     callers: past CALL_WINDOW replies the broker has not acknowledged,
 *     a reply to that call waits (MDG_EAGAIN with nonblocking), while
 *     the node's other calls still have their own room. */
#include "faultproxy.h"
#include "internal.h"
#include "msg.h"
#include "testutil.h"
#include "wire.h"

#include <stdatomic.h>
#include <zmq.h>

#define QUEUE 200 /* the broker's queue_limit: small, so that limits are reached quickly */

static void n_echo(mdg_msg *m, void *arg)
{
    (void)arg;
    mdg_msg_reply(m, mdg_params_new(), NULL, 0);
}

/* ------------------------------------------------ b: a stalled stream reader */

#define STREAM 20000 /* more than a paused node may still send (10000 past the pause) */

typedef struct streamer {
    mdg_msg *m;
    pthread_t t;
    atomic_int started, result; /* result: 0 = all sent, else the failing return code */
} streamer;

static streamer st;

static void *stream_thread(void *arg)
{
    streamer *s = arg;
    int rc = 0;
    for (int64_t i = 0; i < STREAM && rc == 0; i++) {
        mdg_params *p = mdg_params_new();
        mdg_params_set_int(p, "i", i);
        rc = i + 1 < STREAM ? mdg_msg_reply_more(s->m, p, NULL, 0) : mdg_msg_reply(s->m, p, NULL, 0);
    }
    atomic_store(&s->result, rc ? rc : 1);
    mdg_msg_destroy(&s->m);
    return NULL;
}

static void n_stream(mdg_msg *m, void *arg)
{
    (void)arg;
    st.m = mdg_msg_keep(m);
    atomic_store(&st.started, 1);
    pthread_create(&st.t, NULL, stream_thread, &st);
}

/* ---------------------------------------------- d: one call's window */

#define CALL_WINDOW 256 /* conn_queue.c: a call's replies in flight to the broker */
#define WINDOW_STREAM 1000

static mdg_msg *kept[2];
static atomic_int n_kept;

static void n_keep(mdg_msg *m, void *arg)
{
    (void)arg;
    int i = atomic_fetch_add(&n_kept, 1);
    if (i < 2)
        kept[i] = mdg_msg_keep(m);
}

/* Reply part i of a kept call ("i" numbers them; the last one is final). */
static int reply_part(mdg_msg *m, int64_t i)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_int(p, "i", i);
    return i + 1 < WINDOW_STREAM ? mdg_msg_reply_more(m, p, NULL, 0) : mdg_msg_reply(m, p, NULL, 0);
}

/* Parts sent before the first refusal; *rc gets it. */
static int64_t reply_until_refused(mdg_msg *m, int64_t from, int *rc)
{
    int64_t i = from;
    while (i < WINDOW_STREAM && (*rc = reply_part(m, i)) == 0)
        i++;
    return i - from;
}

static const mdg_cmd node_cmds[] = {
    {"echo", n_echo, NULL, 0},
    {"stream", n_stream, NULL, MDG_CMD_NEEDS_REPLY},
    {"keep", n_keep, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* ------------------------------------------------------------------ helpers */

static mdg_params *to_node(const mdg_keys *nkeys)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_bytes(p, "node", mdg_keys_public(nkeys), 32);
    return p;
}

/* The slowest of n calls to the node (ms), or -1 when one failed. */
static int64_t normal_calls(mdg_conn *c, const mdg_keys *nkeys, int n)
{
    int64_t worst = 0;
    for (int i = 0; i < n; i++) {
        mdg_msg *r = NULL;
        int64_t t0 = mdg_now_ms();
        int rc = mdg_conn_call(c, "echo", to_node(nkeys), NULL, 0, 5000, &r);
        mdg_msg_destroy(&r);
        if (rc) {
            fprintf(stderr, "normal call %d failed: %s\n", i, mdg_last_error());
            return -1;
        }
        if (mdg_now_ms() - t0 > worst)
            worst = mdg_now_ms() - t0;
    }
    return worst;
}

/* A raw CURVE DEALER in the user role: it says hello, then only sends. */
static void *raw_user(void *ctx, const mdg_broker *b, const mdg_keys *bkeys, const mdg_keys *keys)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    char ep[64];
    int linger = 0, hwm = 0;
    zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, mdg_keys_public(bkeys), 32);
    zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, mdg_keys_public(keys), 32);
    zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, mdg_keys_secret(keys), 32);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", mdg_broker_port(b));
    zmq_connect(s, ep);
    return s;
}

static void raw_send(void *s, int kind, uint64_t seq, uint64_t corr, const char *cmd, const mdg_params *p)
{
    mdg_header h = {.kind = (uint8_t)kind, .seq = seq, .corr = corr};
    zmq_msg_t pm, head;
    mdg_header_set_command(&h, cmd);
    mdg_params_encode(p, &pm);
    mdg_wire_encode_head(&h, zmq_msg_data(&pm), zmq_msg_size(&pm), &head);
    zmq_msg_close(&pm);
    zmq_msg_send(&head, s, 0);
}

/* The node's library logs each pause it is told of: counted here, not
 * looked up in the shared log buffer, which a busy run may fill first. */
static atomic_int pauses;
static void count_pauses(int level, const char *text, void *arg)
{
    if (strstr(text, "says pause for call"))
        atomic_fetch_add(&pauses, 1);
    t_log_fn(level, text, arg);
}

static atomic_int notices;
static void on_notice(const char *command, const char *text, void *arg)
{
    (void)arg;
    if (strstr(text, "may not have reached node"))
        atomic_fetch_add(&notices, 1);
    else
        fprintf(stderr, "notice for '%s': %s\n", command, text);
}

typedef struct answers {
    atomic_int replies, errors;
} answers;

static void on_answer(mdg_msg *r, void *arg)
{
    answers *a = arg;
    atomic_fetch_add(mdg_msg_is_error(r) ? &a->errors : &a->replies, 1);
}

int main(void)
{
    mdg_set_log(count_pauses, NULL, MDG_LOG_DEBUG);
    mdg_keys *bkeys = NULL, *nkeys = NULL, *ukeys = NULL, *fkeys = NULL, *n2keys = NULL;
    mdg_keys_new(&bkeys);
    mdg_keys_new(&nkeys);
    mdg_keys_new(&ukeys);
    mdg_keys_new(&fkeys);
    mdg_keys_new(&n2keys);
    mdg_broker *b = NULL;
    mdg_broker_options bo = {.bind_address = "127.0.0.1", .queue_limit = QUEUE, .node_grace_ms = 300};
    CHECK_RC(mdg_broker_new(&b, bkeys, &bo), 0);
    mdg_broker_allow(b, mdg_keys_public(nkeys), MDG_ROLE_NODE);
    mdg_broker_allow(b, mdg_keys_public(n2keys), MDG_ROLE_NODE);
    mdg_broker_allow(b, mdg_keys_public(ukeys), MDG_ROLE_USER);
    mdg_broker_allow(b, mdg_keys_public(fkeys), MDG_ROLE_USER);
    CHECK_RC(mdg_broker_start(b), 0);

    mdg_conn_options no = {.port = mdg_broker_port(b), .reflect_errors = true};
    mdg_conn *node = NULL, *user = NULL;
    CHECK_RC(mdg_conn_new_with_keys(&node, "127.0.0.1", mdg_keys_public(bkeys), nkeys, &no), 0);
    mdg_conn_register_commands(node, node_cmds, NULL);
    CHECK_RC(mdg_conn_start(node), 0);
    mdg_conn_options uo = {.port = mdg_broker_port(b)};
    CHECK_RC(mdg_conn_new_with_keys(&user, "127.0.0.1", mdg_keys_public(bkeys), ukeys, &uo), 0);
    CHECK_RC(mdg_conn_start(user), 0);
    CHECK_RC(mdg_conn_wait_until_ready(node, 5000), 0);
    CHECK_RC(mdg_conn_wait_until_ready(user, 5000), 0);
    int64_t alone = normal_calls(user, nkeys, 20);
    printf("alone: slowest of 20 calls to the node %lld ms\n", (long long)alone);
    CHECK(alone >= 0);

    /* a. the flooder: 20000 calls, never a read */
    void *ctx = zmq_ctx_new();
    void *flood = raw_user(ctx, b, bkeys, fkeys);
    mdg_params *hello = mdg_params_new();
    raw_send(flood, MDG_K_HELLO, 0, 0, "", hello);
    mdg_params_destroy(&hello);
    for (uint64_t i = 1; i <= 20000; i++) {
        mdg_params *p = to_node(nkeys);
        raw_send(flood, MDG_K_CMD, i, i, "echo", p);
        mdg_params_destroy(&p);
    }
    int64_t worst = normal_calls(user, nkeys, 20);
    printf("beside a flooder that never reads: slowest of 20 calls %lld ms (bounded by 5000)\n", (long long)worst);
    CHECK(worst >= 0);
    zmq_close(flood);

    /* b. a caller that stops reading a stream: that channel pauses, the
     * node serves others, and nothing of the stream is lost */
    mdg_conn *reader_c = NULL;
    t_reader rd = {.hold = 1};
    CHECK_RC(mdg_conn_new_with_keys(&reader_c, "127.0.0.1", mdg_keys_public(bkeys), fkeys, &uo), 0);
    CHECK_RC(mdg_conn_start(reader_c), 0);
    CHECK_RC(mdg_conn_wait_until_ready(reader_c, 5000), 0);
    t_clear_log();
    CHECK_RC(mdg_conn_send_cb(reader_c, "stream", to_node(nkeys), NULL, 0, t_on_part, &rd), 0);
    WAIT_FOR(atomic_load(&pauses) > 0, 20000);
    CHECK(atomic_load(&pauses) > 0);
    worst = normal_calls(user, nkeys, 20);
    printf("beside a stalled stream reader: slowest of 20 calls %lld ms; stream thread still waiting: %s\n",
           (long long)worst, atomic_load(&st.result) ? "no" : "yes");
    CHECK(worst >= 0);
    CHECK(atomic_load(&st.result) == 0); /* paused: neither done nor failed */
    /* mdg.* names are the broker's word to a node: a user cannot send one
     * through the broker to end (or pause) someone else's call */
    mdg_params *forged = to_node(nkeys);
    mdg_params_set_int(forged, "call", (int64_t)st.m->h.corr);
    mdg_params_set_str(forged, "state", "end");
    mdg_msg *fr = NULL;
    CHECK_RC(mdg_conn_call(user, "mdg.flow", forged, NULL, 0, 5000, &fr), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "reserved") != NULL);
    printf("a user's forged 'mdg.flow' to the node: %s\n", mdg_last_error());
    atomic_store(&rd.hold, 0);
    WAIT_FOR(atomic_load(&rd.done), 60000);
    if (atomic_load(&st.started))
        pthread_join(st.t, NULL);
    printf("stalled reader reads again: %ld of %d replies in order (%ld out of order, %d errors); stream thread "
           "result %d\n", atomic_load(&rd.next), STREAM, atomic_load(&rd.bad), atomic_load(&rd.errors),
           atomic_load(&st.result));
    CHECK(atomic_load(&rd.next) == STREAM && atomic_load(&rd.bad) == 0 && atomic_load(&rd.errors) == 0);
    CHECK(atomic_load(&st.result) == 1);
    mdg_conn_destroy(&reader_c);

    /* c. a node that goes away (its link drops, no goodbye) while a user
     * with a small queue has thousands of calls for it */
    void *gone = raw_user(ctx, b, bkeys, n2keys);
    mdg_params *nh = mdg_params_new();
    mdg_header hh;
    raw_send(gone, MDG_K_HELLO, 0, 0, "", nh);
    mdg_params_destroy(&nh);
    zmq_pollitem_t it = {.socket = gone, .events = ZMQ_POLLIN};
    CHECK(zmq_poll(&it, 1, 5000) == 1); /* its welcome: the node has a session */
    (void)hh;
    mdg_conn *caller = NULL;
    answers an = {0};
    mdg_conn_options co = {.port = mdg_broker_port(b), .queue_limit = 5000};
    CHECK_RC(mdg_conn_new_with_keys(&caller, "127.0.0.1", mdg_keys_public(bkeys), ukeys, &co), 0);
    mdg_conn_set_error_handler(caller, on_notice, NULL);
    CHECK_RC(mdg_conn_start(caller), 0);
    CHECK_RC(mdg_conn_wait_until_ready(caller, 5000), 0);
    for (int i = 0; i < 10; i++) /* fire-and-forget: the node never acknowledges them */
        CHECK_RC(mdg_conn_send(caller, "echo", to_node(n2keys), NULL, 0), 0);
    enum { CALLS = 3000 };
    for (int i = 0; i < CALLS; i++)
        CHECK_RC(mdg_conn_send_cb(caller, "echo", to_node(n2keys), NULL, 0, on_answer, &an), 0);
    zmq_close(gone); /* gone without a goodbye: the broker waits node_grace_ms, then fails its calls */
    WAIT_FOR(atomic_load(&an.replies) + atomic_load(&an.errors) == CALLS && atomic_load(&notices) == 10, 30000);
    printf("node gone with %d calls pending for it: %d replies, %d errors, %d missing; %d of 10 fire-and-forget "
           "senders told\n", CALLS, atomic_load(&an.replies), atomic_load(&an.errors),
           CALLS - atomic_load(&an.replies) - atomic_load(&an.errors), atomic_load(&notices));
    CHECK(atomic_load(&an.errors) == CALLS);
    CHECK(atomic_load(&notices) == 10);
    mdg_conn_destroy(&caller);

    /* d. a node whose link to the broker stalls (no acknowledgement comes
     * back) with two calls kept: each call's stream stops at its window,
     * far below queue_limit, and each has its own */
    mdg_keys *n3keys = NULL;
    mdg_keys_new(&n3keys);
    mdg_broker_allow(b, mdg_keys_public(n3keys), MDG_ROLE_NODE);
    faultproxy *fp = fp_new(mdg_broker_port(b));
    mdg_conn_options wo = {.port = fp_port(fp), .nonblocking = true};
    mdg_conn *wnode = NULL;
    CHECK_RC(mdg_conn_new_with_keys(&wnode, "127.0.0.1", mdg_keys_public(bkeys), n3keys, &wo), 0);
    mdg_conn_register_commands(wnode, node_cmds, NULL);
    CHECK_RC(mdg_conn_start(wnode), 0);
    CHECK_RC(mdg_conn_wait_until_ready(wnode, 5000), 0);
    t_reader wr[2] = {0};
    for (int k = 0; k < 2; k++)
        CHECK_RC(mdg_conn_send_cb(user, "keep", to_node(n3keys), NULL, 0, t_on_part, &wr[k]), 0);
    WAIT_FOR(atomic_load(&n_kept) == 2, 10000);
    CHECK(atomic_load(&n_kept) == 2);
    if (atomic_load(&n_kept) == 2) {
        fp_stall(fp, 1);
        int64_t sent[2];
        int rc[2];
        for (int k = 0; k < 2; k++) {
            sent[k] = reply_until_refused(kept[k], 0, &rc[k]);
            printf("link stalled: call %d took %lld replies, then: %s\n", k, (long long)sent[k], mdg_last_error());
            CHECK_RC(rc[k], MDG_EAGAIN);
            CHECK(sent[k] == CALL_WINDOW);
            CHECK(strstr(mdg_last_error(), "replies to this call") != NULL);
        }
        fp_stall(fp, 0);
        /* the acknowledgements come back: both streams go on to the end,
         * retried where the window is full */
        int64_t deadline = mdg_now_ms() + 30000;
        while ((sent[0] < WINDOW_STREAM || sent[1] < WINDOW_STREAM) && mdg_now_ms() < deadline) {
            for (int k = 0; k < 2; k++) {
                sent[k] += reply_until_refused(kept[k], sent[k], &rc[k]);
                if (sent[k] < WINDOW_STREAM && rc[k] != MDG_EAGAIN) {
                    fprintf(stderr, "call %d, reply %lld: %s\n", k, (long long)sent[k], mdg_last_error());
                    deadline = 0;
                }
            }
            if (sent[0] < WINDOW_STREAM || sent[1] < WINDOW_STREAM)
                usleep(1000);
        }
        WAIT_FOR(atomic_load(&wr[0].done) && atomic_load(&wr[1].done), 30000);
        for (int k = 0; k < 2; k++) {
            printf("call %d: %lld sent, %ld of %d received in order (%ld out of order, %d errors)\n", k,
                   (long long)sent[k], atomic_load(&wr[k].next), WINDOW_STREAM, atomic_load(&wr[k].bad),
                   atomic_load(&wr[k].errors));
            CHECK(sent[k] == WINDOW_STREAM);
            CHECK(atomic_load(&wr[k].next) == WINDOW_STREAM && atomic_load(&wr[k].bad) == 0 &&
                  atomic_load(&wr[k].errors) == 0);
            mdg_msg_destroy(&kept[k]);
        }
    }
    mdg_conn_destroy(&wnode);
    fp_destroy(&fp);
    mdg_keys_destroy(&n3keys);

    zmq_ctx_term(ctx);
    mdg_conn_destroy(&user);
    mdg_conn_destroy(&node);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&nkeys);
    mdg_keys_destroy(&n2keys);
    mdg_keys_destroy(&ukeys);
    mdg_keys_destroy(&fkeys);
    return t_done("test_fairness");
}
