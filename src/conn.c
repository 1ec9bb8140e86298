/* conn.c - the connection, for users and nodes alike: one DEALER socket
 * with CURVE, owned by a background loop thread.
 *
 * Application threads never touch the socket: they encode their message,
 * put it on a locked queue and wake the loop, which numbers and sends it.
 * Replies are matched to pending calls by correlation id. A blocking call
 * made on the loop thread itself (from a handler or callback) runs a nested
 * wait that handles replies to blocking calls at once and defers all else,
 * so callbacks never nest and messages are dispatched in arrival order.
 *
 * Reliability: every numbered message is kept until the broker acknowledges
 * it. When the link drops the socket is thrown away (so nothing stale
 * lingers in libzmq's queues), a new one is made after a backoff, and the
 * hello names the session and the last message received; the broker then
 * resends what we missed and we resend what it missed. Receivers drop
 * duplicates by sequence number: in order, exactly once.
 *
 * Legacy mode (opts.legacy) speaks Messidge 1.x to an original Python
 * broker by translating at the socket boundary: legacy_send turns each
 * numbered message into one 1.x frame, legacy_ingest turns each 1.x frame
 * into the header and frames of a native one, and all the rest (queue,
 * pending calls, dispatch, nested waits, reconnects) is shared. 1.x has no
 * acknowledgements, sequence numbers or session resumption, so there a
 * message counts as delivered once libzmq took it, nothing is resent after
 * a reconnect, and every later session is reported as MDG_EV_RECOVERED
 * (a 1.x broker does not say whether it still had ours). Nor can 1.x mark
 * a call's last reply: see legacy_on_reply. */
#include "channel.h"
#include "internal.h"
#include "legacy.h"
#include "loop.h"
#include "map.h"
#include "msg.h"
#include "params.h"
#include "wire.h"

#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define CONN_HWM 10000
#define CONN_MAX_MSG (256LL << 20)
#define RECV_BATCH 256
#define SESSION_ID_MAX 64
#define ENDPOINT_MAX 300  /* "tcp://" location ":" port */
#define WHY_MAX 300       /* of a reason's text in fail_text: room for it with the endpoint */
#define CLOSE_FLUSH_MS 2000  /* disconnect waits this long for acks */
#define FLOW_COMMAND "mdg.flow" /* the broker pauses, resumes or ends one call's replies */
#define FLOW_PAUSED ((void *)1)
#define FLOW_ENDED ((void *)2)
/* Replies to one call in flight to the broker (queued or unacknowledged)
 * before a streaming thread waits: a node's link is one queue for all its
 * callers, so one call's stream must not fill it ahead of everybody else's
 * answers. 8 of the broker's ack batches keep a lone stream flowing. */
#define CALL_WINDOW 256

enum conn_state { C_NEW, C_CONNECTING, C_READY, C_RECONNECTING, C_CLOSED };

/* A numbered message: queued by any thread (out_head, under lock) until
 * the loop thread hands it to the channel, which keeps it until the broker
 * acknowledges it. */
typedef struct out_item {
    mdg_chan_msg m; /* first: the channel's part (kind, corr, flags, command, frames) */
    uint64_t epoch; /* a reply: the session of the command it answers */
} out_item;

typedef struct pending {
    uint64_t corr;
    bool blocking;
    /* callback calls */
    mdg_reply_fn cb;
    void *arg;
    /* blocking calls: the waiter's stack frame; touched only under lock */
    pthread_cond_t cond;
    bool done;
    int err;
    char why[256]; /* with err: why the call ended */
    mdg_msg *reply;
} pending;

/* The 1.x uuid of a command we received, kept for its replies. */
typedef struct lg_uuid {
    bool long_term; /* a 'ka' reply went out: the broker routes by it now */
    size_t len;
    uint8_t id[MDG_LEGACY_MAX_UUID];
} lg_uuid;

typedef struct deferred {
    struct deferred *next;
    mdg_header h;
    mdg_frames f;
} deferred;

struct mdg_conn {
    char endpoint[ENDPOINT_MAX];
    uint8_t server_pk[MDG_KEY_BYTES];
    mdg_keys *keys;
    mdg_conn_options opts;
    void *ctx, *sock, *mon;
    unsigned sock_gen; /* names each socket's monitor endpoint */
    mdg_loop *loop;
    pthread_t thread;
    bool thread_started;

    /* shared with application threads, under lock */
    pthread_mutex_t lock;
    pthread_cond_t state_cond; /* state changes */
    pthread_cond_t room_cond;  /* backlog shrank */
    int state;
    int fail_err; /* why the session cannot go on, or 0 */
    char fail_text[WHY_MAX + ENDPOINT_MAX + 40]; /* why, (endpoint), a few words */
    bool closing;
    out_item *out_head, *out_tail; /* not yet sent */
    size_t backlog;                /* queued + sent-but-unacked */
    mdg_map *pending;              /* corr -> pending */
    uint64_t next_corr;
    uint8_t session_id[SESSION_ID_MAX];
    size_t session_id_len;
    /* calls from the broker whose replies it asked us to pause
     * (FLOW_PAUSED) or that it ended (FLOW_ENDED); the ended ones are
     * forgotten oldest first past queue_limit */
    mdg_map *flow;
    mdg_ring flow_ended;
    mdg_map *in_flight; /* corr of a call from the broker -> its replies in the backlog */
    /* which session: +1 each time one is lost (written by the loop thread).
     * A command kept past its handler is answered in its own session only:
     * after a restart the broker would route a reply by a corr it now uses
     * for someone else's call, or refuse it. */
    uint64_t epoch;
    int links_failed;   /* links that failed since the last session */
    char link_seen[200]; /* what the last of them saw */

    /* loop thread only */
    mdg_channel chan; /* what was sent, until the broker acknowledges it */
    bool had_session;
    bool resyncing;  /* a hello went out after a "no session" notice */
    bool handshaken; /* CURVE handshake done on the current link */
    int hs_closed;   /* handshakes in a row the peer ended (handshake_failed) */
    int hs_reset;    /* links in a row reset before their handshake completed */
    bool pollout;    /* waiting for room in the socket's queue */
    bool room_made;  /* the channel released messages: wake who waits for room */
    int attempt;     /* reconnects since the last session */
    int ack_timer;
    int reconnect_timer; /* pending reconnect, or 0 */
    int64_t last_tx; /* when we last sent anything (keepalive) */
    int64_t close_deadline;
    deferred *def_head, *def_tail;
    const mdg_cmd *cmds;
    void *cmd_arg;
    mdg_error_fn on_error;
    void *err_arg;
    mdg_event_fn on_event;
    void *ev_arg;

    /* legacy mode only; loop thread only */
    bool lg_sealed;                 /* a user link: params and bulk sealed */
    uint8_t lg_key[MDG_LEGACY_KEY]; /* this link's session key */
    char lg_prefix[16];             /* our calls' uuids: prefix + corr */
    mdg_map *lg_uuids;              /* corr we gave a received command -> lg_uuid */
    mdg_ring lg_in_order;           /* those corrs, to forget the oldest */
    mdg_ring lg_lingering;          /* callback calls kept after a reply */
    uint64_t lg_next_in;            /* last corr given to a received command */
};

/* ------------------------------------------------------------------ set-up */

static const mdg_chan_ops *link_ops(int legacy);

/* Legacy mode's tables, bounded like the send queue. */
static int legacy_alloc(mdg_conn *c)
{
    char id[23];
    size_t cap = (size_t)c->opts.queue_limit;
    mdg_legacy_uuid(id);
    memcpy(c->lg_prefix, id, 12);
    c->lg_prefix[12] = '-'; /* not in the uuid alphabet: the corr follows */
    c->lg_uuids = mdg_map_new();
    mdg_ring_init(&c->lg_in_order, cap);
    mdg_ring_init(&c->lg_lingering, cap);
    return c->lg_uuids ? 0 : MDG_ENOMEM;
}

