/* test_backpressure.c - the client's queue_limit: a sender faster than the
 * broker can take is held back (blocking send), or told at once with
 * MDG_EAGAIN (nonblocking), and every message it was allowed to send
 * arrives exactly once and in order. Also the broker pausing a node's
 * channel whose caller cannot take more: the node's stream thread waits
 * instead of losing replies. */
#include "internal.h"
#include "testutil.h"

#include <stdatomic.h>

#define LIMIT 50
#define SENDS 600

typedef struct sink {
    atomic_long next, bad;
} sink;

/* A slow broker handler: it acknowledges only what it has processed, so a
 * fast sender fills its queue_limit. */
static void h_slow_num(mdg_msg *m, void *arg)
{
    sink *s = arg;
    int64_t i = -1;
    mdg_params_get_int(mdg_msg_params(m), "i", &i);
    if (i != atomic_load(&s->next))
        atomic_fetch_add(&s->bad, 1);
    atomic_store(&s->next, i + 1);
    usleep(500);
}

static const mdg_cmd cmds[] = {
    {"num", h_slow_num, MDG_REQUIRE("i"), 0},
    MDG_CMD_END,
};

/* ---------------------------------------------- a node streaming to a user */

#define STREAM 3000

static void *streamer(void *arg)
{
    mdg_msg *m = arg;
    for (int64_t i = 0; i < STREAM; i++) {
        mdg_params *p = mdg_params_new();
        mdg_params_set_int(p, "i", i);
        int rc = i + 1 < STREAM ? mdg_msg_reply_more(m, p, NULL, 0) : mdg_msg_reply(m, p, NULL, 0);
        if (rc)
            fprintf(stderr, "stream %lld: %s\n", (long long)i, mdg_last_error());
    }
    mdg_msg_destroy(&m);
    return NULL;
}

static pthread_t stream_t;

static void n_stream(mdg_msg *m, void *arg)
{
    (void)arg;
    pthread_create(&stream_t, NULL, streamer, mdg_msg_keep(m));
}

static const mdg_cmd node_cmds[] = {
    {"stream", n_stream, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

int main(void)
{
    t_capture_log();
    sink s = {0};
    mdg_keys *bkeys = NULL, *ukeys = NULL, *nkeys = NULL;
    mdg_keys_new(&bkeys);
    mdg_keys_new(&ukeys);
    mdg_keys_new(&nkeys);
    mdg_broker *b = NULL;
    /* a small broker queue so that the paused node is reached quickly */
    mdg_broker_options bo = {.bind_address = "127.0.0.1", .queue_limit = 200};
    CHECK_RC(mdg_broker_new(&b, bkeys, &bo), 0);
    mdg_broker_set_commands(b, cmds, &s);
    mdg_broker_allow(b, mdg_keys_public(ukeys), MDG_ROLE_USER);
    mdg_broker_allow(b, mdg_keys_public(nkeys), MDG_ROLE_NODE);
    CHECK_RC(mdg_broker_start(b), 0);

    /* nonblocking: a sender past its limit is told at once */
    mdg_conn *c = NULL;
    mdg_conn_options o = {.port = mdg_broker_port(b), .queue_limit = LIMIT, .nonblocking = true};
    CHECK_RC(mdg_conn_new_with_keys(&c, "127.0.0.1", mdg_keys_public(bkeys), ukeys, &o), 0);
    CHECK_RC(mdg_conn_start(c), 0);
    CHECK_RC(mdg_conn_wait_until_ready(c, 5000), 0);
    long accepted = 0, refused = 0;
    for (int i = 0; i < SENDS; i++) {
        mdg_params *p = mdg_params_new();
        mdg_params_set_int(p, "i", accepted);
        int rc = mdg_conn_send(c, "num", p, NULL, 0);
        if (rc == 0)
            accepted++;
        else if (rc == MDG_EAGAIN)
            refused++;
    }
    CHECK(refused > 0);
    CHECK(strstr(mdg_last_error(), "queue_limit") != NULL);
    WAIT_FOR(atomic_load(&s.next) == accepted, 10000);
    printf("nonblocking: %ld accepted, %ld refused with MDG_EAGAIN; %ld processed in order (%ld out of order)\n",
           accepted, refused, atomic_load(&s.next), atomic_load(&s.bad));
    CHECK(atomic_load(&s.next) == accepted && atomic_load(&s.bad) == 0);
    mdg_conn_destroy(&c);

    /* blocking (the default): every send waits for room, none is refused */
    atomic_store(&s.next, 0);
    o.nonblocking = false;
    CHECK_RC(mdg_conn_new_with_keys(&c, "127.0.0.1", mdg_keys_public(bkeys), ukeys, &o), 0);
    CHECK_RC(mdg_conn_start(c), 0);
    CHECK_RC(mdg_conn_wait_until_ready(c, 5000), 0);
    int64_t t0 = mdg_now_ms();
    int failures = 0;
    for (int i = 0; i < SENDS; i++) {
        mdg_params *p = mdg_params_new();
        mdg_params_set_int(p, "i", i);
        if (mdg_conn_send(c, "num", p, NULL, 0) != 0)
            failures++;
    }
    WAIT_FOR(atomic_load(&s.next) == SENDS, 20000);
    printf("blocking: %d sent (%d failed) in %lld ms, %ld processed in order (%ld out of order)\n", SENDS, failures,
           (long long)(mdg_now_ms() - t0), atomic_load(&s.next), atomic_load(&s.bad));
    CHECK(failures == 0);
    CHECK(atomic_load(&s.next) == SENDS && atomic_load(&s.bad) == 0);

    /* a node streaming to a caller that stops reading: the broker asks
     * the node to pause that call (its stream thread waits) and nothing
     * is refused or lost (test_fairness: the node serves others meanwhile) */
    mdg_conn *node = NULL;
    mdg_conn_options no = {.port = mdg_broker_port(b), .queue_limit = 100};
    CHECK_RC(mdg_conn_new_with_keys(&node, "127.0.0.1", mdg_keys_public(bkeys), nkeys, &no), 0);
    mdg_conn_register_commands(node, node_cmds, NULL);
    CHECK_RC(mdg_conn_start(node), 0);
    CHECK_RC(mdg_conn_wait_until_ready(node, 5000), 0);
    t_reader rd = {.hold = 1};
    mdg_params *sp = mdg_params_new();
    mdg_params_set_bytes(sp, "node", mdg_keys_public(nkeys), 32);
    t_clear_log();
    CHECK_RC(mdg_conn_send_cb(c, "stream", sp, NULL, 0, t_on_part, &rd), 0);
    WAIT_FOR(t_logged("says pause for call"), 10000);
    CHECK(t_logged("says pause for call"));
    usleep(300000);
    CHECK(atomic_load(&rd.next) == 0); /* the reader is stalled... */
    atomic_store(&rd.hold, 0);         /* ...and now reads again */
    WAIT_FOR(atomic_load(&rd.done), 30000);
    pthread_join(stream_t, NULL);
    printf("paused node: %ld of %d stream replies in order (%ld out of order)\n", atomic_load(&rd.next), STREAM,
           atomic_load(&rd.bad));
    CHECK(atomic_load(&rd.next) == STREAM && atomic_load(&rd.bad) == 0);
    CHECK(!t_logged("not delivered"));

    mdg_conn_destroy(&c);
    mdg_conn_destroy(&node);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&ukeys);
    mdg_keys_destroy(&nkeys);
    return t_done("test_backpressure");
}
