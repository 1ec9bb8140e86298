/* conn_internal.h - what the connection's files share (not installed): the
 * connection's state, its pending calls and queued messages, and the
 * functions one of its files calls in another. Fields marked "under lock"
 * are shared with application threads; the rest belong to the loop thread.
 *
 * A message's way through the connection, file by file:
 *   in   conn_native.c   socket -> decode (frames and header checked)
 *        conn_receive.c  -> in order, once (the channel; acks) -> session
 *                        (welcome: new, resumed or lost) -> dispatch: a
 *                        command to its handler, a reply to its call
 *   out  conn_queue.c    a command or a handler's reply -> the out queue
 *                        (the backlog, a call's window, the broker's flow
 *                        control) -> the channel; acks, keepalives
 *        conn_native.c   -> encode -> socket
 *   conn_link.c          the link itself: socket, monitor, reconnect, what
 *                        a failed handshake means
 *   conn.c               the public API: set-up, start/stop, sends and calls
 *                        (pending calls, blocking and nested waits), shutdown
 * conn_native.c is the native protocol's transport (conn_transport below);
 * in legacy mode conn_legacy.c stands in its place. Which one is chosen
 * once at set-up; the other files call through it and never ask which. */
#ifndef MDG_CONN_INTERNAL_H
#define MDG_CONN_INTERNAL_H

#include "channel.h"
#include "internal.h"
#include "loop.h"
#include "map.h"
#include "msg.h"
#include "params.h"
#include "pool.h"
#include "wire.h"

#include <pthread.h>
#include <stdatomic.h>
#include <zmq.h>

#define SESSION_ID_MAX 64
#define ENDPOINT_MAX 300  /* "tcp://" location ":" port */
#define WHY_MAX 300       /* of a reason's text in fail_text: room for it with the endpoint */
#define CLOSE_FLUSH_MS 2000  /* disconnect waits this long for acks */
#define CONN_BROKERS_MAX 16  /* locations one connection may be given */
#define FLOW_PAUSED ((void *)1)
#define FLOW_ENDED ((void *)2)

/* Consistent evidence needed for MDG_EHANDSHAKE: handshakes the peer ended
 * in order, in a row. */
#define HS_VERDICT_AFTER 3

typedef struct conn_transport conn_transport;

enum conn_state { C_NEW, C_CONNECTING, C_READY, C_RECONNECTING, C_CLOSED };

/* A numbered message: queued by any thread (out_head, under lock) until
 * the loop thread hands it to the channel, which keeps it until the broker
 * acknowledges it. */
typedef struct out_item {
    mdg_chan_msg m; /* first: the channel's part (kind, corr, flags, command, frames) */
    uint64_t epoch; /* a reply: the session of the command it answers */
    bool pooled;    /* from c->out_pool (params of up to OUT_POOLED_PARAMS bytes) */
    uint8_t params[]; /* the encoded params, which m.params points at */
} out_item;

/* Params up to this size are queued in a block of the connection's
 * out_pool: a call or a reply with a few keys and a 64-byte value. */
#define OUT_POOLED_PARAMS 192

/* A call of ours that waits for its reply (c->pending, by corr). */
typedef struct pending {
    uint64_t corr;
    bool blocking;
    /* callback calls */
    mdg_reply_fn cb;
    void *arg;
    /* blocking calls: the waiter's stack frame; touched only under lock */
    pthread_cond_t cond;
    /* the reply came (or the call failed); a callback call whose transport
     * cannot mark a last reply is kept past its first, marked done */
    bool done;
    int err;
    mdg_msg *reply;
} pending;

/* A blocking call's record, on its caller's stack: a pending call and why
 * it ended without a reply (with err: a failover names two brokers). A
 * callback call's record (from c->pending_pool) is the pending alone. */
typedef struct blocking_call {
    pending pd; /* first: c->pending holds &pd */
    char why[2 * ENDPOINT_MAX + 200];
} blocking_call;

/* A message read during a nested wait, dispatched later in arrival order. */
typedef struct deferred {
    struct deferred *next;
    mdg_inbound in;
} deferred;

/* One broker location a connection may use (mdg_conn_add_broker). */
typedef struct conn_broker {
    char endpoint[ENDPOINT_MAX];
    uint8_t pk[MDG_KEY_BYTES];
} conn_broker;

