/* test_links.c - a live session's links going wrong, through a fault proxy:
 *
 * - hundreds of failed reconnects in a row (each new link reset by the
 *   proxy) and the client still comes back and resumes its session: every
 *   link it throws away is freed (libzmq frees a monitored socket only if
 *   its monitor is stopped first; else the connection's context runs out of
 *   sockets after ~340 links and it never connects again). */
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

int main(void)
{
    t_capture_log();
    test_many_failed_links();
    return t_done("test_links");
}
