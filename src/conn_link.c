/* conn_link.c - the connection's link to the broker: the DEALER socket
 * (its limits; its security is the transport's), made by us on every
 * reconnect and never by libzmq; its monitor; the transport's hello first
 * on each new link; a new link after a backoff when one drops; and what a
 * failed handshake means: a key refused, a broker at its connection limit,
 * a peer that speaks another protocol; given several brokers, the next one
 * when this one stays unreachable (failover). Loop thread only. */
#include "conn_internal.h"

#include <errno.h>
#include <sodium.h>
#include <string.h>


/* discard: the link is dead, drop what libzmq still holds (it is in our
 * resend buffer); else let libzmq flush it (the goodbye) for a while. */
void conn_close_socket(mdg_conn *c, bool discard)
{
    if (c->sock) {
        int zero = 0;
        mdg_loop_unwatch(c->loop, c->sock, -1);
        /* Stop the monitor before closing either socket: libzmq 4.3.4
         * sends monitor events blocking, so an event for a closing socket
         * whose monitor reader is gone blocks the thread that emits it
         * (libzmq#3575). Each closed link's sockets then stay unreaped (the
         * context runs out of sockets after ~340 reconnects: EMFILE) or
         * the context's I/O thread hangs, and no link is ever made again. */
        zmq_socket_monitor(c->sock, NULL, 0);
        if (discard)
            zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(c->sock);
        c->sock = NULL;
    }
    if (c->mon) {
        mdg_loop_unwatch(c->loop, c->mon, -1);
        zmq_close(c->mon);
        c->mon = NULL;
    }
    c->pollout = false;
    c->handshaken = false;
    conn_drop_rx(c);
}

/* Several brokers: the link to this one has been down failover_ms, so
 * the next one, in turn. A broker given a session keeps it for its grace
 * only: one away longer has lost it anyway, and another gives a new one
 * (conn_session_open says MDG_EV_LOST). */
static void next_broker_if_due(mdg_conn *c)
{
    int64_t now = mdg_now_ms();
    if (c->n_brokers < 2 || !c->down_since || now - c->down_since < c->opts.failover_ms)
        return;
    const conn_broker *br = &c->brokers[(c->broker_at + 1) % c->n_brokers];
    mdg_log(MDG_LOG_WARN, "no session at %s: trying %s", c->endpoint, br->endpoint);
    pthread_mutex_lock(&c->lock);
    c->broker_at = (c->broker_at + 1) % c->n_brokers;
    memcpy(c->endpoint, br->endpoint, sizeof c->endpoint);
    memcpy(c->server_pk, br->pk, MDG_KEY_BYTES);
    pthread_mutex_unlock(&c->lock);
    c->down_since = now; /* its own failover_ms */
    c->attempt = 0;
    c->hs_closed = 0;
    c->hs_reset = 0;
}

/* A broker turned us down (why): with several, the next one at once, and
 * true; false when there is one, or every one did in a row (a verdict). */
static bool try_another_broker(mdg_conn *c, const char *why)
{
    if (c->n_brokers < 2 || ++c->refused_in_row >= c->n_brokers) {
        c->refused_in_row = 0;
        return false;
    }
    mdg_log(MDG_LOG_WARN, "%s: %s; trying another broker", c->endpoint, why);
    c->down_since = mdg_now_ms() - c->opts.failover_ms; /* due now */
    return true;
}

/* Time for a new link (after a backoff, or at once for a resync). */
static int on_reconnect_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_conn *c = arg;
    c->reconnect_timer = 0;
    if (c->sock)
        return 0;
    next_broker_if_due(c);
    if (conn_open_socket(c) != 0) {
        mdg_log(MDG_LOG_ERROR, "cannot remake the socket: %s", mdg_last_error());
        c->reconnect_timer = mdg_loop_timer(c->loop, c->opts.reconnect_max_ms, false, on_reconnect_timer, c);
        return 0;
    }
    c->transport->hello(c);
    return 0;
}

/* Say hello again (to resume, or learn the session is gone), on a new link,
 * and send nothing new until the welcome: what follows a hello must not
 * overtake the resend that the welcome starts. The old link is thrown away
 * with what libzmq still holds of ours (our resend buffer has it), so the
 * hello is the first thing on the new one: never dropped because the old
 * link's send queue is full (the session would then never come back), and
 * never behind messages the broker can only refuse one by one. */
