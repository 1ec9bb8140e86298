/* identity_pg_listen.c - revocations reach a broker attached to a
 * PostgreSQL store at once, whoever made them (another broker, or
 * messidge-admin on another host): a connection of its own LISTENs on
 * PG_CHANNEL, and the broker's loop watches that connection's socket.
 * Each notification (revoke NOTIFYs in its transaction) makes the broker
 * read the revocation log from its cursor and close the sessions of the
 * keys revoked since ("key revoked"). The log, not the notifications, is
 * the truth: several notifications may be read at once, and a revocation
 * made while the connection was down is found by the catch-up that
 * follows every (re)connection. No timer polls the store.
 *
 * When the connection drops (the server restarted, an administrator ended
 * it) it is made again without blocking the loop (PQconnectStart and
 * PQconnectPoll, the socket watched for what libpq waits for), after
 * 50 ms and then twice as long each failed time, up to 5 s; every step is
 * logged. Everything here runs on the broker's loop thread but
 * pg_attach (before the broker runs) and pg_listener_free (after it). */
#include "identity_pg.h"

#include "broker_internal.h"

#include <stdlib.h>
#include <string.h>

#define RETRY_FIRST_MS 50
#define RETRY_MAX_MS 5000
/* A reconnection not listening after this long is given up and retried. */
#define CONNECT_DEADLINE_MS 10000

enum listen_state {
    IDLE,       /* no connection; a retry timer is set */
    CONNECTING, /* PQconnectPoll in progress */
    SUBSCRIBING, /* LISTEN sent, its answer awaited */
    LISTENING,
};

struct pg_listener {
    mdg_identity *id;
    mdg_broker *b;
    mdg_loop *loop;
    PGconn *conn;
    int fd; /* watched on the loop, or -1 */
    enum listen_state state;
    int retry_ms;
    int deadline_timer; /* while reconnecting, or 0 */
};

static int on_socket(mdg_loop *loop, void *arg, short revents);
static int on_retry(mdg_loop *loop, void *arg, short revents);

/* Watch the connection's current socket (libpq may change it while
 * connecting) for events. */
static int rewatch(pg_listener *l, short events)
{
    if (l->fd >= 0)
        mdg_loop_unwatch(l->loop, NULL, l->fd);
    l->fd = PQsocket(l->conn);
    if (l->fd < 0)
        return mdg_fail(MDG_EIO, "the revocation listener has no socket");
    return mdg_loop_watch(l->loop, NULL, l->fd, events, on_socket, l);
}

/* Drop the connection and try again later. */
static void lost(pg_listener *l, const char *why)
{
    char buf[512];
    pg_message(why && *why ? why : "connection closed", buf, sizeof buf);
    if (l->fd >= 0)
        mdg_loop_unwatch(l->loop, NULL, l->fd);
    l->fd = -1;
    PQfinish(l->conn);
    l->conn = NULL;
    if (l->deadline_timer)
        mdg_loop_cancel(l->loop, l->deadline_timer);
    l->deadline_timer = 0;
    mdg_log(MDG_LOG_WARN,
            "identity database %s: revocation listener %s (%s); connecting again in %d ms",
            l->id->where, l->state == LISTENING ? "lost" : "not connected", buf, l->retry_ms);
    l->state = IDLE;
    if (mdg_loop_timer(l->loop, l->retry_ms, false, on_retry, l) < 0)
        mdg_log(MDG_LOG_ERROR, "identity database %s: no room for a timer: revocations reach "
                "this broker no more", l->id->where);
    l->retry_ms = l->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : l->retry_ms * 2;
}

/* LISTEN is in place: read what was revoked while it was not. */
static void listening(pg_listener *l)
{
    if (l->deadline_timer)
        mdg_loop_cancel(l->loop, l->deadline_timer);
    l->deadline_timer = 0;
    if (l->retry_ms != RETRY_FIRST_MS)
        mdg_log(MDG_LOG_WARN, "identity database %s: revocation listener connected again",
                l->id->where);
    l->state = LISTENING;
    l->retry_ms = RETRY_FIRST_MS;
    identity_catch_up(l->id, l->b);
}

static int on_deadline(mdg_loop *loop, void *arg, short revents)
{
    pg_listener *l = arg;
    (void)loop;
    (void)revents;
    l->deadline_timer = 0;
    if (l->state != LISTENING && l->state != IDLE)
        lost(l, "timed out");
    return 0;
}

static int on_retry(mdg_loop *loop, void *arg, short revents)
{
    pg_listener *l = arg;
    const char *kw[8], *val[8];
    (void)loop;
    (void)revents;
    pg_conn_params(pg_of(l->id)->uri, "messidge revocations", kw, val);
    l->conn = PQconnectStartParams(kw, val, 1);
    l->state = CONNECTING;
    if (!l->conn || PQstatus(l->conn) == CONNECTION_BAD || PQsetnonblocking(l->conn, 1) != 0) {
        lost(l, l->conn ? PQerrorMessage(l->conn) : "out of memory");
        return 0;
    }
    l->deadline_timer = mdg_loop_timer(l->loop, CONNECT_DEADLINE_MS, false, on_deadline, l);
    /* libpq: before the first PQconnectPoll, wait until the socket is
     * writable. */
    if (rewatch(l, ZMQ_POLLOUT) != 0)
        lost(l, mdg_last_error());
    return 0;
}