static void legacy_free(mdg_conn *c)
{
    void *u;
    while (c->lg_uuids && (u = mdg_map_pop(c->lg_uuids)) != NULL)
        free(u);
    mdg_map_destroy(&c->lg_uuids);
    mdg_ring_free(&c->lg_in_order);
    mdg_ring_free(&c->lg_lingering);
    sodium_memzero(c->lg_key, sizeof c->lg_key);
}

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
    if (o->port < 1 || o->port > 65535) {
        int bad = o->port;
        free(c);
        return mdg_fail(MDG_EINVAL, "port %d out of range", bad);
    }
    if (o->legacy != 0 && o->legacy != MDG_LEGACY_USER && o->legacy != MDG_LEGACY_NODE) {
        free(c);
        return mdg_fail(MDG_EINVAL, "legacy must be 0, MDG_LEGACY_USER or MDG_LEGACY_NODE");
    }
    if (snprintf(c->endpoint, sizeof c->endpoint, "tcp://%s:%d", location, o->port) >=
        (int)sizeof c->endpoint) {
        free(c);
        return mdg_fail(MDG_EINVAL, "location too long");
    }
    memcpy(c->server_pk, server_pk, MDG_KEY_BYTES);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->state_cond, NULL);
    pthread_cond_init(&c->room_cond, NULL);
    c->state = C_NEW;
    mdg_ring_init(&c->flow_ended, (size_t)o->queue_limit);
    mdg_chan_init(&c->chan, link_ops(o->legacy), c);
    if (mdg_keys_from_raw(&c->keys, mdg_keys_public(keys), mdg_keys_secret(keys)) != 0 ||
        !(c->pending = mdg_map_new()) || !(c->flow = mdg_map_new()) ||
        !(c->in_flight = mdg_map_new()) || !(c->loop = mdg_loop_new()) ||
        (o->legacy && legacy_alloc(c) != 0)) {
        mdg_conn_destroy(&c);
        return mdg_fail(MDG_ENOMEM, "cannot allocate the connection");
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

static bool on_loop_thread(mdg_conn *c)
{
    return c->thread_started && pthread_equal(pthread_self(), c->thread);
}

static void event(mdg_conn *c, int ev, const char *detail)
{
    static const char *names[] = {"?", "connected", "disconnected", "session recovered", "session lost"};
    mdg_log(ev == MDG_EV_LOST ? MDG_LOG_WARN : MDG_LOG_INFO, "%s: %s%s%s", c->endpoint, names[ev],
            detail ? ": " : "", detail ? detail : "");
    if (c->on_event)
        c->on_event(c, ev, detail, c->ev_arg);
}

/* ------------------------------------------------------------- the queue */

static void out_free(out_item *o)
{
    zmq_msg_close(&o->m.params);
    if (o->m.has_bulk)
        zmq_msg_close(&o->m.bulk);
    free(o);
}

/* Build an outgoing message; params taken, bulk copied. */
static int out_new(out_item **out, int kind, const char *command, uint64_t corr, uint32_t flags,
                   mdg_params *params, const void *bulk, size_t bulk_len)
{
    int rc;
    out_item *o = calloc(1, sizeof *o);
    if (!o) {
        mdg_params_destroy(&params);
        return MDG_ENOMEM;
    }
    o->m.h.kind = (uint8_t)kind;
    o->m.h.corr = corr;
    o->m.h.flags = flags;
    if ((rc = mdg_header_set_command(&o->m.h, command)) != 0 ||
        (rc = mdg_wire_encode_params(params, &o->m.params)) != 0) {
        mdg_params_destroy(&params);
        free(o);
        return rc;
    }
    mdg_params_destroy(&params);
    if (bulk_len) {
        o->m.has_bulk = true;
        zmq_msg_init_size(&o->m.bulk, bulk_len);
        memcpy(zmq_msg_data(&o->m.bulk), bulk, bulk_len);
    }
    *out = o;
    return 0;
}

static void flush(mdg_conn *c);
/* Messidge 1.x mode, at the socket boundary (see the section below). */
static int legacy_send(void *owner, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk);
static int legacy_send_frame(mdg_conn *c, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk);
static void legacy_hello(mdg_conn *c);
static int legacy_ingest(mdg_conn *c, mdg_frames *f, mdg_header *h);
static void legacy_on_reply(mdg_conn *c, mdg_msg *m);

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

/* A message enters (+1) or leaves (-1) the backlog (under lock). */
static void count_backlog(mdg_conn *c, const out_item *o, int delta)
{
    c->backlog += (size_t)(ptrdiff_t)delta;
    if (o->m.h.kind == MDG_K_CMD || !o->m.h.corr)
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
    out_free(o);
}

/* Queue a message for the loop thread to send, within the backlog limit
 * and the call's window: wait for room, or refuse with MDG_EAGAIN when
 * waiting is not allowed. */
static int enqueue(mdg_conn *c, out_item *o)
{
    bool loop = on_loop_thread(c);
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
            pthread_mutex_unlock(&c->lock);
            out_free(o);
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
        pthread_mutex_unlock(&c->lock);
        out_free(o);
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
    if (loop)
        flush(c);
    else if (was_empty)
        mdg_loop_wake(c->loop);
    return 0;
}

/* The channel is done with a message (acknowledged, or its session is
 * gone): its room goes back to the backlog. */
static void chan_release(void *owner, mdg_chan_msg *m)
{
    mdg_conn *c = owner;
    pthread_mutex_lock(&c->lock);
    out_release(c, (out_item *)m);
    c->room_made = true;
    pthread_mutex_unlock(&c->lock);
}

/* Wake the application threads waiting for room, once per batch. */
static void room_made(mdg_conn *c)
{
    if (!c->room_made)
        return;
    c->room_made = false;
    pthread_mutex_lock(&c->lock);
    pthread_cond_broadcast(&c->room_cond);
    pthread_mutex_unlock(&c->lock);
}

/* The broker has ours up to ack; room for more. */
static void acked(mdg_conn *c, uint64_t ack)
{
    mdg_chan_acked(&c->chan, ack);
    room_made(c);
}

/* The native link, for the channel. */
static int native_send(void *owner, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    mdg_conn *c = owner;
    int rc = mdg_wire_send(c->sock, NULL, 0, h, params, bulk);
    if (rc == 0)
        c->last_tx = mdg_now_ms();
    return rc;
}

static const mdg_chan_ops native_link = {.send = native_send, .release = chan_release, .acks = true};
/* 1.x has no acks: once libzmq has a message, it is gone */
static const mdg_chan_ops legacy_link = {.send = legacy_send, .release = chan_release, .acks = false};

static const mdg_chan_ops *link_ops(int legacy)
{
    return legacy ? &legacy_link : &native_link;
}

static void want_pollout(mdg_conn *c, bool on)
{
    if (c->pollout != on && c->sock) {
        c->pollout = on;
        mdg_loop_set_events(c->loop, c->sock, -1, on ? ZMQ_POLLIN | ZMQ_POLLOUT : ZMQ_POLLIN);
    }
}

/* A message the link refused for good: it stays kept and goes again after
 * the reconnect (1.x: it is dropped). */
static void cannot_send(const char *command)
{
    mdg_log(MDG_LOG_WARN, "cannot send %s%s%s now: %s", *command ? "'" : "a message", command, *command ? "'" : "",
            mdg_last_error());
}

/* Send what is queued, in order, once the session is open: first what a
 * resume asked to send again, then the application's queue. On a full
 * socket queue the rest waits for POLLOUT. Loop thread only. */
static void flush(mdg_conn *c)
{
    int rc = 0;
    while (c->state == C_READY && (rc = mdg_chan_flush(&c->chan)) != 0 && rc != MDG_EAGAIN)
        cannot_send("");
    /* then the queue, a message at a time: taken off it under lock (other
     * threads append), put back at its head when the link has no room */
    while (c->state == C_READY && rc != MDG_EAGAIN) {
        pthread_mutex_lock(&c->lock);
        out_item *o = c->out_head;
        if (o && !(c->out_head = (out_item *)o->m.next))
            c->out_tail = NULL;
        pthread_mutex_unlock(&c->lock);
        if (!o)
            break;
        if ((rc = mdg_chan_send_now(&c->chan, &o->m)) == MDG_EAGAIN) {
            pthread_mutex_lock(&c->lock);
            o->m.next = c->out_head ? &c->out_head->m : NULL;
            if (!c->out_head)
                c->out_tail = o;
            c->out_head = o;
            pthread_mutex_unlock(&c->lock);
        } else if (rc) {
            cannot_send(o->m.h.command);
        }
    }
    room_made(c);
    want_pollout(c, rc == MDG_EAGAIN);
}

/* Unnumbered control messages (HELLO, BYE, ACK) go straight out; 1.x has
 * none of them (its hello is legacy_hello). */
static void send_control(mdg_conn *c, int kind, mdg_params *params)
{
    mdg_header h = {.kind = (uint8_t)kind};
    zmq_msg_t pm;
    mdg_chan_stamp(&c->chan, &h);
    if (c->sock && !c->opts.legacy && mdg_wire_encode_params(params, &pm) == 0) {
        if (mdg_wire_send(c->sock, NULL, 0, &h, &pm, NULL) == MDG_EAGAIN) {
            zmq_msg_close(&pm);
        } else {
            mdg_chan_ack_told(&c->chan, h.ack);
            c->last_tx = mdg_now_ms();
        }
    }
    mdg_params_destroy(&params);
}

static void send_hello(mdg_conn *c)
{
    if (c->opts.legacy) {
        legacy_hello(c);
        return;
    }
    mdg_params *p = mdg_params_new();
    if (p) {
        mdg_params_set_int(p, "version", MDG_WIRE_VERSION);
        mdg_params_set_int(p, "ack", (int64_t)c->chan.rx_seq);
        mdg_params_set_int(p, "heartbeat", c->opts.heartbeat_ms);
        if (c->had_session)
            mdg_params_set_bytes(p, "session", c->session_id, c->session_id_len);
    }
    send_control(c, MDG_K_HELLO, p);
}

static int on_ack_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_conn *c = arg;
    c->ack_timer = 0;
    if (mdg_chan_ack_owed(&c->chan) && c->state == C_READY)
        send_control(c, MDG_K_ACK, NULL);
    return 0;
}