void conn_resync(mdg_conn *c, const char *why)
{
    mdg_log(MDG_LOG_WARN, "%s: hello again on a new link", why);
    c->resyncing = true;
    pthread_mutex_lock(&c->lock);
    if (c->state == C_READY)
        c->state = C_RECONNECTING;
    pthread_mutex_unlock(&c->lock);
    conn_close_socket(c, true);
    if (c->reconnect_timer)
        mdg_loop_cancel(c->loop, c->reconnect_timer);
    on_reconnect_timer(c->loop, c, 0); /* makes the link and says hello */
}

/* The link dropped: throw the socket away and make a new one after a
 * backoff with jitter, so that many clients do not come back at once. */
void conn_link_lost(mdg_conn *c, const char *why)
{
    pthread_mutex_lock(&c->lock);
    bool was_ready = c->state == C_READY;
    if (c->state == C_READY || c->state == C_CONNECTING)
        c->state = C_RECONNECTING;
    pthread_mutex_unlock(&c->lock);
    conn_close_socket(c, true);
    long delay = c->opts.reconnect_min_ms;
    for (int i = 0; i < c->attempt && delay < c->opts.reconnect_max_ms; i++)
        delay *= 2;
    if (delay > c->opts.reconnect_max_ms)
        delay = c->opts.reconnect_max_ms;
    delay = delay / 2 + (long)randombytes_uniform((uint32_t)delay + 1); /* 50%..150% */
    c->attempt++;
    if (!c->down_since)
        c->down_since = mdg_now_ms();
    if (c->n_brokers > 1) { /* no later than the failover is due */
        long due = (long)(c->down_since + c->opts.failover_ms - mdg_now_ms());
        if (delay > due)
            delay = due > 0 ? due : 0;
    }
    if (was_ready)
        conn_event(c, MDG_EV_DISCONNECTED, why);
    if (c->reconnect_timer) /* one reconnect at a time */
        mdg_loop_cancel(c->loop, c->reconnect_timer);
    c->reconnect_timer = mdg_loop_timer(c->loop, (int)delay, false, on_reconnect_timer, c);
}

/* The session cannot be had (our key refused, another broker): every
 * waiter learns why (err, text). */
void conn_fatal(mdg_conn *c, int err, const char *text)
{
    pthread_mutex_lock(&c->lock);
    bool first = !c->had_session;
    if (!c->fail_err) {
        c->fail_err = err;
        snprintf(c->fail_text, sizeof c->fail_text, "%.*s (%s)", WHY_MAX, text, c->endpoint);
        mdg_log(MDG_LOG_ERROR, "%s", c->fail_text);
    }
    pthread_cond_broadcast(&c->state_cond);
    pthread_cond_broadcast(&c->room_cond);
    pthread_mutex_unlock(&c->lock);
    /* Before the first session links are still made now and then (a broker
     * being set up may admit us soon); a key refused on a reconnect is final. */
    if (!first)
        mdg_loop_stop(c->loop);
}

/* The broker refused the handshake for want of room (why), or reset every
 * link before it: never final, the link is made again with the usual
 * backoff. Before the first session wait_until_ready says so at once
 * (MDG_EBUSY) instead of timing out. */
static void broker_busy(mdg_conn *c, const char *why)
{
    pthread_mutex_lock(&c->lock);
    bool said = c->fail_err == MDG_EBUSY;
    if (!c->had_session && (!c->fail_err || said)) {
        c->fail_err = MDG_EBUSY;
        snprintf(c->fail_text, sizeof c->fail_text, "%.*s (%s); still retrying", WHY_MAX, why, c->endpoint);
        pthread_cond_broadcast(&c->state_cond);
    }
    pthread_mutex_unlock(&c->lock);
    if (!said)
        mdg_log(MDG_LOG_WARN, "%s (%s): retrying", why, c->endpoint);
}

/* A broker out of file descriptors resets every new link before its
 * handshake: that many in a row, before the first session, is reported as
 * MDG_EBUSY (a flaky network resets one now and then, not all of them). */
#define RESETS_BUSY_AFTER 5

/* A link that ended before its handshake completed. A single failure is
 * never a verdict: a reset or a cut can come at any point of a handshake,
 * and is retried on the normal schedule. Before the first session only
 * evidence a flaky network cannot produce makes MDG_EHANDSHAKE (and the
 * retries slow down to reconnect_max_ms): the peer names another security
 * mechanism than our transport's (transport->mismatch), or it ends the
 * handshake in order HS_VERDICT_AFTER times in a row (what that means is
 * the transport's: transport->closed_verdict). What each attempt saw is
 * kept for a timeout in mdg_conn_wait_until_ready. */