/* One step of a non-blocking connection. */
static void connect_step(pg_listener *l)
{
    switch (PQconnectPoll(l->conn)) {
    case PGRES_POLLING_READING:
        if (rewatch(l, ZMQ_POLLIN) != 0)
            lost(l, mdg_last_error());
        return;
    case PGRES_POLLING_WRITING:
        if (rewatch(l, ZMQ_POLLOUT) != 0)
            lost(l, mdg_last_error());
        return;
    case PGRES_POLLING_OK:
        if (!PQsendQuery(l->conn, "LISTEN " PG_CHANNEL) || PQflush(l->conn) < 0) {
            lost(l, PQerrorMessage(l->conn));
            return;
        }
        l->state = SUBSCRIBING;
        if (rewatch(l, ZMQ_POLLIN) != 0)
            lost(l, mdg_last_error());
        return;
    default:
        lost(l, PQerrorMessage(l->conn));
        return;
    }
}

/* The answer to LISTEN: true once it came, whole and good. */
static bool subscribed(pg_listener *l)
{
    PGresult *r;
    while (!PQisBusy(l->conn) && (r = PQgetResult(l->conn)) != NULL) {
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            lost(l, PQresultErrorMessage(r));
        PQclear(r);
        if (!ok)
            return false;
    }
    return !PQisBusy(l->conn);
}

static int on_socket(mdg_loop *loop, void *arg, short revents)
{
    pg_listener *l = arg;
    PGnotify *n;
    bool any = false;
    (void)loop;
    (void)revents;

    if (l->state == CONNECTING) {
        connect_step(l);
        return 0;
    }
    if (PQflush(l->conn) < 0 || !PQconsumeInput(l->conn)) {
        lost(l, PQerrorMessage(l->conn));
        return 0;
    }
    if (l->state == SUBSCRIBING) {
        if (!subscribed(l))
            return 0; /* more to come, or lost */
        listening(l); /* it catches up: notifications read with it count for nothing more */
    }
    while ((n = PQnotifies(l->conn)) != NULL) {
        any = true;
        PQfreemem(n);
    }
    if (any)
        identity_catch_up(l->id, l->b);
    /* EOF is seen by the next PQconsumeInput; a connection that libpq
     * already knows to be dead is dropped now. */
    if (PQstatus(l->conn) == CONNECTION_BAD)
        lost(l, PQerrorMessage(l->conn));
    return 0;
}

/* After attaching: the revocations made since the cursor was read and
 * before LISTEN took effect, once the loop runs. */
static int first_catch_up(mdg_loop *loop, void *arg, short revents)
{
    pg_listener *l = arg;
    (void)loop;
    (void)revents;
    if (l->state == LISTENING)
        identity_catch_up(l->id, l->b);
    return 0;
}

int pg_attach(mdg_identity *id, mdg_broker *b)
{
    pg_store *s = pg_of(id);
    pg_listener *l;
    int rc;

    if (s->listener)
        return mdg_fail(MDG_ESTATE, "this identity store is attached to a broker already");
    if (!(l = calloc(1, sizeof *l)))
        return mdg_fail_plain(MDG_ENOMEM);
    *l = (pg_listener){.id = id, .b = b, .loop = b->loop, .fd = -1, .retry_ms = RETRY_FIRST_MS};
    /* The first connection is made here, blocking, so that a store that
     * cannot be listened to fails the caller rather than a log line. */
    if ((rc = pg_connect(id, "messidge revocations", &l->conn)) != 0 ||
        (rc = pg_run(id, l->conn, "LISTEN " PG_CHANNEL, 0, NULL, "cannot LISTEN", false, NULL)) ||
        (rc = PQsetnonblocking(l->conn, 1) == 0 ? 0
                                                : mdg_fail(MDG_EIO, "cannot make the listener "
                                                                    "non-blocking")) ||
        (rc = rewatch(l, ZMQ_POLLIN)) != 0) {
        pg_listener_free(l);
        return rc;
    }
    l->state = LISTENING;
    if (mdg_loop_timer(l->loop, 0, false, first_catch_up, l) < 0) {
        mdg_loop_unwatch(l->loop, NULL, l->fd);
        pg_listener_free(l);
        return mdg_fail(MDG_ENOMEM, "no room for a timer");
    }
    s->listener = l;
    return 0;
}

void pg_listener_free(pg_listener *l)
{
    /* The broker and its loop are gone (the store outlives the broker):
     * only the connection is left to close. */
    if (!l)
        return;
    PQfinish(l->conn);
    free(l);
}