/* The broker has no libzmq heartbeats (they cost it O(n) per connection):
 * it takes a client silent for 3 heartbeats as gone, so an idle client
 * says something (an ACK) every heartbeat. */
static int on_keepalive(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_conn *c = arg;
    if (c->state == C_READY && mdg_now_ms() - c->last_tx >= c->opts.heartbeat_ms)
        send_control(c, MDG_K_ACK, NULL);
    return 0;
}

/* Acknowledge what we received: at once after ACK_EVERY messages, else a
 * little later unless a message of ours carries the ack first. */
static void schedule_ack(mdg_conn *c)
{
    if (mdg_chan_ack_due(&c->chan))
        send_control(c, MDG_K_ACK, NULL);
    else if (!c->ack_timer)
        c->ack_timer = mdg_loop_timer(c->loop, MDG_CHAN_ACK_DELAY_MS, false, on_ack_timer, c);
}

/* ----------------------------------------------------------- replying */

/* Queue a reply to a message from the broker, as it is. */
static int queue_reply(mdg_msg *m, int kind, uint32_t flags, mdg_params *results, const void *bulk,
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
    int rc = out_new(&o, kind, "", m->h.corr, flags, results, bulk, bulk_len);
    if (rc)
        return rc;
    o->epoch = m->epoch;
    return enqueue(c, o);
}

/* Replies to a call the broker paused (its caller is not reading) wait
 * for room on application threads (MDG_EAGAIN with nonblocking); the loop
 * thread cannot wait and goes on (the broker keeps them, within its bound).
 * A call the broker ended fails here, so that a node streaming to a caller
 * that has gone or stopped reading learns it and stops. */
static int flow_wait(mdg_conn *c, uint64_t corr)
{
    bool loop = on_loop_thread(c);
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

/* The broker's word about one of the calls it sent us (FLOW_COMMAND). */
static void on_flow(mdg_conn *c, const mdg_msg *m)
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
static int conn_send_reply(mdg_msg *m, int kind, uint32_t flags, mdg_params *results,
                           const void *bulk, size_t bulk_len)
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
    return queue_reply(m, kind, flags, results, bulk, bulk_len);
}

/* ------------------------------------------------------------- receiving */

/* First step for every received message, in arrival order: header,
 * acknowledgement and sequence. Returns 0 when it should be dispatched. */
static void resync(mdg_conn *c, const char *why);

static int ingest(mdg_conn *c, mdg_frames *f, mdg_header *h)
{
    if (f->dropped || f->n < 2) {
        mdg_log(MDG_LOG_WARN, "malformed message from the broker dropped (%d frames)", f->n + f->dropped);
        return -1;
    }
    if (mdg_wire_decode_header(zmq_msg_data(&f->part[0]), zmq_msg_size(&f->part[0]), h) != 0) {
        mdg_log(MDG_LOG_WARN, "from the broker: %s", mdg_last_error());
        return -1;
    }
    if (mdg_kind_sequenced(h->kind) && h->seq == 0 && (h->kind != MDG_K_ERROR || h->corr != 0)) {
        /* the one unnumbered message of a numbered kind is a notice: the
         * broker's answer outside the session's numbering ("no session", a
         * seq gap, a header it could not read). Anything else without its
         * number would skip duplicate detection. */
        mdg_log(MDG_LOG_ERROR, "unnumbered %s from the broker dropped: only error notices (corr 0) may have seq 0",
                mdg_kind_name(h->kind));
        return -1;
    }
    if (h->kind != MDG_K_WELCOME && h->ack <= c->chan.tx_seq)
        acked(c, h->ack);
    switch (mdg_chan_check(&c->chan, h)) {
    case MDG_CHAN_DUPLICATE:
        mdg_log(MDG_LOG_DEBUG, "duplicate seq %llu dropped", (unsigned long long)h->seq);
        return -1;
    case MDG_CHAN_GAP:
        /* something before it was lost: never skip it, have it resent */
        mdg_log(MDG_LOG_ERROR, "seq gap from the broker: expected %llu, got %llu; dropped",
                (unsigned long long)c->chan.rx_seq + 1, (unsigned long long)h->seq);
        if (!c->resyncing)
            resync(c, "messages from the broker were lost");
        return -1;
    case MDG_CHAN_NEXT:
        mdg_chan_received(&c->chan, h->seq);
        schedule_ack(c);
        break;
    }
    return h->kind == MDG_K_ACK ? -1 : 0;
}

static void fail_all_pending(mdg_conn *c, int err, const char *text);

/* A session is lost: replies to its commands that are still queued must
 * not go to the new one (commands do). Under lock; how many were dropped. */
static size_t drop_stale_replies(mdg_conn *c)
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

/* The session is open on this link: resumed (the broker has what we sent
 * up to ack) or new. */
static void session_open(mdg_conn *c, const uint8_t *sid, size_t len, bool resumed, int64_t ack)
{
    int ev = MDG_EV_CONNECTED;
    if (c->had_session && resumed) {
        /* the broker has what we sent up to ack: resend the rest, in order */
        mdg_chan_resume(&c->chan, (uint64_t)ack); /* sent by flush() below, before anything new */
        room_made(c);
        ev = MDG_EV_RECOVERED;
    } else if (c->had_session) {
        /* from now on replies to the old session's commands fail at once
         * (MDG_ECLOSED), so a node streaming to a caller that is gone stops */
        pthread_mutex_lock(&c->lock);
        c->epoch++;
        size_t stale = drop_stale_replies(c);
        pthread_mutex_unlock(&c->lock);
        if (stale)
            mdg_log(MDG_LOG_WARN, "%zu queued repl%s to calls of the lost session dropped: their callers are gone",
                    stale, stale == 1 ? "y" : "ies");
        size_t lost = mdg_chan_reset(&c->chan); /* numbered from 1 again */
        room_made(c);
        char why[200];
        snprintf(why, sizeof why, "the broker no longer knew our session (restarted, or away longer "
                                  "than its grace period); %zu unacknowledged message(s) not delivered", lost);
        fail_all_pending(c, MDG_ECLOSED, why);
        pthread_mutex_lock(&c->lock); /* the broker's word on the old session's calls is void */
        while (mdg_map_pop(c->flow))
            ;
        pthread_cond_broadcast(&c->room_cond);
        pthread_mutex_unlock(&c->lock);
        event(c, MDG_EV_LOST, why);
        ev = 0;
    }
    pthread_mutex_lock(&c->lock);
    memcpy(c->session_id, sid, len);
    c->session_id_len = len;
    c->state = C_READY;
    c->fail_err = 0;
    c->links_failed = 0;
    pthread_cond_broadcast(&c->state_cond);
    pthread_mutex_unlock(&c->lock);
    c->had_session = true;
    c->resyncing = false;
    c->attempt = 0;
    c->hs_closed = 0;
    c->hs_reset = 0;
    if (ev)
        event(c, ev, ev == MDG_EV_RECOVERED && c->opts.legacy
                         ? "a 1.x broker does not say whether it kept the session: what was sent "
                           "before the link dropped may be lost"
                         : NULL);
    flush(c);
}

static void on_welcome(mdg_conn *c, mdg_msg *m)
{
    const uint8_t *sid = NULL;
    size_t len = 0;
    bool resumed = false;
    int64_t ack = 0;
    mdg_params_get_bytes(m->params, "session", &sid, &len);
    mdg_params_get_bool(m->params, "resumed", &resumed);
    mdg_params_get_int(m->params, "ack", &ack);
    if (!sid || len > SESSION_ID_MAX) {
        mdg_log(MDG_LOG_ERROR, "welcome without a session id from %s", c->endpoint);
        return;
    }
    session_open(c, sid, len, resumed, ack);
}

