/* test_blocking_calls.c - mdg_conn_call from application threads, which
 * send and read their replies on the socket themselves while the
 * connection's loop thread sleeps: a long call must not hold up the
 * connection's handlers, replies must reach the right caller among many,
 * and a call must end when the connection is closed under it. */
#include "testutil.h"

#include <stdatomic.h>
#include <time.h>

#define SLOW_MS 3000


/* the broker's own command: the caller's number back */
static void h_echo(mdg_msg *m, void *arg)
{
    (void)arg;
    int64_t i = -1;
    mdg_params_get_int(mdg_msg_params(m), "i", &i);
    mdg_params *r = mdg_params_new();
    mdg_params_set_int(r, "i", i);
    mdg_msg_reply(m, r, NULL, 0);
}

/* the broker's slow command: answered SLOW_MS later, from a thread */
static pthread_t answerers[2];
static atomic_int n_answerers;

static void *answer_later(void *arg)
{
    usleep(SLOW_MS * 1000);
    mdg_msg *m = arg;
    mdg_msg_reply(m, NULL, NULL, 0); /* to a closed connection: logged by the broker */
    mdg_msg_destroy(&m);
    return NULL;
}

static void h_slow(mdg_msg *m, void *arg)
{
    (void)arg;
    int i = atomic_fetch_add(&n_answerers, 1);
    pthread_create(&answerers[i], NULL, answer_later, mdg_msg_keep(m));
}