static void handshake_failed(mdg_conn *c, uint16_t ev, uint32_t value)
{
    char seen[200];
    const char *verdict = NULL; /* conclusive at once */
    bool in_order = false;      /* the peer ended the handshake: evidence */
    if (ev == ZMQ_EVENT_CLOSED) {
        snprintf(seen, sizeof seen, "no broker answered");
    } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL && value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
        verdict = c->transport->mismatch;
        snprintf(seen, sizeof seen, "%s", verdict);
    } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
        in_order = true;
        snprintf(seen, sizeof seen, "the handshake failed with ZMTP protocol error 0x%x", (unsigned)value);
    } else if (ev == ZMQ_EVENT_DISCONNECTED || (int)value == EPIPE) {
        /* DISCONNECTED alone: libzmq gave up on the peer's greeting (not
         * ZMTP 3); EPIPE: the peer closed the link in order */
        in_order = true;
        snprintf(seen, sizeof seen, "the peer closed the link during the %s handshake", c->transport->handshake);
    } else {
        snprintf(seen, sizeof seen, "the link failed during the handshake (%s)", zmq_strerror((int)value));
    }
    c->hs_closed = in_order ? c->hs_closed + 1 : 0;
    c->hs_reset = ev != ZMQ_EVENT_CLOSED && (int)value == ECONNRESET ? c->hs_reset + 1 : 0;
    mdg_log(MDG_LOG_INFO, "%s: %s; trying again", c->endpoint, seen);
    pthread_mutex_lock(&c->lock);
    c->links_failed++;
    snprintf(c->link_seen, sizeof c->link_seen, "%s", seen);
    pthread_mutex_unlock(&c->lock);
    if (!c->had_session && (verdict || c->hs_closed >= HS_VERDICT_AFTER) && !try_another_broker(c, seen)) {
        char text[300];
        if (verdict)
            snprintf(text, sizeof text, "%s", verdict);
        else
            c->transport->closed_verdict(c, text, sizeof text);
        conn_fatal(c, MDG_EHANDSHAKE, text);
        c->attempt = 30; /* retry now and then: the broker may be fixed */
    } else if (!c->had_session && c->hs_reset >= RESETS_BUSY_AFTER) {
        char text[120];
        snprintf(text, sizeof text, "the broker reset %d links in a row before the handshake (out of file "
                 "descriptors, or at its connection limit?)", c->hs_reset);
        broker_busy(c, text);
    }
    conn_link_lost(c, seen);
}

/* What the link's monitor saw: a handshake done or failed, the link
 * dropped. */
static int on_monitor(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_conn *c = arg;
    mdg_frames f;
    while (c->mon && mdg_frames_recv(c->mon, &f) == 0) {
        if (f.n < 1 || zmq_msg_size(&f.part[0]) < 6) {
            mdg_frames_close(&f);
            continue;
        }
        uint16_t ev;
        uint32_t value; /* an errno, a ZMQ_PROTOCOL_ERROR_*, an fd... */
        memcpy(&ev, zmq_msg_data(&f.part[0]), 2);
        memcpy(&value, (uint8_t *)zmq_msg_data(&f.part[0]) + 2, 4);
        mdg_frames_close(&f);
        switch (ev) {
        case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
            c->handshaken = true;
            c->hs_closed = 0;
            c->hs_reset = 0;
            break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: /* the broker said no */
            if (value == 500) { /* not to our key: it is full (docs/protocol.md 1.1) */
                broker_busy(c, "the broker is at its connection limit");
                conn_link_lost(c, "the broker is at its connection limit");
                return 0;
            }
            if (try_another_broker(c, "the broker refused our key")) { /* another may know us */
                conn_link_lost(c, "the broker refused our key");
                return 0;
            }
            conn_fatal(c, MDG_EAUTH, "the broker refused our key");
            /* before the first session, try again now and then: the key
             * may be admitted later */
            c->attempt = 30;
            conn_link_lost(c, "the broker refused our key");
            return 0;
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        case ZMQ_EVENT_DISCONNECTED:
        case ZMQ_EVENT_CLOSED:
            /* libzmq would reconnect only after an hour: we make the next
             * link (a new socket) ourselves, so that every link starts with
             * our hello and nothing of an old link reaches the broker on a
             * new one without it. */
            if (ev == ZMQ_EVENT_DISCONNECTED && c->handshaken) {
                conn_link_lost(c, "the link to the broker dropped");
                return 0; /* the monitor socket is gone */
            }
            handshake_failed(c, ev, value);
            return 0;
        default:
            break;
        }
    }
    return 0;
}