static void on_command(mdg_conn *c, mdg_msg *m)
{
    char why[512];
    if (!c->opts.legacy && strcmp(m->h.command, FLOW_COMMAND) == 0) {
        on_flow(c, m);
        mdg_msg_destroy(&m);
        return;
    }
    m->send_reply = conn_send_reply;
    m->owner = c;
    m->epoch = c->epoch; /* the loop thread is the only writer */
    const mdg_cmd *cmd = mdg_cmd_check(c->cmds, m, false, why, sizeof why);
    if (!cmd)
        m->send_reply = queue_reply; /* the library's own checks always reach the caller */
    if (!cmd) {
        /* An application that registered no resource_offer handler simply
         * does not want the offer (as in the original Python Messidge). */
        bool quiet = strcmp(m->h.command, "resource_offer") == 0 && !mdg_msg_replyable(m);
        mdg_log(quiet ? MDG_LOG_DEBUG : MDG_LOG_WARN, "'%s' from the broker refused: %s", m->h.command, why);
        if (mdg_msg_replyable(m))
            mdg_msg_fail(m, "%s", why);
        mdg_msg_destroy(&m);
        return;
    }
    cmd->handler(m, c->cmd_arg);
    if (!m->kept)
        mdg_msg_destroy(&m);
}

static void send_hello(mdg_conn *c);
static void close_socket(mdg_conn *c, bool discard);
static int on_reconnect_timer(mdg_loop *loop, void *arg, short revents);

/* Say hello again (to resume, or learn the session is gone), on a new link,
 * and send nothing new until the welcome: what follows a hello must not
 * overtake the resend that the welcome starts. The old link is thrown away
 * with what libzmq still holds of ours (our resend buffer has it), so the
 * hello is the first thing on the new one: never dropped because the old
 * link's send queue is full (the session would then never come back), and
 * never behind messages the broker can only refuse one by one. */
static void resync(mdg_conn *c, const char *why)
{
    mdg_log(MDG_LOG_WARN, "%s: hello again on a new link", why);
    c->resyncing = true;
    pthread_mutex_lock(&c->lock);
    if (c->state == C_READY)
        c->state = C_RECONNECTING;
    pthread_mutex_unlock(&c->lock);
    close_socket(c, true);
    if (c->reconnect_timer)
        mdg_loop_cancel(c->loop, c->reconnect_timer);
    on_reconnect_timer(c->loop, c, 0); /* makes the link and says hello */
}

static void on_reply(mdg_conn *c, mdg_msg *m)
{
    bool wants_resync = false;
    if (m->h.kind == MDG_K_ERROR && mdg_params_get_bool(m->params, "resync", &wants_resync) == 0 &&
        wants_resync) {
        /* The link is up but the broker has no session for it (it closed
         * ours, e.g. after a long silence): say hello again, at most once
         * per welcome. Pending calls learn their fate from what follows (a
         * resumed session, or a lost one that fails them). */
        if (!c->resyncing)
            resync(c, "the broker no longer knows our session on this link");
        mdg_msg_destroy(&m);
        return;
    }
    if (m->h.corr == 0) { /* an uncorrelated error notice */
        const char *command = "";
        mdg_params_get_str(m->params, "command", &command);
        if (c->on_error)
            c->on_error(command, m->error ? m->error : "", c->err_arg);
        else
            mdg_log(MDG_LOG_WARN, "broker reports an error for '%s': %s", command, m->error ? m->error : "");
        mdg_msg_destroy(&m);
        return;
    }
    bool final = !(m->h.flags & MDG_F_MORE);
    pthread_mutex_lock(&c->lock);
    pending *pd = final ? mdg_map_take_u64(c->pending, m->h.corr) : mdg_map_get_u64(c->pending, m->h.corr);
    if (pd && pd->blocking) {
        if (!final) /* a blocking call takes one reply: the first */
            mdg_map_take_u64(c->pending, m->h.corr);
        pd->reply = m;
        pd->done = true;
        pthread_cond_signal(&pd->cond);
        pthread_mutex_unlock(&c->lock);
        return;
    }
    pthread_mutex_unlock(&c->lock);
    if (!pd) {
        mdg_log(MDG_LOG_INFO, "reply to call %llu that no one waits for (timed out?) dropped",
                (unsigned long long)m->h.corr);
    } else {
        pd->cb(m, pd->arg);
        if (final)
            free(pd);
    }
    mdg_msg_destroy(&m);
}

static void on_bye(mdg_conn *c, mdg_msg *m)
{
    const char *reason = "no reason given";
    mdg_params_get_str(m->params, "reason", &reason);
    pthread_mutex_lock(&c->lock);
    c->fail_err = MDG_ECLOSED;
    snprintf(c->fail_text, sizeof c->fail_text, "session closed by the broker: %s", reason);
    mdg_log(MDG_LOG_WARN, "%s", c->fail_text);
    pthread_cond_broadcast(&c->state_cond);
    pthread_cond_broadcast(&c->room_cond);
    pthread_mutex_unlock(&c->lock);
    mdg_loop_stop(c->loop);
}

/* Second step: build the message and hand it to whoever wants it. */
/* A reply that cannot be decoded (the broker passes a node's params on as
 * they came) still ends its call, as an error: its caller is told instead
 * of waiting for ever. NULL when out of memory. */
static mdg_msg *undecodable_reply(const mdg_header *h, const char *why)
{
    char text[300];
    mdg_header eh = *h;
    mdg_frames f = {.n = 2};
    mdg_msg *m = NULL;
    mdg_params *e = mdg_params_new();
    snprintf(text, sizeof text, "malformed reply from the broker: %s", why);
    eh.kind = MDG_K_ERROR;
    eh.flags = 0; /* the call is over */
    zmq_msg_init(&f.part[0]);
    if (e && mdg_params_set_str(e, "error", text) == 0 && mdg_wire_encode_params(e, &f.part[1]) == 0) {
        mdg_msg_from_frames(&m, &eh, &f, 1);
        zmq_msg_close(&f.part[1]);
    }
    zmq_msg_close(&f.part[0]);
    mdg_params_destroy(&e);
    return m;
}

static void dispatch(mdg_conn *c, const mdg_header *h, mdg_frames *f)
{
    mdg_msg *m = NULL;
    if (mdg_msg_from_frames(&m, h, f, 1) != 0) {
        mdg_log(MDG_LOG_WARN, "%s from the broker dropped: %s", mdg_kind_name(h->kind), mdg_last_error());
        if ((h->kind != MDG_K_REPLY && h->kind != MDG_K_ERROR) || !h->corr ||
            !(m = undecodable_reply(h, mdg_last_error())))
            return;
    }
    switch (h->kind) {
    case MDG_K_WELCOME:
        on_welcome(c, m);
        break;
    case MDG_K_CMD:
        on_command(c, m);
        return; /* on_command owns m */
    case MDG_K_REPLY:
    case MDG_K_ERROR:
        if (c->opts.legacy)
            legacy_on_reply(c, m);
        else
            on_reply(c, m);
        return; /* they own m */
    case MDG_K_BYE:
        on_bye(c, m);
        break;
    default:
        mdg_log(MDG_LOG_WARN, "unexpected %s from the broker dropped", mdg_kind_name(h->kind));
    }
    mdg_msg_destroy(&m);
}

static bool pop_deferred(mdg_conn *c, mdg_header *h, mdg_frames *f)
{
    deferred *d = c->def_head;
    if (!d)
        return false;
    c->def_head = d->next;
    if (!c->def_head)
        c->def_tail = NULL;
    *h = d->h;
    mdg_frames_move(f, &d->f);
    free(d);
    return true;
}

static int on_socket(mdg_loop *loop, void *arg, short revents)
{
    mdg_conn *c = arg;
    mdg_header h;
    mdg_frames f;
    if (revents & ZMQ_POLLOUT)
        flush(c);
    void *sock = c->sock;
    for (int i = 0; i < RECV_BATCH && !mdg_loop_stopping(loop) && c->sock == sock; i++) {
        if (pop_deferred(c, &h, &f)) {
            dispatch(c, &h, &f);
            mdg_frames_close(&f);
            continue;
        }
        if (!sock || mdg_frames_recv(sock, &f) != 0)
            break;
        if ((c->opts.legacy ? legacy_ingest(c, &f, &h) : ingest(c, &f, &h)) == 0)
            dispatch(c, &h, &f);
        mdg_frames_close(&f);
    }
    if (c->def_head)
        mdg_loop_wake(loop); /* come back for what a nested wait left */
    return 0;
}

/* A blocking call on the loop thread: read the socket here until the reply
 * comes, answering other blocking calls' replies and deferring the rest. */