static const mdg_cmd broker_cmds[] = {
    {"echo", h_echo, MDG_REQUIRE("i"), MDG_CMD_NEEDS_REPLY},
    {"slow", h_slow, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* the node under test answers pings on its loop thread */
static void h_ping(mdg_msg *m, void *arg)
{
    (void)arg;
    mdg_msg_reply(m, NULL, NULL, 0);
}

static const mdg_cmd node_cmds[] = {
    {"ping", h_ping, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

static mdg_conn *start_conn(mdg_broker *b, const mdg_keys *bkeys, const mdg_keys *keys, const mdg_cmd *cmds)
{
    mdg_conn *c = NULL;
    mdg_conn_options o = {.port = mdg_broker_port(b)};
    if (mdg_conn_new_with_keys(&c, "127.0.0.1", mdg_keys_public(bkeys), keys, &o) ||
        (cmds && mdg_conn_register_commands(c, cmds, NULL)) || mdg_conn_start(c) ||
        mdg_conn_wait_until_ready(c, 10000)) {
        fprintf(stderr, "cannot start a connection: %s\n", mdg_last_error());
        exit(2);
    }
    return c;
}

typedef struct echo_caller {
    mdg_conn *c;
    int base, n;
    atomic_int *wrong;
} echo_caller;

static void *call_echo(void *arg)
{
    echo_caller *e = arg;
    for (int k = 0; k < e->n; k++) {
        mdg_params *p = mdg_params_new();
        mdg_params_set_int(p, "i", e->base + k);
        mdg_msg *r = NULL;
        int64_t got = -1;
        if (mdg_conn_call(e->c, "echo", p, NULL, 0, 20000, &r) != 0 ||
            mdg_params_get_int(mdg_msg_params(r), "i", &got) != 0 || got != e->base + k) {
            fprintf(stderr, "echo %d: got %lld (%s)\n", e->base + k, (long long)got, mdg_last_error());
            atomic_fetch_add(e->wrong, 1);
        }
        mdg_msg_destroy(&r);
    }
    return NULL;
}

typedef struct cb_count {
    atomic_int ok, wrong;
} cb_count;

static void on_echo(mdg_msg *r, void *arg)
{
    cb_count *cc = arg;
    int64_t got = -1;
    if (!mdg_msg_is_error(r) && mdg_params_get_int(mdg_msg_params(r), "i", &got) == 0 && got >= 1000000)
        atomic_fetch_add(&cc->ok, 1);
    else
        atomic_fetch_add(&cc->wrong, 1);
}

int main(void)
{
    t_capture_log();
    mdg_keys *bkeys = NULL, *ukeys = NULL, *nkeys = NULL;
    mdg_keys_new(&ukeys);
    mdg_keys_new(&nkeys);
    mdg_broker *b = t_broker(&bkeys, broker_cmds, NULL, NULL, false);
    mdg_broker_allow(b, mdg_keys_public(ukeys), MDG_ROLE_USER);
    mdg_broker_allow(b, mdg_keys_public(nkeys), MDG_ROLE_NODE);

    mdg_conn *node = start_conn(b, bkeys, nkeys, node_cmds);
    mdg_conn *user = start_conn(b, bkeys, ukeys, NULL);

    /* 1. While an application thread of the node waits SLOW_MS for a reply,
     * the node's handlers still answer at once: the waiting thread must
     * give the socket back when a command for a handler comes. */
    t_call sc;
    t_call_start(&sc, node, "slow", NULL, 20000);
    /* The broker has the call: the node's thread is waiting for the reply. */
    WAIT_FOR(atomic_load(&n_answerers) == 1, 5000);
    CHECK(atomic_load(&n_answerers) == 1);
    int pings_before_slow_done = 0;
    for (int i = 0; i < 5; i++) {
        mdg_msg *r = NULL;
        CHECK_RC(mdg_conn_call(user, "ping", t_to_node(mdg_keys_public(nkeys)), NULL, 0, 10000, &r), 0);
        mdg_msg_destroy(&r);
        pings_before_slow_done += !atomic_load(&sc.done);
    }
    CHECK(pings_before_slow_done == 5);
    if (pings_before_slow_done != 5)
        fprintf(stderr, "the node answered %d of 5 pings while its slow call was under way\n",
                pings_before_slow_done);
    pthread_join(sc.t, NULL);
    CHECK(sc.rc == 0);

    /* 2. Many callers on one connection, and callback calls beside them:
     * every reply reaches its own caller. */
    atomic_int wrong = 0;
    echo_caller ec[4];
    pthread_t ts[4];
    cb_count cc = {0};
    for (int i = 0; i < 4; i++) {
        ec[i] = (echo_caller){.c = user, .base = i * 10000, .n = 300, .wrong = &wrong};
        pthread_create(&ts[i], NULL, call_echo, &ec[i]);
    }
    for (int k = 0; k < 300; k++) {
        mdg_params *p = mdg_params_new();
        mdg_params_set_int(p, "i", 1000000 + k);
        CHECK_RC(mdg_conn_send_cb(user, "echo", p, NULL, 0, on_echo, &cc), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(ts[i], NULL);
    WAIT_FOR(atomic_load(&cc.ok) + atomic_load(&cc.wrong) == 300, 20000);
    CHECK(atomic_load(&wrong) == 0);
    CHECK(atomic_load(&cc.ok) == 300 && atomic_load(&cc.wrong) == 0);

    /* 3. A call under way when another thread closes the connection ends
     * with MDG_ECLOSED, without waiting for the reply. */
    t_call sc2;
    t_call_start(&sc2, user, "slow", NULL, 20000);
    WAIT_FOR(atomic_load(&n_answerers) == 2, 5000);
    CHECK(atomic_load(&n_answerers) == 2);
    mdg_conn_disconnect(user);
    WAIT_FOR(atomic_load(&sc2.done), SLOW_MS - 500);
    CHECK(atomic_load(&sc2.done));
    pthread_join(sc2.t, NULL);
    CHECK(sc2.rc == MDG_ECLOSED);
    if (sc2.rc != MDG_ECLOSED)
        fprintf(stderr, "the call under a disconnect ended with %d: %s\n", sc2.rc, sc2.text);

    mdg_conn_destroy(&user);
    mdg_conn_destroy(&node);
    for (int i = 0; i < atomic_load(&n_answerers); i++)
        pthread_join(answerers[i], NULL);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&ukeys);
    mdg_keys_destroy(&nkeys);
    return t_done("test_blocking_calls");
}
