/* conn_queue.c - the connection's outgoing side. Messages are queued by
 * any thread (commands, and the replies of the application's handlers)
 * within the backlog limit (queue_limit), a window per call from the
 * broker (CALL_WINDOW) and the broker's word on a call's replies
 * (MDG_FLOW_COMMAND: pause, resume, end); the loop thread hands them in order
 * to the channel, which numbers them, sends them on the link and keeps them
 * until the broker acknowledges them. Beside them go the unnumbered
 * control messages: acknowledgements, keepalives, the goodbye. */
#include "conn_internal.h"

#include <stdlib.h>
#include <string.h>

/* Replies to one call in flight to the broker (queued or unacknowledged)
 * before a streaming thread waits: a node's link is one queue for all its
 * callers, so one call's stream must not fill it ahead of everybody else's
 * answers. 8 of the broker's ack batches keep a lone stream flowing. */
#define CALL_WINDOW 256

/* ------------------------------------------------------------- the queue */

/* The item's memory only (under lock). */
void conn_out_block_free_locked(mdg_conn *c, out_item *o)
{
    if (o->pooled)
        mdg_pool_free(&c->out_pool, o);
    else
        free(o);
}

void conn_out_free_locked(mdg_conn *c, out_item *o)
{
    zmq_msg_close(&o->m.params);
    if (o->m.has_bulk)
        zmq_msg_close(&o->m.bulk);
    conn_out_block_free_locked(c, o);
}

void conn_out_free(mdg_conn *c, out_item *o)
{
    pthread_mutex_lock(&c->lock);
    conn_out_free_locked(c, o);
    pthread_mutex_unlock(&c->lock);
}

pending *conn_pending_alloc_locked(mdg_conn *c)
{
    return mdg_pool_alloc(&c->pending_pool);
}

void conn_pending_free_locked(mdg_conn *c, pending *pd)
{
    mdg_pool_free(&c->pending_pool, pd);
}

/* Build an outgoing message; params taken, bulk copied. The params are
 * encoded into the item itself, one allocation for both: m.params is a
 * libzmq message over those bytes that owns nothing (no free function),
 * which is safe because every way out copies them into a frame of its own
 * (a head frame, or a 1.x frame). */
out_item *conn_out_alloc_locked(mdg_conn *c, size_t plen)
{
    bool pooled = plen <= OUT_POOLED_PARAMS;
    out_item *o = pooled ? mdg_pool_alloc(&c->out_pool) : calloc(1, sizeof *o + plen);
    if (o)
        o->pooled = pooled;
    return o;
}

int conn_out_new(mdg_conn *c, out_item **out, int kind, const char *command, uint64_t corr, uint32_t flags,
                 mdg_params *params, const void *bulk, size_t bulk_len)
{
    size_t plen = mdg_params_encoded_size(params);
    pthread_mutex_lock(&c->lock);
    out_item *o = conn_out_alloc_locked(c, plen);
    pthread_mutex_unlock(&c->lock);
    if (!o) {
        mdg_params_destroy(&params);
        return MDG_ENOMEM;
    }
    int rc = conn_out_build(c, o, kind, command, corr, flags, params, plen, bulk, bulk_len);
    if (rc == 0)
        *out = o;
    return rc;
}

int conn_out_build(mdg_conn *c, out_item *o, int kind, const char *command, uint64_t corr, uint32_t flags,
                   mdg_params *params, size_t plen, const void *bulk, size_t bulk_len)
{
    int rc;
    o->m.h.kind = (uint8_t)kind;
    o->m.h.corr = corr;
    o->m.h.flags = flags;
    mdg_params_write(params, o->params, plen);
    mdg_params_destroy(&params);
    if ((rc = mdg_header_set_command(&o->m.h, command)) != 0 ||
        zmq_msg_init_data(&o->m.params, o->params, plen, NULL, NULL) != 0) {
        pthread_mutex_lock(&c->lock);
        conn_out_block_free_locked(c, o);
        pthread_mutex_unlock(&c->lock);
        return rc ? rc : MDG_ENOMEM;
    }
    if (bulk_len) {
        o->m.has_bulk = true;
        zmq_msg_init_size(&o->m.bulk, bulk_len);
        memcpy(zmq_msg_data(&o->m.bulk), bulk, bulk_len);
    }
    return 0;
}