static int nested_wait(mdg_conn *c, pending *pd, int64_t deadline)
{
    flush(c);
    while (!pd->done) {
        int64_t left = deadline < 0 ? -1 : deadline - mdg_now_ms();
        if (deadline >= 0 && left <= 0)
            return MDG_ETIMEDOUT;
        if (!c->sock)
            return mdg_fail(MDG_ECLOSED, "the link to the broker is down");
        zmq_pollitem_t it = {.socket = c->sock, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, left < 0 ? 100 : (long)(left < 100 ? left : 100)) < 0 && errno != EINTR)
            return mdg_fail(MDG_ESYS, "zmq_poll: %s", zmq_strerror(errno));
        pthread_mutex_lock(&c->lock);
        bool closing = c->closing;
        pthread_mutex_unlock(&c->lock);
        if (closing)
            return mdg_fail(MDG_ECLOSED, "connection closing");
        on_keepalive(c->loop, c, 0); /* the loop's timers do not run meanwhile */
        mdg_header h;
        mdg_frames f;
        while (!pd->done && mdg_frames_recv(c->sock, &f) == 0) {
            if ((c->opts.legacy ? legacy_ingest(c, &f, &h) : ingest(c, &f, &h)) != 0) {
                mdg_frames_close(&f);
                continue;
            }
            bool answers_blocking = false;
            if ((h.kind == MDG_K_REPLY || h.kind == MDG_K_ERROR) && h.corr) {
                pthread_mutex_lock(&c->lock);
                pending *other = mdg_map_get_u64(c->pending, h.corr);
                answers_blocking = other && other->blocking;
                pthread_mutex_unlock(&c->lock);
            }
            if (answers_blocking) {
                dispatch(c, &h, &f);
                mdg_frames_close(&f);
                continue;
            }
            deferred *d = malloc(sizeof *d);
            if (!d) {
                mdg_log(MDG_LOG_ERROR, "out of memory: message dropped during a nested call");
                mdg_frames_close(&f);
                continue;
            }
            d->next = NULL;
            d->h = h;
            mdg_frames_move(&d->f, &f);
            if (c->def_tail)
                c->def_tail->next = d;
            else
                c->def_head = d;
            c->def_tail = d;
        }
    }
    return 0;
}

/* --------------------------------------------------------------- the link */

static int open_socket(mdg_conn *c);

/* discard: the link is dead, drop what libzmq still holds (it is in our
 * resend buffer); else let libzmq flush it (the goodbye) for a while. */
static void close_socket(mdg_conn *c, bool discard)
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
}

static int on_reconnect_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_conn *c = arg;
    c->reconnect_timer = 0;
    if (c->sock)
        return 0;
    if (open_socket(c) != 0) {
        mdg_log(MDG_LOG_ERROR, "cannot remake the socket: %s", mdg_last_error());
        c->reconnect_timer = mdg_loop_timer(c->loop, c->opts.reconnect_max_ms, false, on_reconnect_timer, c);
        return 0;
    }
    send_hello(c);
    return 0;
}

/* The link dropped: throw the socket away and make a new one after a
 * backoff with jitter, so that many clients do not come back at once. */
static void link_lost(mdg_conn *c, const char *why)
{
    pthread_mutex_lock(&c->lock);
    bool was_ready = c->state == C_READY;
    if (c->state == C_READY || c->state == C_CONNECTING)
        c->state = C_RECONNECTING;
    pthread_mutex_unlock(&c->lock);
    close_socket(c, true);
    long delay = c->opts.reconnect_min_ms;
    for (int i = 0; i < c->attempt && delay < c->opts.reconnect_max_ms; i++)
        delay *= 2;
    if (delay > c->opts.reconnect_max_ms)
        delay = c->opts.reconnect_max_ms;
    delay = delay / 2 + (long)randombytes_uniform((uint32_t)delay + 1); /* 50%..150% */
    c->attempt++;
    if (was_ready)
        event(c, MDG_EV_DISCONNECTED, why);
    if (c->reconnect_timer) /* one reconnect at a time */
        mdg_loop_cancel(c->loop, c->reconnect_timer);
    c->reconnect_timer = mdg_loop_timer(c->loop, (int)delay, false, on_reconnect_timer, c);
}

static void fatal(mdg_conn *c, int err, const char *text)
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
    /* Before the first session libzmq keeps retrying (a broker being set up
     * may admit us soon); a key refused on a reconnect is final. */
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

/* Consistent evidence needed for MDG_EHANDSHAKE: handshakes the peer ended
 * in order, in a row. */
#define HS_VERDICT_AFTER 3
/* A broker out of file descriptors resets every new link before its
 * handshake: that many in a row, before the first session, is reported as
 * MDG_EBUSY (a flaky network resets one now and then, not all of them). */
#define RESETS_BUSY_AFTER 5
#define PROBE_MS 2000

static const char *const not_curve =
    "the peer does not speak CURVE, so it is no native Messidge broker (a Messidge 1.x broker? then use "
    "legacy mode)";

/* Does the peer complete a ZMTP handshake without CURVE, as a Messidge 1.x
 * broker does? libzmq reports the mechanism mismatch only when the peer's
 * whole greeting arrived before it closed the link, and a peer that closes
 * as soon as it has read ours often has not sent all of its own: then a 1.x
 * broker looks like a CURVE broker refusing our HELLO (another key). A
 * NULL-mechanism handshake tells them apart. Blocks the loop thread up to
 * PROBE_MS: only before the first session, when it has nothing else to do. */
static bool peer_speaks_null(mdg_conn *c)
{
    char ep[80];
    void *s = zmq_socket(c->ctx, ZMQ_DEALER), *m = NULL;
    bool yes = false, done = false;
    int zero = 0;
    snprintf(ep, sizeof ep, "inproc://mdg-probe-%p-%u", (void *)c, c->sock_gen);
    if (s && zmq_socket_monitor(s, ep, ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                           ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_DISCONNECTED |
                                           ZMQ_EVENT_CLOSED) == 0 &&
        (m = zmq_socket(c->ctx, ZMQ_PAIR)) && zmq_connect(m, ep) == 0 && zmq_connect(s, c->endpoint) == 0) {
        int64_t deadline = mdg_now_ms() + PROBE_MS;
        zmq_pollitem_t it = {.socket = m, .events = ZMQ_POLLIN};
        while (!done && mdg_now_ms() < deadline && zmq_poll(&it, 1, (long)(deadline - mdg_now_ms())) >= 0) {
            mdg_frames f;
            while (!done && mdg_frames_recv(m, &f) == 0) {
                uint16_t ev = 0;
                if (f.n >= 1 && zmq_msg_size(&f.part[0]) >= 2)
                    memcpy(&ev, zmq_msg_data(&f.part[0]), 2);
                mdg_frames_close(&f);
                done = ev != 0;
                yes = ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED;
            }
        }
    }
    if (s) { /* as close_socket: the monitor first */
        zmq_socket_monitor(s, NULL, 0);
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(s);
    }
    if (m)
        zmq_close(m);
    return yes;
}

/* A link that ended before its handshake completed. A single failure is
 * never a verdict: a reset or a cut can come at any point of a handshake,
 * and is retried on the normal schedule. Before the first session only
 * evidence a flaky network cannot produce makes MDG_EHANDSHAKE (and the
 * retries slow down to reconnect_max_ms): the peer names another security
 * mechanism (it speaks no CURVE, e.g. Messidge 1.x; or, in legacy mode, it
 * speaks CURVE), or it ends the handshake in order HS_VERDICT_AFTER times
 * in a row: a CURVE broker does that with a HELLO that does not open under
 * its key (we pinned another), unless a NULL handshake shows a 1.x broker;
 * in legacy mode, a peer that is not 1.x. What each attempt saw is kept
 * for a timeout in mdg_conn_wait_until_ready. */
static void handshake_failed(mdg_conn *c, uint16_t ev, uint32_t value)
{
    char seen[200];
    const char *verdict = NULL; /* conclusive at once */
    bool in_order = false;      /* the peer ended the handshake: evidence */
    if (ev == ZMQ_EVENT_CLOSED) {
        snprintf(seen, sizeof seen, "no broker answered");
    } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL && value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
        verdict = c->opts.legacy ? "the peer speaks CURVE, not Messidge 1.x (a native Messidge broker? "
                                   "then connect without legacy mode)"
                                 : not_curve;
        snprintf(seen, sizeof seen, "%s", verdict);
    } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
        in_order = true;
        snprintf(seen, sizeof seen, "the handshake failed with ZMTP protocol error 0x%x", (unsigned)value);
    } else if (ev == ZMQ_EVENT_DISCONNECTED || (int)value == EPIPE) {
        /* DISCONNECTED alone: libzmq gave up on the peer's greeting (not
         * ZMTP 3); EPIPE: the peer closed the link in order */
        in_order = true;
        snprintf(seen, sizeof seen, "the peer closed the link during the %s handshake",
                 c->opts.legacy ? "ZMTP" : "CURVE");
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
    if (!c->had_session && (verdict || c->hs_closed >= HS_VERDICT_AFTER)) {
        char text[300];
        if (!verdict && !c->opts.legacy && c->hs_closed == HS_VERDICT_AFTER && peer_speaks_null(c))
            verdict = not_curve;
        if (verdict)
            snprintf(text, sizeof text, "%s", verdict);
        else if (c->opts.legacy)
            snprintf(text, sizeof text, "the peer closed the link during the ZMTP handshake on %d attempts in a "
                     "row: not Messidge 1.x (a native Messidge broker, which speaks CURVE? then connect without "
                     "legacy mode)", c->hs_closed);
        else
            snprintf(text, sizeof text, "the broker closed the link during the CURVE handshake on %d attempts in "
                     "a row: its key is most likely not the one pinned", c->hs_closed);
        fatal(c, MDG_EHANDSHAKE, text);
        c->attempt = 30; /* retry now and then: the broker may be fixed */
    } else if (!c->had_session && c->hs_reset >= RESETS_BUSY_AFTER) {
        char text[120];
        snprintf(text, sizeof text, "the broker reset %d links in a row before the handshake (out of file "
                 "descriptors, or at its connection limit?)", c->hs_reset);
        broker_busy(c, text);
    }
    link_lost(c, seen);
}

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
        case ZMQ_EVENT_CONNECTED:
            c->handshaken = false;
            break;
        case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
            c->handshaken = true;
            c->hs_closed = 0;
            c->hs_reset = 0;
            break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: /* the broker said no */
            if (value == 500) { /* not to our key: it is full (docs/protocol.md 1.1) */
                broker_busy(c, "the broker is at its connection limit");
                link_lost(c, "the broker is at its connection limit");
                return 0;
            }
            fatal(c, MDG_EAUTH, "the broker refused our key");
            /* before the first session, try again now and then: the key
             * may be admitted later */
            c->attempt = 30;
            link_lost(c, "the broker refused our key");
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
                link_lost(c, "the link to the broker dropped");
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

