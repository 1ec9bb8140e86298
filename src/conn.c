/* conn.c - the connection's public API, for users and nodes alike: making
 * one and its options, starting and stopping its loop thread, sends and
 * calls (pending calls, blocking and nested waits), waiting, disconnecting.
 *
 * A connection is one DEALER socket (conn_link.c) with CURVE (its transport,
 * conn_native.c), owned by a background loop thread. Application threads
 * never touch the socket: they encode their message, put it on a locked
 * queue and wake the loop, which numbers and sends it (conn_queue.c).
 * Replies are matched to pending calls by correlation id (conn_receive.c).
 * A blocking call made on the loop thread itself (from a handler or
 * callback) runs a nested wait that handles replies to blocking calls at
 * once and defers all else, so callbacks never nest and messages are
 * dispatched in arrival order.
 *
 * Reliability: every numbered message is kept until the broker acknowledges
 * it. When the link drops the socket is thrown away (so nothing stale
 * lingers in libzmq's queues), a new one is made after a backoff, and the
 * hello names the session and the last message received; the broker then
 * resends what we missed and we resend what it missed. Receivers drop
 * duplicates by sequence number: in order, exactly once. */
#include "conn_internal.h"

#include <errno.h>
#include <sodium.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------ set-up */

static int conn_alloc(mdg_conn **out, const char *location, const uint8_t server_pk[MDG_KEY_BYTES],
                      const mdg_keys *keys, const mdg_conn_options *opts)
{
    if (!out || !location || !*location || !server_pk || !keys)
        return mdg_fail(MDG_EINVAL, "a connection needs a location, keys and the broker's key");
    *out = NULL;
    if (sodium_init() < 0)
        return mdg_fail(MDG_ESYS, "libsodium failed to initialise");
    mdg_conn *c = calloc(1, sizeof *c);
    if (!c)
        return MDG_ENOMEM;
    if (opts)
        c->opts = *opts;
    mdg_conn_options *o = &c->opts;
    if (!o->port)
        o->port = MDG_DEFAULT_PORT;
    if (o->queue_limit <= 0)
        o->queue_limit = 10000;
    if (o->heartbeat_ms <= 0)
        o->heartbeat_ms = 2000;
    if (o->reconnect_min_ms <= 0)
        o->reconnect_min_ms = 100;
    if (o->reconnect_max_ms < o->reconnect_min_ms)
        o->reconnect_max_ms = o->reconnect_min_ms > 5000 ? o->reconnect_min_ms : 5000;
    if (o->failover_ms <= 0)
        o->failover_ms = 3000;
    int rc = conn_broker_set(&c->brokers[0], location, o->port, server_pk);
    if (rc) {
        free(c);
        return rc;
    }
    c->n_brokers = 1;
    memcpy(c->endpoint, c->brokers[0].endpoint, sizeof c->endpoint);
    memcpy(c->server_pk, server_pk, MDG_KEY_BYTES);
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->drive, NULL);
    /* a pipelining client has about a thousand calls in flight; at most
     * about 700 KiB are kept for the next burst */
    mdg_pool_init(&c->out_pool, sizeof(out_item) + OUT_POOLED_PARAMS, sizeof(out_item), 1024); /* params written whole */
    mdg_pool_init(&c->pending_pool, sizeof(pending), sizeof(pending), 1024);
    pthread_cond_init(&c->state_cond, NULL);
    pthread_cond_init(&c->room_cond, NULL);
    c->state = C_NEW;
    mdg_ring_init(&c->flow_ended, (size_t)o->queue_limit);
    /* the protocol, once: the rest of the connection calls through it */
    c->transport = o->legacy ? &conn_legacy_transport : &conn_native_transport;
    mdg_chan_init(&c->chan, c->transport->chan, c);
    if (mdg_keys_copy(&c->keys, keys) != 0 ||
        !(c->pending = mdg_map_new()) || !(c->flow = mdg_map_new()) ||
        !(c->in_flight = mdg_map_new()) || !(c->loop = mdg_loop_new())) {
        mdg_conn_destroy(&c);
        return mdg_fail(MDG_ENOMEM, "cannot allocate the connection");
    }
    rc = c->transport->init ? c->transport->init(c) : 0;
    if (rc) {
        mdg_conn_destroy(&c);
        return rc;
    }
    *out = c;
    return 0;
}