/* A reply to a command of a session that has been lost (under lock). */
static bool stale_reply(const mdg_conn *c, const out_item *o)
{
    return o->m.h.kind != MDG_K_CMD && o->epoch != c->epoch;
}

/* The replies to a call from the broker that are in the backlog (under lock). */
static size_t in_flight(const mdg_conn *c, const out_item *o)
{
    if (o->m.h.kind == MDG_K_CMD || !o->m.h.corr)
        return 0;
    return (size_t)(uintptr_t)mdg_map_get_u64(c->in_flight, o->m.h.corr);
}

/* A message enters (+1) or leaves (-1) the backlog (under lock). A call's
 * window counts the replies that say more follow: a call's final reply
 * ends it (and is most replies: one per call), so it needs no map entry. */
static void count_backlog(mdg_conn *c, const out_item *o, int delta)
{
    c->backlog += (size_t)(ptrdiff_t)delta;
    if (o->m.h.kind == MDG_K_CMD || !o->m.h.corr || !(o->m.h.flags & MDG_F_MORE))
        return;
    size_t n = in_flight(c, o);
    if (delta < 0 && n <= 1)
        mdg_map_take_u64(c->in_flight, o->m.h.corr);
    else if (delta > 0 || n) /* without memory the call's window is not kept: it only waits less */
        mdg_map_put_u64(c->in_flight, o->m.h.corr, (void *)(uintptr_t)(delta > 0 ? n + 1 : n - 1));
}

/* A queued or sent message is done with (under lock). */
static void out_release(mdg_conn *c, out_item *o)
{
    count_backlog(c, o, -1);
    conn_out_free_locked(c, o);
}

/* Queue a message for the loop thread to send, within the backlog limit
 * and the call's window: wait for room, or refuse with MDG_EAGAIN when
 * waiting is not allowed. */
int conn_enqueue(mdg_conn *c, out_item *o)
{
    /* a leader flushes it itself, and must not wait: it holds the drive */
    bool loop = conn_on_loop_thread(c) || conn_leads(c);
    pthread_mutex_lock(&c->lock);
    /* The loop thread is never refused: it cannot wait (the acks that make
     * room come through it), and refusing a handler's reply would lose it.
     * What handlers send per message they handle is bounded by their code;
     * long streams belong on another thread (mdg_msg_keep), which waits. */
    size_t limit = (size_t)c->opts.queue_limit;
    while (!loop && (c->backlog >= limit || in_flight(c, o) >= CALL_WINDOW) && !c->closing && !c->fail_err &&
           !stale_reply(c, o)) {
        if (c->opts.nonblocking) {
            bool full = c->backlog >= limit;
            size_t n = full ? c->backlog : in_flight(c, o);
            conn_out_free_locked(c, o);
            pthread_mutex_unlock(&c->lock);
            return full ? mdg_fail(MDG_EAGAIN, "would block: %zu messages await the broker's acknowledgement (queue_limit)", n)
                        : mdg_fail(MDG_EAGAIN, "would block: %zu replies to this call await the broker's acknowledgement", n);
        }
        pthread_cond_wait(&c->room_cond, &c->lock);
    }
    if (c->closing || c->fail_err || stale_reply(c, o)) {
        int rc = c->fail_err  ? mdg_fail(c->fail_err, "%s", c->fail_text)
                 : c->closing ? mdg_fail(MDG_ECLOSED, "connection closed")
                              : mdg_fail(MDG_ECLOSED, "the session this call came in on has ended (the broker "
                                                      "no longer knew it): its caller cannot be answered");
        conn_out_free_locked(c, o);
        pthread_mutex_unlock(&c->lock);
        return rc;
    }
    count_backlog(c, o, +1);
    bool was_empty = !c->out_head;
    if (c->out_tail)
        c->out_tail->m.next = &o->m;
    else
        c->out_head = o;
    c->out_tail = o;
    pthread_mutex_unlock(&c->lock);
    /* the loop thread's own (handlers' replies) go at the end of its turn,
     * together; another thread's wake the loop */
    if (!loop && was_empty)
        mdg_loop_wake(c->loop);
    return 0;
}

