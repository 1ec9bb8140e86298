/* test_links.c - a live session's links going wrong, through a fault proxy:
 *
 * - hundreds of failed reconnects in a row (each new link reset by the
 *   proxy) and the client still comes back and resumes its session: every
 *   link it throws away is freed (libzmq frees a monitored socket only if
 *   its monitor is stopped first; else the connection's context runs out of
 *   sockets after ~340 links and it never connects again);
 * - the broker closes the session of a client whose link is up (its loop
 *   thread was busy past the heartbeats and the grace period) while the
 *   client's send queue is full: the client says hello again (on a new
 *   link, so the hello cannot be dropped for want of room), learns that
 *   its session is lost, and every message it sent is either delivered, in
 *   order, or counted in the MDG_EV_LOST notice. */
#include "faultproxy.h"
#include "internal.h"
#include "testutil.h"

#include <stdatomic.h>

typedef struct events {
    atomic_int n[5];
    pthread_mutex_t lock;
    char lost_detail[300];
} events;

static void on_event(mdg_conn *c, int ev, const char *detail, void *arg)
{
    (void)c;
    events *e = arg;
    if (ev == MDG_EV_LOST) {
        pthread_mutex_lock(&e->lock);
        snprintf(e->lost_detail, sizeof e->lost_detail, "%s", detail ? detail : "");
        pthread_mutex_unlock(&e->lock);
    }
    if (ev > 0 && ev < 5)
        atomic_fetch_add(&e->n[ev], 1);
}

static mdg_conn *client(int port, const mdg_keys *bkeys, const mdg_conn_options *base, const mdg_cmd *cmds,
                        void *cmd_arg, events *ev)
{
    mdg_keys *ck = NULL;
    mdg_conn *c = NULL;
    mdg_conn_options o = *base;
    o.port = port;
    if (mdg_keys_new(&ck) || mdg_conn_new_with_keys(&c, "127.0.0.1", mdg_keys_public(bkeys), ck, &o)) {
        fprintf(stderr, "cannot make a client: %s\n", mdg_last_error());
        exit(2);
    }
    mdg_keys_destroy(&ck);
    if (cmds)
        mdg_conn_register_commands(c, cmds, cmd_arg);
    mdg_conn_set_event_handler(c, on_event, ev);
    if (mdg_conn_start(c)) {
        fprintf(stderr, "cannot start a client: %s\n", mdg_last_error());
        exit(2);
    }
    return c;
}

/* ------------------------------------------------ many failed links */

#define FAILED_LINKS 400

static void test_many_failed_links(void)
{
    mdg_keys *bkeys = NULL;
    events ev = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mdg_broker *b = t_broker(&bkeys, NULL, NULL, NULL, true);
    faultproxy *fp = fp_new(mdg_broker_port(b));
    /* reconnect at once: the test is about the number of links, not time */
    mdg_conn_options o = {.reconnect_min_ms = 1, .reconnect_max_ms = 1};
    mdg_conn *c = client(fp_port(fp), bkeys, &o, NULL, NULL, &ev);
    CHECK_RC(mdg_conn_wait_until_ready(c, 10000), 0);

    fp_fail_next(fp, FAILED_LINKS, 0, 1);
    fp_cut(fp);
    int64_t t0 = mdg_now_ms();
    WAIT_FOR(atomic_load(&ev.n[MDG_EV_RECOVERED]) >= 1, 30000);
    printf("  %d failed links, then after %lld ms: %s\n", fp_failed(fp), (long long)(mdg_now_ms() - t0),
           atomic_load(&ev.n[MDG_EV_RECOVERED]) ? "session resumed" : "NOT resumed");
    CHECK(fp_failed(fp) == FAILED_LINKS);
    if (atomic_load(&ev.n[MDG_EV_RECOVERED]) < 1)
        fprintf(stderr, "the client did not come back within 30 s after %d failed links (cannot make a link: %s)\n",
                fp_failed(fp), t_logged("Too many open files") ? "yes, too many open files" : "no");
    CHECK(atomic_load(&ev.n[MDG_EV_RECOVERED]) == 1);
    CHECK(atomic_load(&ev.n[MDG_EV_LOST]) == 0);
    CHECK(!t_logged("Too many open files"));
    mdg_msg *r = NULL;
    CHECK_RC(mdg_conn_call(c, "no_such_command", NULL, NULL, 0, 5000, &r), MDG_EREMOTE);

    mdg_conn_destroy(&c);
    fp_destroy(&fp);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
}

/* ------------------------------- session closed with the send queue full */

#define SENDS 15000
#define BULK 1000

typedef struct sink {
    atomic_long first, next, got, bad; /* 'num' at the broker: in order from first */
    atomic_int closed;                 /* session_closed fired */
} sink;

static void b_num(mdg_msg *m, void *arg)
{
    sink *s = arg;
    int64_t i = -1;
    mdg_params_get_int(mdg_msg_params(m), "i", &i);
    if (atomic_fetch_add(&s->got, 1) == 0)
        atomic_store(&s->first, i);
    else if (i != atomic_load(&s->next))
        atomic_fetch_add(&s->bad, 1);
    atomic_store(&s->next, i + 1);
}

static const mdg_cmd broker_cmds[] = {
    {"num", b_num, MDG_REQUIRE("i"), 0},
    MDG_CMD_END,
};