struct mdg_conn {
    /* the broker of the current link: one of brokers[], switched by the
     * loop thread under lock (application threads read it in errors) */
    char endpoint[ENDPOINT_MAX];
    uint8_t server_pk[MDG_KEY_BYTES];
    conn_broker brokers[CONN_BROKERS_MAX]; /* set before start */
    int n_brokers;
    mdg_keys *keys;
    mdg_conn_options opts;
    const conn_transport *transport; /* how we speak to the broker, chosen at set-up */
    void *transport_state;           /* the transport's own (loop thread), or NULL */
    void *ctx, *sock, *mon;
    unsigned sock_gen; /* names each socket's monitor endpoint */
    mdg_loop *loop;
    pthread_t thread;
    bool thread_started;

    /* Held by the thread that uses the socket and the "loop thread only"
     * fields below: the loop thread but while it sleeps in poll, or an
     * application thread's blocking call leading while it sleeps (conn.c). */
    pthread_mutex_t drive;

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
    /* the broker's max_message, from its welcome (0 until then): a larger
     * frame would make libzmq drop our link, and the message would go
     * again on the next, for ever, so it is refused where it is made.
     * Atomic: read on every send without the lock. */
    atomic_llong broker_max;
    mdg_map *pending;              /* corr -> pending */
    mdg_pool out_pool, pending_pool; /* freed out_items and pendings (under lock) */
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
    bool handshaken; /* security handshake done on the current link */
    int hs_closed;   /* handshakes in a row the peer ended (handshake_failed) */
    int hs_reset;    /* links in a row reset before their handshake completed */
    bool pollout;    /* waiting for room in the socket's queue */
    bool room_made;  /* the channel released messages: wake who waits for room */
    bool acking;     /* conn_acked is releasing messages, under lock */
    int attempt;     /* reconnects since the last session */
    int ack_timer;
    int reconnect_timer; /* pending reconnect, or 0 */
    int broker_at;       /* brokers[] index of endpoint */
    int64_t down_since;  /* when the link to this broker went down, or 0 */
    int refused_in_row;  /* brokers in a row that turned us down (key or handshake refused) */
    char session_at[ENDPOINT_MAX]; /* the broker that opened the session */
    int64_t last_tx; /* when we last sent anything (keepalive) */
    int64_t close_deadline;
    deferred *def_head, *def_tail;
    /* the head frame being read while messages of it are left (a frame
     * may hold several; n > 0): read before the socket is */
    mdg_frames rx_frames;
    mdg_inbound_cursor rx_at;
    const mdg_cmd *cmds;
    void *cmd_arg;
    mdg_error_fn on_error;
    void *err_arg;
    mdg_event_fn on_event;
    void *ev_arg;
};

/* How the connection speaks to its broker: one per protocol, chosen once
 * at set-up (conn_native.c, conn_legacy.c). Loop thread, but for init. */
struct conn_transport {
    /* Numbered messages to the link, and whether the broker acknowledges
     * them (the channel's ops; their owner is the connection). */
    const mdg_chan_ops *chan;
    /* Make transport_state at set-up (may refuse the options: MDG_EINVAL);
     * free it with the connection. NULL: there is none. */
    int (*init)(mdg_conn *c);
    void (*free_state)(void *state);
    /* Security options of each new socket; NULL: none. */
    int (*secure)(mdg_conn *c, void *sock);
    /* The first thing on every new link: it opens or resumes the session. */
    void (*hello)(mdg_conn *c);
    /* An unnumbered control message (HELLO, ACK, BYE; params taken, the
     * socket is there); NULL: the protocol has none. */
    void (*control)(mdg_conn *c, int kind, mdg_params *params);
    /* The next message, decoded into *in (initialised by the caller, closed
     * by it either way): of the frames f read from the socket (taken), or
     * with f NULL of what is left of the last ones (c->rx_frames.n > 0). 0 to
     * dispatch it; -1 when it was handled or dropped here; 1 when nothing
     * is left of the last frames. (A transport that numbers its messages
     * puts each through conn_in_order.) */
    int (*ingest)(mdg_conn *c, mdg_frames *f, mdg_inbound *in);
    /* A reply or error for one of our calls, or a notice (m taken). */
    void (*on_reply)(mdg_conn *c, mdg_msg *m);
    /* What it means when the peer ends the handshake in order
     * HS_VERDICT_AFTER times in a row before the first session (text). */
    void (*closed_verdict)(mdg_conn *c, char *text, size_t len);
    const char *handshake; /* its handshake's name in what we log */
    const char *mismatch;  /* the verdict when the peer names another security mechanism */
    /* what MDG_EV_RECOVERED adds when the broker does not say whether it
     * kept the session; NULL: it does */
    const char *recovered_note;
    bool flow; /* the broker may send MDG_FLOW_COMMAND */
};