/* A socket option, or MDG_ESYS saying which. */
int conn_set_option(void *s, int opt, const void *v, size_t len)
{
    return zmq_setsockopt(s, opt, v, len) == 0 ? 0
                                               : mdg_fail(MDG_ESYS, "socket option %d: %s", opt, zmq_strerror(errno));
}

/* A new link: a socket with the transport's security and our limits, and
 * its monitor, both watched by the loop (libzmq connects in the
 * background; the transport's hello is queued first). */
int conn_open_socket(mdg_conn *c)
{
    /* No receive limit in libzmq: with heartbeats on, libzmq 4.3.4 aborts
     * (assert !_io_error, zeromq/libzmq#4364) when a link drops while its
     * receive pipe is full. What can queue here is bounded anyway: the
     * broker never has more than its queue_limit unacknowledged for us. */
    int hwm = MDG_SEND_HWM, unlimited = 0, linger = CLOSE_FLUSH_MS, rc;
    int hb_ivl = c->opts.heartbeat_ms, hb_timeout = 3 * c->opts.heartbeat_ms;
    /* We make each new link ourselves (on_monitor), so libzmq must not
     * reconnect this socket before we close it. Not -1 ("never"): then
     * libzmq ends the pipe when a link drops, and a message being read
     * frame by frame at that moment trips its assert (fq.cpp, !_more). */
    int no_reconnect = 3600 * 1000;
    int64_t maxmsg = MDG_MAX_FRAME + MDG_CURVE_OVERHEAD;
    char mon_ep[80];
    if (!(c->sock = zmq_socket(c->ctx, ZMQ_DEALER)))
        return mdg_fail(MDG_ESYS, "cannot create the socket: %s", zmq_strerror(errno));
    if ((c->transport->secure && (rc = c->transport->secure(c, c->sock))) ||
        (rc = conn_set_option(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm)) ||
        (rc = conn_set_option(c->sock, ZMQ_RCVHWM, &unlimited, sizeof unlimited)) ||
        (rc = conn_set_option(c->sock, ZMQ_LINGER, &linger, sizeof linger)) ||
        (rc = conn_set_option(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg)) ||
        (rc = conn_set_option(c->sock, ZMQ_RECONNECT_IVL, &no_reconnect, sizeof no_reconnect)) ||
        (rc = conn_set_option(c->sock, ZMQ_HEARTBEAT_IVL, &hb_ivl, sizeof hb_ivl)) ||
        (rc = conn_set_option(c->sock, ZMQ_HEARTBEAT_TIMEOUT, &hb_timeout, sizeof hb_timeout)))
        goto fail;
    /* The monitor says when the link drops and why a handshake failed
     * (refused key, wrong server key), so nothing just times out. Not
     * ZMQ_EVENT_CONNECTED: a socket makes one link (its handshake starts
     * unfinished), and that event would wake the loop thread in the middle
     * of the handshake for nothing. */
    snprintf(mon_ep, sizeof mon_ep, "inproc://mdg-monitor-%p-%u", (void *)c, ++c->sock_gen);
    if (zmq_socket_monitor(c->sock, mon_ep,
                           ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CLOSED |
                               ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0 ||
        !(c->mon = zmq_socket(c->ctx, ZMQ_PAIR)) || zmq_connect(c->mon, mon_ep) != 0) {
        rc = mdg_fail(MDG_ESYS, "cannot monitor the socket: %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_connect(c->sock, c->endpoint) != 0) {
        rc = mdg_fail(MDG_EINVAL, "cannot connect to %s: %s", c->endpoint, zmq_strerror(errno));
        goto fail;
    }
    if ((rc = mdg_loop_watch(c->loop, c->sock, -1, ZMQ_POLLIN, conn_on_socket, c)) ||
        (rc = mdg_loop_watch(c->loop, c->mon, -1, ZMQ_POLLIN, on_monitor, c)))
        goto fail;
    /* on_monitor reads it dry, or closes it with the link: not a
     * ZMQ_EVENTS system call before every sleep */
    mdg_loop_set_quiet(c->loop, c->mon);
    return 0;
fail:
    conn_close_socket(c, true);
    return rc;
}