int mdg_conn_new_with_keys(mdg_conn **out, const char *location,
                           const uint8_t server_pk[MDG_KEY_BYTES], const mdg_keys *keys,
                           const mdg_conn_options *opts)
{
    return conn_alloc(out, location, server_pk, keys, opts);
}

int mdg_conn_new(mdg_conn **out, const char *location, const char *prefix,
                 const mdg_conn_options *opts)
{
    char loc[256];
    uint8_t spk[MDG_KEY_BYTES];
    mdg_keys *keys = NULL;
    int rc;
    if (!out)
        return MDG_EINVAL;
    if (!location) {
        if ((rc = mdg_default_location(loc, sizeof loc, prefix)) != 0)
            return rc;
        location = loc;
    }
    if ((rc = mdg_keys_load(&keys, location, prefix)) != 0)
        return rc;
    if ((rc = mdg_server_pk_load(spk, location, prefix)) == 0)
        rc = conn_alloc(out, location, spk, keys, opts);
    mdg_keys_destroy(&keys);
    return rc;
}

/* Configuration is only taken before the loop thread starts. */
static int before_start(const mdg_conn *c, const char *what)
{
    if (!c)
        return MDG_EINVAL;
    if (c->state != C_NEW)
        return mdg_fail(MDG_ESTATE, "%s before mdg_conn_start", what);
    return 0;
}

/* "tcp://location:port" and the broker's key into br. */
int conn_broker_set(conn_broker *br, const char *location, int port, const uint8_t pk[MDG_KEY_BYTES])
{
    if (!location || !*location || !pk)
        return mdg_fail(MDG_EINVAL, "a broker needs a location and its key");
    if (port < 1 || port > 65535)
        return mdg_fail(MDG_EINVAL, "port %d out of range", port);
    if (snprintf(br->endpoint, sizeof br->endpoint, "tcp://%s:%d", location, port) >= (int)sizeof br->endpoint)
        return mdg_fail(MDG_EINVAL, "location too long");
    memcpy(br->pk, pk, MDG_KEY_BYTES);
    return 0;
}

int mdg_conn_add_broker(mdg_conn *c, const char *location, int port, const uint8_t server_pk[MDG_KEY_BYTES])
{
    int rc = before_start(c, "add a broker");
    if (rc)
        return rc;
    if (c->opts.legacy) /* a Messidge 1.x broker is alone: no fleet to move to */
        return mdg_fail(MDG_EINVAL, "a legacy connection has one broker");
    if (c->n_brokers == CONN_BROKERS_MAX)
        return mdg_fail(MDG_EINVAL, "at most %d brokers", CONN_BROKERS_MAX);
    if ((rc = conn_broker_set(&c->brokers[c->n_brokers], location, port ? port : c->opts.port, server_pk)) != 0)
        return rc;
    c->n_brokers++;
    return 0;
}

int mdg_conn_register_commands(mdg_conn *c, const mdg_cmd *table, void *arg)
{
    int rc = before_start(c, "register commands");
    if (rc)
        return rc;
    c->cmds = table;
    c->cmd_arg = arg;
    return 0;
}

int mdg_conn_set_error_handler(mdg_conn *c, mdg_error_fn fn, void *arg)
{
    int rc = before_start(c, "set the error handler");
    if (rc)
        return rc;
    c->on_error = fn;
    c->err_arg = arg;
    return 0;
}

int mdg_conn_set_event_handler(mdg_conn *c, mdg_event_fn fn, void *arg)
{
    int rc = before_start(c, "set the event handler");
    if (rc)
        return rc;
    c->on_event = fn;
    c->ev_arg = arg;
    return 0;
}