extern const conn_transport conn_native_transport;
extern const conn_transport conn_legacy_transport;

/* conn.c: the public API, pending calls */
bool conn_on_loop_thread(mdg_conn *c);
/* This thread leads c's loop (a blocking call of its own, conn.c). */
bool conn_leads(mdg_conn *c);
void conn_event(mdg_conn *c, int ev, const char *detail);
void conn_fail_pending(mdg_conn *c, int err, const char *text);

/* conn_queue.c: the outgoing side */
/* Free a queued message: under c->lock (_locked) or not. */
void conn_out_free(mdg_conn *c, out_item *o);
void conn_out_free_locked(mdg_conn *c, out_item *o);
/* An item's block back, before it was built (under c->lock). */
void conn_out_block_free_locked(mdg_conn *c, out_item *o);
/* A callback call's record, from the pool, and back (under c->lock). */
pending *conn_pending_alloc_locked(mdg_conn *c);
void conn_pending_free_locked(mdg_conn *c, pending *pd);
/* Fail the pending call corr, if any, as conn_fail_pending fails them all.
 * Loop thread. */
void conn_fail_call(mdg_conn *c, uint64_t corr, int err, const char *text);
/* MDG_EINVAL with the reason when a message of these sizes is larger than
 * the broker takes (c->broker_max; what names it: "a message", "a
 * reply"), else 0. Any thread. */
int conn_too_large(mdg_conn *c, const char *what, size_t command_len, size_t plen, size_t bulk_len);
int conn_out_new(mdg_conn *c, out_item **out, int kind, const char *command, uint64_t corr, uint32_t flags,
                 mdg_params *params, const void *bulk, size_t bulk_len);
/* conn_out_new in two steps, for a caller that holds the lock anyway: a
 * block for params of plen bytes (NULL when out of memory), then the
 * message built in it (params taken; the block is freed on failure). */
out_item *conn_out_alloc_locked(mdg_conn *c, size_t plen);
int conn_out_build(mdg_conn *c, out_item *o, int kind, const char *command, uint64_t corr, uint32_t flags,
                   mdg_params *params, size_t plen, const void *bulk, size_t bulk_len);
int conn_enqueue(mdg_conn *c, out_item *o);
size_t conn_drop_stale_replies(mdg_conn *c);
void conn_chan_release(void *owner, mdg_chan_msg *m);
void conn_room_made(mdg_conn *c);
void conn_acked(mdg_conn *c, uint64_t ack);
void conn_flush(mdg_conn *c);
void conn_send_control(mdg_conn *c, int kind, mdg_params *params);
int conn_on_keepalive(mdg_loop *loop, void *arg, short revents);
void conn_schedule_ack(mdg_conn *c);
int conn_queue_reply(mdg_msg *m, int kind, uint32_t flags, mdg_params *results, const void *bulk,
                     size_t bulk_len);
int conn_send_reply(mdg_msg *m, int kind, uint32_t flags, mdg_params *results, const void *bulk,
                    size_t bulk_len);
void conn_on_flow(mdg_conn *c, const mdg_msg *m);

/* conn_receive.c: in order -> session -> dispatch */
int conn_in_order(mdg_conn *c, const mdg_header *h);
void conn_session_open(mdg_conn *c, const uint8_t *sid, size_t len, bool resumed, int64_t ack);
void conn_on_reply(mdg_conn *c, mdg_msg *m);
void conn_dispatch(mdg_conn *c, mdg_inbound *in);
bool conn_next_inbound(mdg_conn *c, mdg_inbound *in);
void conn_drop_rx(mdg_conn *c);
void conn_defer(mdg_conn *c, mdg_inbound *in);
bool conn_pop_deferred(mdg_conn *c, mdg_inbound *in);
int conn_on_socket(mdg_loop *loop, void *arg, short revents);

/* conn_link.c: the link */
int conn_set_option(void *sock, int opt, const void *v, size_t len);
int conn_open_socket(mdg_conn *c);
void conn_close_socket(mdg_conn *c, bool discard);
void conn_resync(mdg_conn *c, const char *why);
void conn_link_lost(mdg_conn *c, const char *why);
void conn_fatal(mdg_conn *c, int err, const char *text);
int conn_broker_set(conn_broker *br, const char *location, int port, const uint8_t pk[MDG_KEY_BYTES]);

#endif