static void b_closed(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *data, void *arg)
{
    (void)b;
    (void)pk;
    (void)data;
    atomic_store(&((sink *)arg)->closed, 1);
}

/* The client's loop thread is kept busy here until released (bounded). */
static atomic_int busy, release;

static void c_block(mdg_msg *m, void *arg)
{
    (void)m;
    (void)arg;
    atomic_store(&busy, 1);
    for (int i = 0; i < 20000 && !atomic_load(&release); i++)
        usleep(1000);
}

static const mdg_cmd client_cmds[] = {
    {"block", c_block, NULL, 0},
    MDG_CMD_END,
};

static void test_session_closed_queue_full(void)
{
    mdg_keys *bkeys = NULL;
    sink s = {0};
    events ev = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mdg_broker *b = NULL;
    mdg_broker_options bo = {.bind_address = "127.0.0.1", .session_grace_ms = 100};
    mdg_broker_hooks hooks = {.session_closed = b_closed};
    if (mdg_keys_new(&bkeys) || mdg_broker_new(&b, bkeys, &bo)) {
        fprintf(stderr, "cannot make a broker: %s\n", mdg_last_error());
        exit(2);
    }
    mdg_broker_set_commands(b, broker_cmds, &s);
    mdg_broker_set_hooks(b, &hooks, &s);
    mdg_broker_allow_any(b);
    CHECK_RC(mdg_broker_start(b), 0);
    faultproxy *fp = fp_new(mdg_broker_port(b));

    /* short heartbeats: the broker takes the client as gone after 2.5 s
     * (not shorter: the link itself must stay up on a busy machine) */
    mdg_conn_options o = {.heartbeat_ms = 500, .queue_limit = 2 * SENDS};
    mdg_conn *c = client(fp_port(fp), bkeys, &o, client_cmds, NULL, &ev);
    CHECK_RC(mdg_conn_wait_until_ready(c, 10000), 0);

    /* the client's loop thread goes busy; the broker detaches it as silent
     * and closes its session after the grace period, the link still up */
    size_t sid_len = 0;
    const uint8_t *sid = mdg_conn_session_id(c, &sid_len);
    CHECK_RC(mdg_broker_send_session(b, sid, sid_len, "block", NULL, NULL, 0), 0);
    WAIT_FOR(atomic_load(&busy), 10000);
    WAIT_FOR(atomic_load(&s.closed), 15000);
    CHECK(atomic_load(&s.closed));
    if (!atomic_load(&s.closed))
        fprintf(stderr, "the broker did not close the session of the busy client\n");

    /* meanwhile the application queues more than the link's send queue
     * holds; the proxy then lets it out slowly, so that the queue is still
     * full when the broker's "no session" comes back */
    static char bulk[BULK];
    for (int64_t i = 0; i < SENDS; i++) {
        mdg_params *p = mdg_params_new();
        mdg_params_set_int(p, "i", i);
        if (mdg_conn_send(c, "num", p, bulk, sizeof bulk) != 0) {
            fprintf(stderr, "send %lld: %s\n", (long long)i, mdg_last_error());
            CHECK(0);
            break;
        }
    }
    fp_throttle(fp, 2000);
    t_clear_log();
    atomic_store(&release, 1);

    /* the client says hello again and learns that its session is gone */
    int64_t t0 = mdg_now_ms();
    WAIT_FOR(atomic_load(&ev.n[MDG_EV_LOST]) >= 1, 15000);
    fp_throttle(fp, 0);
    CHECK(atomic_load(&ev.n[MDG_EV_LOST]) == 1);
    CHECK(t_logged("hello again"));
    if (atomic_load(&ev.n[MDG_EV_LOST]) < 1) {
        fprintf(stderr, "the client did not get a new session within 15 s of the broker's \"no session\" "
                        "(it tried to say hello again: %s)\n", t_logged("hello again") ? "yes" : "no");
        goto done;
    }
    printf("  session closed with a full send queue: lost after %lld ms\n", (long long)(mdg_now_ms() - t0));

    /* nothing vanished: what the lost session had sent is counted in the
     * notice, and all the rest arrives, in order, on the new session */
    long lost = -1;
    pthread_mutex_lock(&ev.lock);
    CHECK(sscanf(ev.lost_detail, "%*[^;]; %ld unacknowledged", &lost) == 1);
    printf("  lost notice: \"%s\"\n", ev.lost_detail);
    pthread_mutex_unlock(&ev.lock);
    WAIT_FOR(lost >= 0 && atomic_load(&s.got) == SENDS - lost, 30000);
    printf("  %ld delivered after the new hello, %ld reported undelivered, of %d\n", atomic_load(&s.got), lost,
           SENDS);
    CHECK(lost > 0 && lost < SENDS);
    CHECK(atomic_load(&s.got) == SENDS - lost);
    CHECK(atomic_load(&s.first) == lost);
    CHECK(atomic_load(&s.bad) == 0);
    mdg_msg *r = NULL;
    CHECK_RC(mdg_conn_call(c, "no_such_command", NULL, NULL, 0, 5000, &r), MDG_EREMOTE);
done:
    mdg_conn_destroy(&c);
    fp_destroy(&fp);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
}

int main(void)
{
    t_capture_log();
    test_many_failed_links();
    test_session_closed_queue_full();
    return t_done("test_links");
}