const uint8_t *mdg_conn_session_id(const mdg_conn *c, size_t *len)
{
    if (len)
        *len = c ? c->session_id_len : 0;
    return c ? c->session_id : NULL;
}

bool conn_on_loop_thread(mdg_conn *c)
{
    return c->thread_started && pthread_equal(pthread_self(), c->thread);
}

/* The connection this thread leads, if any (see lead_begin). */
static _Thread_local mdg_conn *leading;

bool conn_leads(mdg_conn *c)
{
    return leading == c;
}

void conn_event(mdg_conn *c, int ev, const char *detail)
{
    static const char *names[] = {"?", "connected", "disconnected", "session recovered", "session lost"};
    mdg_log(ev == MDG_EV_LOST ? MDG_LOG_WARN : MDG_LOG_INFO, "%s: %s%s%s", c->endpoint, names[ev],
            detail ? ": " : "", detail ? detail : "");
    if (c->on_event)
        c->on_event(c, ev, detail, c->ev_arg);
}

/* --------------------------------------------------------- start / stop */

static int on_close_timer(mdg_loop *loop, void *arg, short revents);

/* Disconnecting: send what is queued, wait (bounded) for the broker to
 * acknowledge it, then say goodbye. Returns true when done. */
static bool close_step(mdg_conn *c)
{
    conn_flush(c);
    pthread_mutex_lock(&c->lock);
    bool queued = c->out_head != NULL, ready = c->state == C_READY;
    pthread_mutex_unlock(&c->lock);
    if ((queued || c->chan.head) && ready && mdg_now_ms() < c->close_deadline) {
        mdg_loop_timer(c->loop, 10, false, on_close_timer, c);
        return false;
    }
    if (queued || c->chan.head)
        mdg_log(MDG_LOG_WARN, "disconnecting with messages the broker has not acknowledged");
    if (ready)
        conn_send_control(c, MDG_K_BYE, NULL);
    return true;
}

static int on_close_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)revents;
    if (close_step(arg))
        mdg_loop_stop(loop);
    return 0;
}

static int on_wake(mdg_loop *loop, void *arg, short revents)
{
    (void)revents;
    mdg_conn *c = arg;
    pthread_mutex_lock(&c->lock);
    bool closing = c->closing;
    pthread_mutex_unlock(&c->lock);
    if (closing) {
        if (!c->close_deadline) {
            c->close_deadline = mdg_now_ms() + CLOSE_FLUSH_MS;
            if (close_step(c))
                return 1;
        }
        return 0;
    }
    conn_flush(c);
    if (c->def_head || c->rx_frames.n)
        conn_on_socket(loop, c, 0);
    return 0;
}

/* The end of a turn of the loop: what handlers and callbacks sent during it
 * goes out together. */
static int on_turn(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    conn_flush(arg);
    return 0;
}

static void *conn_thread(void *arg)
{
    pthread_setname_np(pthread_self(), "mdg-conn"); /* as top -H and perf show it */
    mdg_conn *c = arg;
    if (mdg_loop_run(c->loop) != 0)
        mdg_log(MDG_LOG_ERROR, "connection loop failed: %s", mdg_last_error());
    pthread_mutex_lock(&c->drive); /* a leader may still be giving it back */
    pthread_mutex_lock(&c->lock);
    c->state = C_CLOSED;
    c->closing = true;
    char text[sizeof c->fail_text];
    snprintf(text, sizeof text, "%s", c->fail_err ? c->fail_text : "connection closed");
    pthread_cond_broadcast(&c->state_cond);
    pthread_cond_broadcast(&c->room_cond);
    pthread_mutex_unlock(&c->lock);
    conn_fail_pending(c, MDG_ECLOSED, text);
    mdg_inbound in;
    mdg_inbound_init(&in);
    while (conn_pop_deferred(c, &in))
        mdg_inbound_close(&in);
    conn_close_socket(c, false); /* the goodbye may still be on its way */
    pthread_mutex_unlock(&c->drive);
    return NULL;
}