static int set(void *s, int opt, const void *v, size_t len)
{
    return zmq_setsockopt(s, opt, v, len) == 0 ? 0
                                               : mdg_fail(MDG_ESYS, "socket option %d: %s", opt, zmq_strerror(errno));
}

/* ---------------------------------------------- Messidge 1.x (legacy mode) */

/* The hello: our key, and the rid of our last session so that the broker
 * may move that session to this link. */
static void legacy_hello(mdg_conn *c)
{
    zmq_msg_t m;
    if (!c->sock)
        return;
    if (mdg_legacy_build_hello(&m, mdg_keys_public(c->keys), c->session_id,
                               c->had_session ? c->session_id_len : 0) != 0) {
        mdg_log(MDG_LOG_ERROR, "cannot make the 1.x hello: %s", mdg_last_error());
        return;
    }
    if (zmq_msg_send(&m, c->sock, ZMQ_DONTWAIT) < 0) {
        mdg_log(MDG_LOG_WARN, "cannot send the 1.x hello: %s", zmq_strerror(errno));
        zmq_msg_close(&m);
    }
}

/* The answer to our hello opens the session on this link; a refusal or a
 * box that does not open is reported like a native CURVE failure. On a
 * node link the answer is not boxed, so a wrong pinned key goes unnoticed
 * there (1.x authenticates neither side of a node link). */
_Static_assert(MDG_LEGACY_MAX_RID <= SESSION_ID_MAX, "a 1.x rid must fit as our session id");

static void legacy_welcome(mdg_conn *c, zmq_msg_t *frame)
{
    uint8_t rid[MDG_LEGACY_MAX_RID];
    size_t rid_len = 0;
    bool sealed = false;
    int rc = mdg_legacy_parse_welcome(zmq_msg_data(frame), zmq_msg_size(frame), c->server_pk,
                                      mdg_keys_secret(c->keys), &sealed, c->lg_key, rid, &rid_len);
    if (rc == MDG_EAUTH || rc == MDG_EHANDSHAKE) {
        char why[256];
        snprintf(why, sizeof why, "%s", mdg_last_error());
        fatal(c, rc, why);
        c->attempt = 30; /* as native: retry now and then, the key may be admitted later */
        link_lost(c, why);
        return;
    }
    if (rc != 0) {
        mdg_log(MDG_LOG_WARN, "answer to our 1.x hello dropped: %s", mdg_last_error());
        return;
    }
    if (!sealed && c->opts.legacy != MDG_LEGACY_NODE) {
        /* anyone can send an unboxed answer: taking it would turn our
         * encryption off and skip the pinned broker key */
        const char *why = "the 1.x broker boxed us no session key (not the pinned broker, or it admits our key "
                          "as a node: then use MDG_LEGACY_NODE)";
        fatal(c, MDG_EHANDSHAKE, why);
        c->attempt = 30;
        link_lost(c, why);
        return;
    }
    c->lg_sealed = sealed;
    session_open(c, rid, rid_len, c->had_session, 0);
}

/* What 1.x wants as params: a failure is {'exception': text}. */

/* The uuid a message goes with. A call that wants replies gets our prefix
 * and its corr (legacy_call_of reads it back); a reply, the uuid of the
 * command it answers (*u, NULL for a command). */
static int legacy_out_uuid(mdg_conn *c, const mdg_header *h, char *buf, size_t len, lg_uuid **u)
{
    *u = NULL;
    buf[0] = '\0';
    if (h->kind == MDG_K_CMD) {
        if (h->corr)
            snprintf(buf, len, "%s%llu", c->lg_prefix, (unsigned long long)h->corr);
        return 0;
    }
    if (!(*u = mdg_map_get_u64(c->lg_uuids, h->corr)))
        return mdg_fail(MDG_ENOTFOUND, "the 1.x uuid of the command it answers was forgotten "
                                       "(more than queue_limit commands awaited replies)");
    return 0;
}

/* One numbered message as one 1.x frame. A reply's command field is 'ka'
 * once its channel is long-term, also for the final reply: the 1.x broker
 * sends a non-'ka' frame whose uuid it knows only as long-term back to its
 * sender. Never the bulk there, as 1.x's replies do: it would cross in
 * clear. A failure ends the message (nothing is resent in 1.x). The
 * channel's link in legacy mode: params and bulk are copies, always ours
 * to close here. */
static int legacy_send(void *owner, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    mdg_conn *c = owner;
    int rc = legacy_send_frame(c, h, params, bulk);
    zmq_msg_close(params);
    if (bulk)
        zmq_msg_close(bulk);
    return rc;
}

static int legacy_send_frame(mdg_conn *c, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    char uuid[sizeof c->lg_prefix + 24];
    lg_uuid *u;
    mdg_params *p = NULL;
    zmq_msg_t frame;
    uint8_t nonce[MDG_LEGACY_NONCE]; /* a node's frames carry one too, as 1.x's */
    bool more = h->flags & MDG_F_MORE;
    int rc = legacy_out_uuid(c, h, uuid, sizeof uuid, &u);
    const char *command = !u ? h->command : more || u->long_term ? "ka" : "";
    randombytes_buf(nonce, sizeof nonce);
    if (!rc && !(rc = mdg_legacy_params_out(h->kind, zmq_msg_data(params), zmq_msg_size(params), &p)))
        rc = mdg_legacy_build(&frame, c->lg_sealed ? c->lg_key : NULL, nonce, sizeof nonce, command,
                              strlen(command), u ? (const char *)u->id : uuid, u ? u->len : strlen(uuid), p,
                              bulk ? zmq_msg_data(bulk) : NULL, bulk ? zmq_msg_size(bulk) : 0);
    mdg_params_destroy(&p);
    if (rc)
        return rc;
    if (zmq_msg_send(&frame, c->sock, ZMQ_DONTWAIT) < 0) {
        int e = errno;
        zmq_msg_close(&frame);
        return e == EAGAIN ? MDG_EAGAIN : mdg_fail(MDG_ESYS, "send: %s", zmq_strerror(e));
    }
    c->last_tx = mdg_now_ms();
    if (u && more)
        u->long_term = true;
    else if (u) /* the final reply: the uuid is done with */
        free(mdg_map_take_u64(c->lg_uuids, h->corr));
    return 0;
}

/* The corr of our call that a uuid names, or 0 when it is not ours. */
static uint64_t legacy_call_of(const mdg_conn *c, const uint8_t *uuid, size_t len)
{
    size_t plen = strlen(c->lg_prefix);
    uint64_t corr = 0;
    if (len <= plen || len > plen + 19 || memcmp(uuid, c->lg_prefix, plen) != 0)
        return 0;
    for (size_t i = plen; i < len; i++) {
        if (uuid[i] < '0' || uuid[i] > '9')
            return 0;
        corr = corr * 10 + (uint64_t)(uuid[i] - '0');
    }
    return corr;
}

/* Remember the uuid of a command we received under a corr of our own, for
 * its replies; the oldest are forgotten past queue_limit. 0 when out of
 * memory (the command is then not answerable). */
static uint64_t legacy_remember(mdg_conn *c, const uint8_t *uuid, size_t len)
{
    lg_uuid *u = calloc(1, sizeof *u);
    uint64_t corr = ++c->lg_next_in;
    if (!u || mdg_map_put_u64(c->lg_uuids, corr, u) != 0) {
        free(u);
        mdg_log(MDG_LOG_ERROR, "out of memory: a 1.x command cannot be answered");
        return 0;
    }
    u->len = len;
    memcpy(u->id, uuid, len);
    uint64_t old = mdg_ring_push(&c->lg_in_order, corr);
    if (old && (u = mdg_map_take_u64(c->lg_uuids, old)) != NULL) {
        mdg_log(MDG_LOG_WARN, "more than %d 1.x commands await replies: the oldest can no longer be answered",
                c->opts.queue_limit);
        free(u);
    }
    return corr;
}