/* A session is lost: replies to its commands that are still queued must
 * not go to the new one (commands do). Under lock; how many were dropped. */
size_t conn_drop_stale_replies(mdg_conn *c)
{
    size_t n = 0;
    out_item **at = &c->out_head;
    c->out_tail = NULL;
    while (*at) {
        out_item *o = *at;
        if (stale_reply(c, o)) {
            *at = (out_item *)o->m.next;
            out_release(c, o);
            n++;
        } else {
            c->out_tail = o;
            at = (out_item **)&o->m.next;
        }
    }
    if (n)
        pthread_cond_broadcast(&c->room_cond);
    return n;
}

/* The channel is done with a message (acknowledged, or its session is
 * gone): its room goes back to the backlog. */
void conn_chan_release(void *owner, mdg_chan_msg *m)
{
    mdg_conn *c = owner;
    if (c->acking) { /* conn_acked holds the lock for the whole batch */
        out_release(c, (out_item *)m);
        return;
    }
    pthread_mutex_lock(&c->lock);
    out_release(c, (out_item *)m);
    c->room_made = true;
    pthread_mutex_unlock(&c->lock);
}

/* Wake the application threads waiting for room, once per batch. */
void conn_room_made(mdg_conn *c)
{
    if (!c->room_made)
        return;
    c->room_made = false;
    pthread_mutex_lock(&c->lock);
    pthread_cond_broadcast(&c->room_cond);
    pthread_mutex_unlock(&c->lock);
}

/* The broker has ours up to ack; room for more. */
void conn_acked(mdg_conn *c, uint64_t ack)
{
    pthread_mutex_lock(&c->lock); /* once for the batch, not per message */
    c->acking = true;
    if (mdg_chan_acked(&c->chan, ack))
        pthread_cond_broadcast(&c->room_cond);
    c->acking = false;
    pthread_mutex_unlock(&c->lock);
    conn_room_made(c);
}

static void want_pollout(mdg_conn *c, bool on)
{
    if (c->pollout != on && c->sock) {
        c->pollout = on;
        mdg_loop_set_events(c->loop, c->sock, -1, on ? ZMQ_POLLIN | ZMQ_POLLOUT : ZMQ_POLLIN);
    }
}

/* A message the link refused for good: it stays kept and goes again after
 * the reconnect (a link without acknowledgements drops it). */
static void cannot_send(const char *command)
{
    mdg_log(MDG_LOG_WARN, "cannot send %s%s%s now: %s", *command ? "'" : "a message", command, *command ? "'" : "",
            mdg_last_error());
}

/* A command queued before the broker's welcome said its max_message was
 * not checked against it when it was made: one too large is refused here,
 * before it has a number, and its call fails with the reason. */
static bool refused_queued(mdg_conn *c, out_item *o)
{
    if (o->m.h.kind != MDG_K_CMD ||
        conn_too_large(c, "a message", o->m.h.command_len, zmq_msg_size(&o->m.params),
                       o->m.has_bulk ? zmq_msg_size(&o->m.bulk) : 0) == 0)
        return false;
    char why[300], command[MDG_MAX_COMMAND + 1];
    snprintf(why, sizeof why, "%s", mdg_last_error());
    snprintf(command, sizeof command, "%s", o->m.h.command);
    uint64_t corr = o->m.h.corr;
    conn_chan_release(c, &o->m); /* as if the broker had it: its room is made */
    mdg_log(MDG_LOG_WARN, "'%s' not sent: %s", command, why);
    if (corr)
        conn_fail_call(c, corr, MDG_EINVAL, why);
    return true;
}

/* Send what is queued, in order, once the session is open: first what a
 * resume asked to send again, then the application's queue. On a full
 * socket queue the rest waits for POLLOUT. Loop thread only. */