int mdg_conn_start(mdg_conn *c)
{
    int rc;
    if (!c)
        return MDG_EINVAL;
    if (c->state != C_NEW)
        return mdg_fail(MDG_ESTATE, "connection already started");
    if (!(c->ctx = zmq_ctx_new()))
        return mdg_fail(MDG_ESYS, "cannot create a ZMQ context: %s", zmq_strerror(errno));
    if ((rc = conn_open_socket(c)) != 0)
        return rc;
    mdg_loop_on_wake(c->loop, on_wake, c);
    mdg_loop_on_turn(c->loop, on_turn, c);
    mdg_loop_share(c->loop, &c->drive);
    if (mdg_loop_timer(c->loop, c->opts.heartbeat_ms, true, conn_on_keepalive, c) < 0)
        return mdg_fail(MDG_ENOMEM, "no room for the keepalive timer");
    /* The first hello goes into the socket here, before the loop thread
     * exists (no other thread uses the socket yet): libzmq sends it the
     * moment the handshake is done, even if the new thread has not been
     * scheduled by then (a busy machine). */
    c->transport->hello(c);
    c->state = C_CONNECTING;
    if (pthread_create(&c->thread, NULL, conn_thread, c) != 0) {
        c->state = C_CLOSED;
        return mdg_fail(MDG_ESYS, "cannot start the connection thread");
    }
    c->thread_started = true;
    return 0;
}