/* A 1.x exception becomes a native error reply's params. */

/* What a 1.x frame is: a reply to one of our calls (its uuid says so,
 * whatever the command field: 1.x replies put their bulk there), an error
 * notice (an exception for nothing), or a command. */
static int legacy_classify(mdg_conn *c, const mdg_legacy_frame *lf, mdg_params **p, mdg_header *h)
{
    const char *exc = NULL;
    bool is_exc = mdg_params_get_str(*p, "exception", &exc) == 0;
    memset(h, 0, sizeof *h);
    h->corr = legacy_call_of(c, lf->uuid, lf->uuid_len);
    if (h->corr || (!lf->command_len && !lf->uuid_len && is_exc)) {
        h->kind = is_exc ? MDG_K_ERROR : MDG_K_REPLY;
        return is_exc ? mdg_legacy_error_in(p, exc, NULL) : 0;
    }
    if (!lf->command_len)
        return mdg_fail(MDG_EPROTO, "neither a command nor a reply to one of our calls");
    if (lf->command_len > MDG_MAX_COMMAND || memchr(lf->command, '\0', lf->command_len))
        return mdg_fail(MDG_EPROTO, "a command name over %d bytes or with a NUL byte", MDG_MAX_COMMAND);
    h->kind = MDG_K_CMD;
    memcpy(h->command, lf->command, lf->command_len);
    h->command[lf->command_len] = '\0';
    h->command_len = (uint8_t)lf->command_len;
    if (lf->uuid_len)
        h->corr = legacy_remember(c, lf->uuid, lf->uuid_len);
    return 0;
}

/* Rewrite f as a native message's frames: header (unused), params, bulk. */
static int legacy_to_frames(mdg_frames *f, const mdg_params *p, zmq_msg_t *bulk)
{
    mdg_frames_close(f);
    zmq_msg_init(&f->part[0]);
    f->n = 1;
    int rc = mdg_wire_encode_params(p, &f->part[1]);
    if (rc)
        return rc;
    f->n = 2;
    if (zmq_msg_size(bulk)) {
        zmq_msg_init(&f->part[2]);
        zmq_msg_move(&f->part[2], bulk);
        f->n = 3;
    }
    return 0;
}

/* A 1.x frame from the broker becomes the header and frames of a native
 * message (0: dispatch it), or is taken here (the welcome), or dropped
 * with a log line. Nothing a 1.x broker sends ends the link. */
static int legacy_ingest(mdg_conn *c, mdg_frames *f, mdg_header *h)
{
    mdg_legacy_frame lf;
    mdg_params *p = NULL;
    zmq_msg_t bulk;
    if (f->dropped || f->n != 1) {
        mdg_log(MDG_LOG_WARN, "a 1.x message from the broker has %d frames, not one: dropped", f->n + f->dropped);
        return -1;
    }
    if (c->state != C_READY) {
        legacy_welcome(c, &f->part[0]);
        return -1;
    }
    zmq_msg_init(&bulk);
    int rc = mdg_legacy_parse(zmq_msg_data(&f->part[0]), zmq_msg_size(&f->part[0]), &lf);
    if (rc == 0) {
        zmq_msg_close(&bulk); /* open makes it again */
        if ((rc = mdg_legacy_open(&lf, c->lg_sealed ? c->lg_key : NULL, &p, &bulk)) == 0)
            rc = legacy_classify(c, &lf, &p, h);
        mdg_legacy_frame_free(&lf);
    }
    if (rc == 0)
        rc = legacy_to_frames(f, p, &bulk);
    if (rc)
        mdg_log(MDG_LOG_WARN, "1.x frame from the broker dropped: %s", mdg_last_error());
    mdg_params_destroy(&p);
    zmq_msg_close(&bulk);
    return rc ? -1 : 0;
}

/* A callback call answered: keep it for more replies, within queue_limit
 * (past it the oldest such call is forgotten). */
static void legacy_linger(mdg_conn *c, uint64_t corr)
{
    uint64_t old = mdg_ring_push(&c->lg_lingering, corr);
    if (!old)
        return;
    pthread_mutex_lock(&c->lock);
    pending *pd = mdg_map_take_u64(c->pending, old);
    pthread_mutex_unlock(&c->lock);
    if (pd) {
        mdg_log(MDG_LOG_WARN, "more than %d answered 1.x calls kept for further replies: "
                              "the oldest (call %llu) forgotten", c->opts.queue_limit, (unsigned long long)old);
        free(pd);
    }
}

/* 1.x cannot mark a call's last reply (mdg_msg_more is always false): a
 * blocking call ends with its first reply, as natively; a callback call
 * keeps its callback for further replies, but counts as done (its
 * callback is not failed when the connection ends). */
static void legacy_on_reply(mdg_conn *c, mdg_msg *m)
{
    pthread_mutex_lock(&c->lock);
    pending *pd = m->h.corr ? mdg_map_get_u64(c->pending, m->h.corr) : NULL;
    bool callback = pd && !pd->blocking, first = callback && !pd->done;
    if (first)
        pd->done = true;
    pthread_mutex_unlock(&c->lock);
    if (!callback) { /* a blocking call, a notice, or no one: as natively */
        on_reply(c, m);
        return;
    }
    if (first)
        legacy_linger(c, m->h.corr);
    pd->cb(m, pd->arg);
    mdg_msg_destroy(&m);
}