void conn_flush(mdg_conn *c)
{
    int rc = 0;
    while (c->state == C_READY) {
        while ((rc = mdg_chan_flush(&c->chan)) != 0 && rc != MDG_EAGAIN)
            cannot_send("");
        if (rc == MDG_EAGAIN)
            break;
        /* then what the queue holds, a batch at a time: taken off it under
         * lock (other threads append) into the channel, which numbers them
         * and sends them together (one frame, one CURVE box) */
        mdg_chan_msg *batch[MDG_MAX_BATCH];
        size_t n = 0;
        pthread_mutex_lock(&c->lock);
        for (out_item *o = c->out_head; o && n < MDG_MAX_BATCH; o = c->out_head) {
            if (!(c->out_head = (out_item *)o->m.next))
                c->out_tail = NULL;
            batch[n++] = &o->m;
        }
        pthread_mutex_unlock(&c->lock);
        if (!n)
            break;
        for (size_t i = 0; i < n; i++)
            if (!refused_queued(c, (out_item *)batch[i]))
                mdg_chan_append(&c->chan, batch[i]);
    }
    if (c->state == C_READY && mdg_chan_ack_due(&c->chan)) /* nothing sent above carried it */
        conn_send_control(c, MDG_K_ACK, NULL);
    conn_room_made(c);
    want_pollout(c, rc == MDG_EAGAIN);
}

/* Unnumbered control messages (HELLO, ACK, BYE) go straight out, on a
 * link whose transport has them. */
void conn_send_control(mdg_conn *c, int kind, mdg_params *params)
{
    if (c->sock && c->transport->control)
        c->transport->control(c, kind, params);
    else
        mdg_params_destroy(&params);
}

static int on_ack_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_conn *c = arg;
    c->ack_timer = 0;
    if (mdg_chan_ack_owed(&c->chan) && c->state == C_READY)
        conn_send_control(c, MDG_K_ACK, NULL);
    return 0;
}

/* The broker has no libzmq heartbeats (they cost it O(n) per connection):
 * it takes a client silent for 3 heartbeats as gone, so an idle client
 * says something (an ACK) every heartbeat. */
int conn_on_keepalive(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_conn *c = arg;
    if (c->state == C_READY && mdg_now_ms() - c->last_tx >= c->opts.heartbeat_ms)
        conn_send_control(c, MDG_K_ACK, NULL);
    return 0;
}

/* Acknowledge what we received: after MDG_CHAN_ACK_EVERY messages at the
 * end of this turn (conn_flush), when nothing the turn sends carries it;
 * else a little later unless a message of ours carries it first. Not at
 * once: an ACK in the middle of a turn would send what the turn queued so
 * far as a frame of its own, and then the ACK, where one frame does. */
void conn_schedule_ack(mdg_conn *c)
{
    if (!mdg_chan_ack_due(&c->chan) && !c->ack_timer)
        c->ack_timer = mdg_loop_timer(c->loop, MDG_CHAN_ACK_DELAY_MS, false, on_ack_timer, c);
}

/* ----------------------------------------------------------- replying */

/* Queue a reply to a message from the broker, as it is. */
int conn_queue_reply(mdg_msg *m, int kind, uint32_t flags, mdg_params *results, const void *bulk,
                     size_t bulk_len)
{
    mdg_conn *c = m->owner;
    out_item *o;
    if (m->h.corr == 0) { /* nobody waits for it: the failure stays here */
        const char *text = "";
        mdg_params_get_str(results, "error", &text);
        mdg_log(MDG_LOG_WARN, "handler for '%s' failed: %s", m->h.command, text);
        mdg_params_destroy(&results);
        return 0;
    }
    char why[300] = "";
    if (conn_too_large(c, "a reply", 0, mdg_params_encoded_size(results), bulk_len) != 0) {
        /* the caller hears why in its place, and its call ends */
        snprintf(why, sizeof why, "%s", mdg_last_error());
        mdg_log(MDG_LOG_WARN, "reply to '%s' not sent: %s", m->h.command, why);
        mdg_params_destroy(&results);
        if ((results = mdg_params_new()) && mdg_params_set_str(results, "error", why) != 0)
            mdg_params_destroy(&results);
        if (!results)
            return mdg_fail(MDG_EINVAL, "%s", why);
        kind = MDG_K_ERROR;
        flags = 0;
        bulk_len = 0;
    }
    int rc = conn_out_new(c, &o, kind, "", m->h.corr, flags, results, bulk, bulk_len);
    if (rc == 0) {
        o->epoch = m->epoch;
        rc = conn_enqueue(c, o);
    }
    return *why ? mdg_fail(MDG_EINVAL, "%s", why) : rc;
}