static void deadline_ts(struct timespec *ts, int64_t deadline_ms)
{
    /* condvars use CLOCK_REALTIME by default: convert from monotonic */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t left = deadline_ms - mdg_now_ms();
    if (left < 0)
        left = 0;
    ts->tv_sec = now.tv_sec + left / 1000;
    ts->tv_nsec = now.tv_nsec + (left % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

/* Wait on cond under c->lock until signalled or the deadline (< 0: none);
 * false once the deadline has passed. */
static bool wait_locked(mdg_conn *c, pthread_cond_t *cond, int64_t deadline)
{
    if (deadline < 0) {
        pthread_cond_wait(cond, &c->lock);
        return true;
    }
    struct timespec ts;
    deadline_ts(&ts, deadline);
    return pthread_cond_timedwait(cond, &c->lock, &ts) != ETIMEDOUT || mdg_now_ms() < deadline;
}

static int64_t deadline_of(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : mdg_now_ms() + timeout_ms;
}

int mdg_conn_wait_until_ready(mdg_conn *c, int timeout_ms)
{
    if (!c)
        return MDG_EINVAL;
    if (c->state == C_NEW)
        return mdg_fail(MDG_ESTATE, "mdg_conn_start first");
    int64_t deadline = deadline_of(timeout_ms);
    int rc = 0;
    pthread_mutex_lock(&c->lock);
    while (c->state != C_READY && c->state != C_CLOSED && !c->fail_err &&
           wait_locked(c, &c->state_cond, deadline))
        ;
    if (c->fail_err)
        rc = mdg_fail(c->fail_err, "%s", c->fail_text);
    else if (c->state == C_READY)
        rc = 0;
    else if (c->state == C_CLOSED)
        rc = mdg_fail(MDG_ECLOSED, "connection closed");
    else if (c->links_failed)
        rc = mdg_fail(MDG_ETIMEDOUT, "no session with %s after %d ms: %d link(s) failed, the last: %s",
                      c->endpoint, timeout_ms, c->links_failed, c->link_seen);
    else
        rc = mdg_fail(MDG_ETIMEDOUT, "no session with %s after %d ms", c->endpoint, timeout_ms);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* ---------------------------------------------------------------- sending */

/* Common checks for every send (under lock): refuse early with the reason. */
static int send_refused(mdg_conn *c)
{
    int rc = 0;
    if (c->state == C_NEW)
        rc = mdg_fail(MDG_ESTATE, "mdg_conn_start first");
    else if (c->fail_err)
        rc = mdg_fail(c->fail_err, "%s", c->fail_text);
    else if (c->state == C_CLOSED || c->closing)
        rc = mdg_fail(MDG_ECLOSED, "connection closed");
    return rc;
}

int conn_too_large(mdg_conn *c, const char *what, size_t command_len, size_t plen, size_t bulk_len)
{
    long long max = atomic_load_explicit(&c->broker_max, memory_order_relaxed);
    size_t head = MDG_HEADER_BOUND(command_len) + plen;
    if (!max || ((long long)head <= max && (long long)bulk_len <= max))
        return 0;
    return mdg_fail(MDG_EINVAL, "%s of %zu bytes (params) and %zu bytes (bulk) is larger than the broker takes "
                    "(max_message %lld bytes)", what, plen, bulk_len, max);
}

/* Send a command. A call's record waits for its reply: a blocking
 * caller's own (waiter), or one from the pool for a callback (cb). */
static int send_cmd(mdg_conn *c, const char *command, mdg_params *params, const void *bulk,
                    size_t bulk_len, pending *waiter, mdg_reply_fn cb, void *arg)
{
    out_item *o = NULL;
    pending *pd = waiter;
    uint64_t corr = 0; /* pd's, read under the lock: once it is unlocked, a
                        * failing link's conn_fail_pending may end pd */
    int rc;
    if (!c || !command || !*command || (!bulk && bulk_len)) {
        mdg_params_destroy(&params);
        return mdg_fail(MDG_EINVAL, "a command needs a name");
    }
    size_t plen = mdg_params_encoded_size(params);
    if ((rc = conn_too_large(c, "a message", strlen(command), plen, bulk_len)) != 0) {
        mdg_params_destroy(&params);
        return rc;
    }
    /* the checks, the call's record, its place in the map and the queued
     * message's block in one turn of the lock */
    pthread_mutex_lock(&c->lock);
    rc = send_refused(c);
    if (!rc && cb && !(pd = conn_pending_alloc_locked(c)))
        rc = MDG_ENOMEM;
    if (!rc && !(o = conn_out_alloc_locked(c, plen)))
        rc = MDG_ENOMEM;
    if (!rc && pd) {
        pd->cb = cb;
        pd->arg = arg;
        pd->corr = corr = ++c->next_corr;
        rc = mdg_map_put_u64(c->pending, corr, pd);
    }
    if (rc) {
        if (pd && pd != waiter)
            conn_pending_free_locked(c, pd);
        if (o)
            conn_out_block_free_locked(c, o);
    }
    pthread_mutex_unlock(&c->lock);
    if (rc) {
        mdg_params_destroy(&params);
        return rc;
    }
    if ((rc = conn_out_build(c, o, MDG_K_CMD, command, corr, 0, params, plen, bulk, bulk_len)) != 0 ||
        (rc = conn_enqueue(c, o)) != 0) {
        if (pd) {
            pthread_mutex_lock(&c->lock);
            if (mdg_map_take_u64(c->pending, corr) == pd && pd != waiter)
                conn_pending_free_locked(c, pd);
            pthread_mutex_unlock(&c->lock);
        }
    }
    return rc;
}

int mdg_conn_send(mdg_conn *c, const char *command, mdg_params *params, const void *bulk,
                  size_t bulk_len)
{
    return send_cmd(c, command, params, bulk, bulk_len, NULL, NULL, NULL);
}

int mdg_conn_send_cb(mdg_conn *c, const char *command, mdg_params *params, const void *bulk,
                     size_t bulk_len, mdg_reply_fn cb, void *arg)
{
    return send_cmd(c, command, params, bulk, bulk_len, NULL, cb, arg);
}

/* Serve the socket on this thread until pd's reply comes: the loop thread
 * in a nested blocking call, or a leader (lead_begin). Replies to blocking
 * calls are dispatched here, the rest kept for the loop thread in arrival
 * order. The loop thread waits here until the reply or an error (< 0). A
 * leader returns 1 as soon as the loop thread is needed (something kept
 * for it, its wake-up, a timer, the link's events, the deadline): it then
 * waits as any caller does. */
static int drive_wait(mdg_conn *c, pending *pd, int64_t deadline, bool leader)
{
    while (!pd->done) {
        conn_flush(c); /* the call, and what the replies read here made */
        int64_t left = deadline < 0 ? -1 : deadline - mdg_now_ms();
        if (deadline >= 0 && left <= 0)
            return leader ? 1 : MDG_ETIMEDOUT;
        if (!c->sock)
            return leader ? 1 : mdg_fail(MDG_ECLOSED, "the link to the broker is down");
        /* the loop thread wakes every 100 ms for its keepalive; a leader's
         * wait ends at the loop's next timer anyway */
        long wait = c->rx_frames.n ? 0 : leader ? (long)left : left < 0 ? 100 : (long)(left < 100 ? left : 100);
        if (leader) {
            if (mdg_loop_lead_poll(c->loop, c->sock, wait) != 1 && !c->rx_frames.n)
                return 1;
        } else {
            zmq_pollitem_t it = {.socket = c->sock, .events = ZMQ_POLLIN};
            if (zmq_poll(&it, 1, wait) < 0 && errno != EINTR)
                return mdg_fail(MDG_ESYS, "zmq_poll: %s", zmq_strerror(errno));
        }
        pthread_mutex_lock(&c->lock);
        bool closing = c->closing;
        pthread_mutex_unlock(&c->lock);
        if (closing)
            return leader ? 1 : mdg_fail(MDG_ECLOSED, "connection closing");
        if (!leader)
            conn_on_keepalive(c->loop, c, 0); /* the loop's timers do not run meanwhile */
        mdg_inbound in;
        mdg_inbound_init(&in);
        while (!pd->done && conn_next_inbound(c, &in)) {
            bool answers_blocking = false;
            if ((in.h.kind == MDG_K_REPLY || in.h.kind == MDG_K_ERROR) && in.h.corr) {
                pthread_mutex_lock(&c->lock);
                pending *other = mdg_map_get_u64(c->pending, in.h.corr);
                answers_blocking = other && other->blocking;
                pthread_mutex_unlock(&c->lock);
            }
            if (answers_blocking)
                conn_dispatch(c, &in);
            else
                conn_defer(c, &in);
            mdg_inbound_close(&in);
            if (leader && c->def_head)
                return 1; /* the rest is the loop thread's, read in place */
        }
    }
    return 0;
}

/* Leading: a blocking call from an application thread, while the loop
 * thread sleeps, sends and waits for its reply on the socket itself, as a
 * raw libzmq caller does: the loop thread's wake-up to send and the
 * condition variable to hand the reply over are the two thread hand-offs
 * it saves. Only when all is quiet: a session, no message kept for the
 * loop thread, room in the queue. */
/* How long a caller waits for the loop thread to end its turn: a turn is a
 * few microseconds; a caller that waited in vain is sent at that turn's
 * end anyway, as the loop thread flushes the queue then. */
#define LEAD_WAIT_US 100

static bool lead_begin(mdg_conn *c)
{
    if (conn_on_loop_thread(c) || !c->thread_started || !mdg_loop_lead(c->loop, LEAD_WAIT_US))
        return false;
    pthread_mutex_lock(&c->lock);
    bool quiet = c->state == C_READY && !c->closing && !c->fail_err &&
                 c->backlog < (size_t)c->opts.queue_limit;
    pthread_mutex_unlock(&c->lock);
    if (!quiet || mdg_loop_stopping(c->loop) || c->def_head || c->rx_frames.n || !c->sock ||
        !mdg_loop_lead_serve(c->loop, c->sock)) {
        mdg_loop_lead_end(c->loop, false);
        return false;
    }
    leading = c;
    return true;
}

/* Give the lead back: the loop thread is woken for what the leader left
 * (messages kept for it, or still in the socket, whose fd may not signal
 * them again once the leader has read from it). */
static void lead_end(mdg_conn *c)
{
    leading = NULL;
    short wanted = (short)(ZMQ_POLLIN | (c->pollout ? ZMQ_POLLOUT : 0));
    bool left = c->def_head || c->rx_frames.n || (c->sock && (mdg_loop_socket_events(c->sock) & wanted));
    mdg_loop_lead_end(c->loop, left);
}

int mdg_conn_call(mdg_conn *c, const char *command, mdg_params *params, const void *bulk,
                  size_t bulk_len, int timeout_ms, mdg_msg **reply)
{
    blocking_call bc = {.pd = {.blocking = true}};
    pending *pd = &bc.pd;
    int rc;
    if (!reply) {
        mdg_params_destroy(&params);
        return mdg_fail(MDG_EINVAL, "mdg_conn_call needs somewhere to put the reply");
    }
    *reply = NULL;
    pthread_cond_init(&pd->cond, NULL);
    int64_t deadline = deadline_of(timeout_ms);
    bool lead = c && lead_begin(c);
    rc = send_cmd(c, command, params, bulk, bulk_len, pd, NULL, NULL);
    if (lead) {
        if (rc == 0)
            drive_wait(c, pd, deadline, true);
        lead_end(c);
    }
    if (rc != 0) {
        pthread_cond_destroy(&pd->cond);
        return rc;
    }
    if (conn_on_loop_thread(c))
        rc = drive_wait(c, pd, deadline, false);
    pthread_mutex_lock(&c->lock);
    while (rc == 0 && !pd->done && wait_locked(c, &pd->cond, deadline))
        ;
    if (!pd->done) /* timed out: the late reply will find no one and be logged */
        mdg_map_take_u64(c->pending, pd->corr);
    bool link_down = c->state == C_RECONNECTING;
    pthread_mutex_unlock(&c->lock);
    pthread_cond_destroy(&pd->cond);

    if (!pd->done)
        return rc ? rc
                  : mdg_fail(MDG_ETIMEDOUT, "no reply to '%s' within %d ms%s", command, timeout_ms,
                             link_down ? " (the link to the broker is down; reconnecting)" : "");
    if (pd->err)
        return mdg_fail(pd->err, "'%s' not answered: %s", command, bc.why);
    if (mdg_msg_is_error(pd->reply)) {
        rc = mdg_fail(MDG_EREMOTE, "%s", mdg_msg_error(pd->reply));
        mdg_msg_destroy(&pd->reply);
        return rc;
    }
    *reply = pd->reply;
    return 0;
}

/* A pending call taken out of the map fails (under the lock): a blocking
 * caller wakes with err; a callback call is returned for fail_callback
 * (NULL when there is nothing more to do). */
static pending *fail_taken_locked(mdg_conn *c, pending *pd, int err, const char *text)
{
    if (pd->blocking) {
        pd->err = err;
        blocking_call *bc = (blocking_call *)pd; /* a blocking call's pending is its first member */
        snprintf(bc->why, sizeof bc->why, "%s", text);
        pd->done = true;
        pthread_cond_signal(&pd->cond);
        return NULL;
    }
    if (pd->done) { /* a callback call that had its reply, kept for more */
        conn_pending_free_locked(c, pd);
        return NULL;
    }
    return pd;
}

/* A callback call gets an error reply, then its record goes (not under
 * the lock). */
static void fail_callback(mdg_conn *c, pending *pd, const char *text)
{
    mdg_msg m = {.h = {.kind = MDG_K_ERROR, .corr = pd->corr}, .error = text};
    m.params = mdg_params_new();
    pd->cb(&m, pd->arg);
    mdg_params_destroy(&m.params);
    pthread_mutex_lock(&c->lock);
    conn_pending_free_locked(c, pd);
    pthread_mutex_unlock(&c->lock);
}

/* Fail every pending call: blocking ones wake with err, callbacks get an
 * error reply. Loop thread (or after it ended). */
void conn_fail_pending(mdg_conn *c, int err, const char *text)
{
    pending *cbs = NULL, *pd;
    pthread_mutex_lock(&c->lock);
    while ((pd = mdg_map_pop(c->pending)) != NULL) {
        if ((pd = fail_taken_locked(c, pd, err, text)) != NULL) {
            pd->reply = (mdg_msg *)cbs; /* chain through an unused field */
            cbs = pd;
        }
    }
    pthread_mutex_unlock(&c->lock);
    while (cbs) {
        pending *next = (pending *)cbs->reply;
        fail_callback(c, cbs, text);
        cbs = next;
    }
}

void conn_fail_call(mdg_conn *c, uint64_t corr, int err, const char *text)
{
    pthread_mutex_lock(&c->lock);
    pending *pd = mdg_map_take_u64(c->pending, corr);
    if (pd)
        pd = fail_taken_locked(c, pd, err, text);
    pthread_mutex_unlock(&c->lock);
    if (pd)
        fail_callback(c, pd, text);
}

/* ------------------------------------------------------------- shutdown */

int mdg_conn_wait_until_complete(mdg_conn *c, int timeout_ms)
{
    if (!c)
        return MDG_EINVAL;
    if (conn_on_loop_thread(c))
        return mdg_fail(MDG_ESTATE, "cannot wait for the loop from the loop thread");
    int64_t deadline = deadline_of(timeout_ms);
    pthread_mutex_lock(&c->lock);
    while (c->state != C_CLOSED && c->state != C_NEW && wait_locked(c, &c->state_cond, deadline))
        ;
    int rc = c->state == C_CLOSED || c->state == C_NEW ? 0 : mdg_fail(MDG_ETIMEDOUT, "still running");
    pthread_mutex_unlock(&c->lock);
    return rc;
}

void mdg_conn_disconnect(mdg_conn *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    c->closing = true;
    if (c->state == C_NEW)
        c->state = C_CLOSED;
    pthread_cond_broadcast(&c->room_cond);
    pthread_mutex_unlock(&c->lock);
    if (c->thread_started)
        mdg_loop_wake(c->loop);
}

void mdg_conn_destroy(mdg_conn **pc)
{
    if (!pc || !*pc)
        return;
    mdg_conn *c = *pc;
    if (c->thread_started) {
        if (conn_on_loop_thread(c)) {
            mdg_log(MDG_LOG_ERROR, "mdg_conn_destroy called from its own loop thread: refused");
            return;
        }
        mdg_conn_disconnect(c);
        pthread_join(c->thread, NULL);
    }
    size_t unsent = 0;
    for (out_item *o = c->out_head, *n; o; o = n) {
        n = (out_item *)o->m.next;
        conn_out_free(c, o);
        unsent++;
    }
    mdg_chan_reset(&c->chan);
    if (unsent)
        mdg_log(MDG_LOG_WARN, "%zu queued message(s) not sent: connection destroyed", unsent);
    if (c->pending) {
        pending *pd;
        while ((pd = mdg_map_pop(c->pending)) != NULL)
            if (!pd->blocking)
                conn_pending_free_locked(c, pd);
    }
    conn_close_socket(c, false);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    mdg_loop_destroy(&c->loop);
    mdg_map_destroy(&c->pending);
    mdg_map_destroy(&c->flow);
    mdg_map_destroy(&c->in_flight);
    mdg_ring_free(&c->flow_ended);
    if (c->transport && c->transport->free_state)
        c->transport->free_state(c->transport_state);
    mdg_keys_destroy(&c->keys);
    pthread_cond_destroy(&c->state_cond);
    pthread_cond_destroy(&c->room_cond);
    mdg_pool_clear(&c->out_pool);
    mdg_pool_clear(&c->pending_pool);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->drive);
    free(c);
    *pc = NULL;
}