static int open_socket(mdg_conn *c)
{
    /* No receive limit in libzmq: with heartbeats on, libzmq 4.3.4 aborts
     * (assert !_io_error, zeromq/libzmq#4364) when a link drops while its
     * receive pipe is full. What can queue here is bounded anyway: the
     * broker never has more than its queue_limit unacknowledged for us. */
    int hwm = CONN_HWM, unlimited = 0, linger = CLOSE_FLUSH_MS, rc;
    int hb_ivl = c->opts.heartbeat_ms, hb_timeout = 3 * c->opts.heartbeat_ms;
    /* We make each new link ourselves (on_monitor), so libzmq must not
     * reconnect this socket before we close it. Not -1 ("never"): then
     * libzmq ends the pipe when a link drops, and a message being read
     * frame by frame at that moment trips its assert (fq.cpp, !_more). */
    int no_reconnect = 3600 * 1000;
    int64_t maxmsg = CONN_MAX_MSG;
    char mon_ep[80];
    if (!(c->sock = zmq_socket(c->ctx, ZMQ_DEALER)))
        return mdg_fail(MDG_ESYS, "cannot create the socket: %s", zmq_strerror(errno));
    /* 1.x has no CURVE: the broker's key is checked by the welcome's box */
    if ((!c->opts.legacy &&
         ((rc = set(c->sock, ZMQ_CURVE_SERVERKEY, c->server_pk, MDG_KEY_BYTES)) ||
          (rc = set(c->sock, ZMQ_CURVE_PUBLICKEY, mdg_keys_public(c->keys), MDG_KEY_BYTES)) ||
          (rc = set(c->sock, ZMQ_CURVE_SECRETKEY, mdg_keys_secret(c->keys), MDG_KEY_BYTES)))) ||
        (rc = set(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm)) ||
        (rc = set(c->sock, ZMQ_RCVHWM, &unlimited, sizeof unlimited)) ||
        (rc = set(c->sock, ZMQ_LINGER, &linger, sizeof linger)) ||
        (rc = set(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg)) ||
        (rc = set(c->sock, ZMQ_RECONNECT_IVL, &no_reconnect, sizeof no_reconnect)) ||
        (rc = set(c->sock, ZMQ_HEARTBEAT_IVL, &hb_ivl, sizeof hb_ivl)) ||
        (rc = set(c->sock, ZMQ_HEARTBEAT_TIMEOUT, &hb_timeout, sizeof hb_timeout)))
        goto fail;
    /* The monitor says when the link drops and why a handshake failed
     * (refused key, wrong server key), so nothing just times out. */
    snprintf(mon_ep, sizeof mon_ep, "inproc://mdg-monitor-%p-%u", (void *)c, ++c->sock_gen);
    if (zmq_socket_monitor(c->sock, mon_ep,
                           ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CLOSED |
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
    if ((rc = mdg_loop_watch(c->loop, c->sock, -1, ZMQ_POLLIN, on_socket, c)) ||
        (rc = mdg_loop_watch(c->loop, c->mon, -1, ZMQ_POLLIN, on_monitor, c)))
        goto fail;
    return 0;
fail:
    close_socket(c, true);
    return rc;
}

/* --------------------------------------------------------- start / stop */

static int on_close_timer(mdg_loop *loop, void *arg, short revents);

/* Disconnecting: send what is queued, wait (bounded) for the broker to
 * acknowledge it, then say goodbye. Returns true when done. */
static bool close_step(mdg_conn *c)
{
    flush(c);
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
        send_control(c, MDG_K_BYE, NULL);
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
    flush(c);
    if (c->def_head)
        on_socket(loop, c, 0);
    return 0;
}

/* Fail every pending call: blocking ones wake with err, callbacks get an
 * error reply. Loop thread (or after it ended). */
static void fail_all_pending(mdg_conn *c, int err, const char *text)
{
    pending *cbs = NULL, *pd;
    pthread_mutex_lock(&c->lock);
    while ((pd = mdg_map_pop(c->pending)) != NULL) {
        if (pd->blocking) {
            pd->err = err;
            snprintf(pd->why, sizeof pd->why, "%s", text);
            pd->done = true;
            pthread_cond_signal(&pd->cond);
        } else if (pd->done) { /* a 1.x callback call that had its reply */
            free(pd);
        } else {
            pd->reply = (mdg_msg *)cbs; /* chain through an unused field */
            cbs = pd;
        }
    }
    pthread_mutex_unlock(&c->lock);
    while (cbs) {
        pending *next = (pending *)cbs->reply;
        mdg_msg m = {.h = {.kind = MDG_K_ERROR, .corr = cbs->corr}, .error = text};
        m.params = mdg_params_new();
        cbs->cb(&m, cbs->arg);
        mdg_params_destroy(&m.params);
        free(cbs);
        cbs = next;
    }
}

static void *conn_thread(void *arg)
{
    mdg_conn *c = arg;
    send_hello(c);
    if (mdg_loop_run(c->loop) != 0)
        mdg_log(MDG_LOG_ERROR, "connection loop failed: %s", mdg_last_error());
    pthread_mutex_lock(&c->lock);
    c->state = C_CLOSED;
    c->closing = true;
    char text[sizeof c->fail_text];
    snprintf(text, sizeof text, "%s", c->fail_err ? c->fail_text : "connection closed");
    pthread_cond_broadcast(&c->state_cond);
    pthread_cond_broadcast(&c->room_cond);
    pthread_mutex_unlock(&c->lock);
    fail_all_pending(c, MDG_ECLOSED, text);
    mdg_header h;
    mdg_frames f;
    while (pop_deferred(c, &h, &f))
        mdg_frames_close(&f);
    close_socket(c, false); /* the goodbye may still be on its way */
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
    if ((rc = open_socket(c)) != 0)
        return rc;
    mdg_loop_on_wake(c->loop, on_wake, c);
    if (mdg_loop_timer(c->loop, c->opts.heartbeat_ms, true, on_keepalive, c) < 0)
        return mdg_fail(MDG_ENOMEM, "no room for the keepalive timer");
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

/* Common checks for every send: refuse early with the reason. */
static int can_send(mdg_conn *c)
{
    int rc = 0;
    pthread_mutex_lock(&c->lock);
    if (c->state == C_NEW)
        rc = mdg_fail(MDG_ESTATE, "mdg_conn_start first");
    else if (c->fail_err)
        rc = mdg_fail(c->fail_err, "%s", c->fail_text);
    else if (c->state == C_CLOSED || c->closing)
        rc = mdg_fail(MDG_ECLOSED, "connection closed");
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int send_cmd(mdg_conn *c, const char *command, mdg_params *params, const void *bulk,
                    size_t bulk_len, pending *pd)
{
    out_item *o;
    int rc;
    if (!c || !command || !*command || (!bulk && bulk_len)) {
        mdg_params_destroy(&params);
        return mdg_fail(MDG_EINVAL, "a command needs a name");
    }
    if ((rc = can_send(c)) != 0) {
        mdg_params_destroy(&params);
        return rc;
    }
    if ((rc = out_new(&o, MDG_K_CMD, command, 0, 0, params, bulk, bulk_len)) != 0)
        return rc;
    if (pd) {
        pthread_mutex_lock(&c->lock);
        o->m.h.corr = pd->corr = ++c->next_corr;
        rc = mdg_map_put_u64(c->pending, pd->corr, pd);
        pthread_mutex_unlock(&c->lock);
        if (rc) {
            out_free(o);
            return rc;
        }
    }
    if ((rc = enqueue(c, o)) != 0 && pd) {
        pthread_mutex_lock(&c->lock);
        mdg_map_take_u64(c->pending, pd->corr);
        pthread_mutex_unlock(&c->lock);
    }
    return rc;
}

int mdg_conn_send(mdg_conn *c, const char *command, mdg_params *params, const void *bulk,
                  size_t bulk_len)
{
    return send_cmd(c, command, params, bulk, bulk_len, NULL);
}

int mdg_conn_send_cb(mdg_conn *c, const char *command, mdg_params *params, const void *bulk,
                     size_t bulk_len, mdg_reply_fn cb, void *arg)
{
    if (!cb)
        return send_cmd(c, command, params, bulk, bulk_len, NULL);
    pending *pd = calloc(1, sizeof *pd);
    if (!pd) {
        mdg_params_destroy(&params);
        return MDG_ENOMEM;
    }
    pd->cb = cb;
    pd->arg = arg;
    int rc = send_cmd(c, command, params, bulk, bulk_len, pd);
    if (rc)
        free(pd);
    return rc;
}

int mdg_conn_call(mdg_conn *c, const char *command, mdg_params *params, const void *bulk,
                  size_t bulk_len, int timeout_ms, mdg_msg **reply)
{
    pending pd = {.blocking = true};
    int rc;
    if (!reply) {
        mdg_params_destroy(&params);
        return mdg_fail(MDG_EINVAL, "mdg_conn_call needs somewhere to put the reply");
    }
    *reply = NULL;
    pthread_cond_init(&pd.cond, NULL);
    int64_t deadline = deadline_of(timeout_ms);
    if ((rc = send_cmd(c, command, params, bulk, bulk_len, &pd)) != 0) {
        pthread_cond_destroy(&pd.cond);
        return rc;
    }
    if (on_loop_thread(c))
        rc = nested_wait(c, &pd, deadline);
    pthread_mutex_lock(&c->lock);
    while (rc == 0 && !pd.done && wait_locked(c, &pd.cond, deadline))
        ;
    if (!pd.done) /* timed out: the late reply will find no one and be logged */
        mdg_map_take_u64(c->pending, pd.corr);
    bool link_down = c->state == C_RECONNECTING;
    pthread_mutex_unlock(&c->lock);
    pthread_cond_destroy(&pd.cond);

    if (!pd.done)
        return rc ? rc
                  : mdg_fail(MDG_ETIMEDOUT, "no reply to '%s' within %d ms%s", command, timeout_ms,
                             link_down ? " (the link to the broker is down; reconnecting)" : "");
    if (pd.err)
        return mdg_fail(pd.err, "'%s' not answered: %s", command, pd.why);
    if (mdg_msg_is_error(pd.reply)) {
        rc = mdg_fail(MDG_EREMOTE, "%s", mdg_msg_error(pd.reply));
        mdg_msg_destroy(&pd.reply);
        return rc;
    }
    *reply = pd.reply;
    return 0;
}

/* ------------------------------------------------------------- shutdown */

int mdg_conn_wait_until_complete(mdg_conn *c, int timeout_ms)
{
    if (!c)
        return MDG_EINVAL;
    if (on_loop_thread(c))
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
        if (on_loop_thread(c)) {
            mdg_log(MDG_LOG_ERROR, "mdg_conn_destroy called from its own loop thread: refused");
            return;
        }
        mdg_conn_disconnect(c);
        pthread_join(c->thread, NULL);
    }
    size_t unsent = 0;
    for (out_item *o = c->out_head, *n; o; o = n) {
        n = (out_item *)o->m.next;
        out_free(o);
        unsent++;
    }
    mdg_chan_reset(&c->chan);
    if (unsent)
        mdg_log(MDG_LOG_WARN, "%zu queued message(s) not sent: connection destroyed", unsent);
    if (c->pending) {
        pending *pd;
        while ((pd = mdg_map_pop(c->pending)) != NULL)
            if (!pd->blocking)
                free(pd);
    }
    close_socket(c, false);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    mdg_loop_destroy(&c->loop);
    mdg_map_destroy(&c->pending);
    mdg_map_destroy(&c->flow);
    mdg_map_destroy(&c->in_flight);
    mdg_ring_free(&c->flow_ended);
    legacy_free(c);
    mdg_keys_destroy(&c->keys);
    pthread_cond_destroy(&c->state_cond);
    pthread_cond_destroy(&c->room_cond);
    pthread_mutex_destroy(&c->lock);
    free(c);
    *pc = NULL;
}