/* Replies to a call the broker paused (its caller is not reading) wait
 * for room on application threads (MDG_EAGAIN with nonblocking); the loop
 * thread cannot wait and goes on (the broker keeps them, within its bound).
 * A call the broker ended fails here, so that a node streaming to a caller
 * that has gone or stopped reading learns it and stops. */
static int flow_wait(mdg_conn *c, uint64_t corr)
{
    bool loop = conn_on_loop_thread(c);
    void *st;
    int rc = 0;
    pthread_mutex_lock(&c->lock);
    while ((st = mdg_map_get_u64(c->flow, corr)) == FLOW_PAUSED && !loop && !c->closing && !c->fail_err) {
        if (c->opts.nonblocking) {
            rc = mdg_fail(MDG_EAGAIN, "would block: the broker paused this call's replies (its caller is not reading)");
            break;
        }
        pthread_cond_wait(&c->room_cond, &c->lock);
    }
    if (st == FLOW_ENDED)
        rc = mdg_fail(MDG_ECLOSED, "the broker ended this call: its caller has gone or is not reading");
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* The broker's word about one of the calls it sent us (MDG_FLOW_COMMAND). */
void conn_on_flow(mdg_conn *c, const mdg_msg *m)
{
    int64_t call = 0;
    const char *state = "", *reason = "";
    mdg_params_get_int(m->params, "call", &call);
    mdg_params_get_str(m->params, "state", &state);
    mdg_params_get_str(m->params, "reason", &reason);
    if (call <= 0)
        return;
    pthread_mutex_lock(&c->lock);
    if (strcmp(state, "pause") == 0) {
        mdg_map_put_u64(c->flow, (uint64_t)call, FLOW_PAUSED);
    } else if (strcmp(state, "end") == 0) {
        mdg_map_put_u64(c->flow, (uint64_t)call, FLOW_ENDED);
        uint64_t old = mdg_ring_push(&c->flow_ended, (uint64_t)call);
        if (old && mdg_map_get_u64(c->flow, old) == FLOW_ENDED)
            mdg_map_take_u64(c->flow, old);
    } else if (mdg_map_get_u64(c->flow, (uint64_t)call) == FLOW_PAUSED) { /* resume */
        mdg_map_take_u64(c->flow, (uint64_t)call);
    }
    pthread_cond_broadcast(&c->room_cond);
    pthread_mutex_unlock(&c->lock);
    if (strcmp(state, "end") == 0)
        mdg_log(MDG_LOG_WARN, "the broker ended call %lld: %s", (long long)call, reason);
    else
        mdg_log(MDG_LOG_DEBUG, "the broker says %s for call %lld", state, (long long)call);
}

/* Replies of the application's handlers: a failure's text goes back only
 * with reflect_errors (the original Python Messidge's reflect_value_errors). */
int conn_send_reply(mdg_msg *m, int kind, uint32_t flags, mdg_params *results, const void *bulk,
                    size_t bulk_len)
{
    mdg_conn *c = m->owner;
    int rc = m->h.corr ? flow_wait(c, m->h.corr) : 0;
    if (rc) {
        mdg_params_destroy(&results);
        return rc;
    }
    if (kind == MDG_K_ERROR && m->h.corr && !c->opts.reflect_errors) {
        /* The text stays here; the caller still learns that it failed. */
        const char *text = "";
        mdg_params_get_str(results, "error", &text);
        mdg_log(MDG_LOG_WARN, "handler for '%s' failed: %s", m->h.command, text);
        mdg_params_destroy(&results);
        results = mdg_params_new();
        if (results)
            mdg_params_set_str(results, "error", "the handler failed (errors are not reflected)");
    }
    return conn_queue_reply(m, kind, flags, results, bulk, bulk_len);
}
