/* broker_internal.h - what the broker's files share (not installed): the
 * broker's state, a peer's session, and the functions one file of the
 * broker calls in another. Everything runs on the broker's loop thread
 * unless a comment says otherwise.
 *
 * A message's way through the broker, file by file:
 *   broker_native.c / broker_legacy.c   socket -> decode (the two listeners),
 *                                       into one mdg_inbound (inbound.h)
 *   broker_session.c                    which session: open, resume, detach, close
 *   broker_channel.c                    in order and once (numbers, acks, resends,
 *                                       held messages), and back out to the peer
 *   broker_route.c                      dispatch to a handler, or forward to a node;
 *                                       replies and the nodes' answers routed back
 *   broker_auth.c                       who may connect (ZAP, allow-list, budget)
 *   broker.c                            lifecycle and the public API
 *   fleet*.c (fleet.h)                  in a fleet: the other brokers over NATS,
 *                                       and calls to and from their nodes */
#ifndef MDG_BROKER_INTERNAL_H
#define MDG_BROKER_INTERNAL_H

#include "channel.h"
#include "inbound.h"
#include "internal.h"
#include "loop.h"
#include "map.h"
#include "pool.h"
#include "msg.h"
#include "params.h"
#include "wire.h"

#include <pthread.h>
#include <stdatomic.h>
#include <zmq.h>

#define SESSION_ID_BYTES 16
#define USER_ID_LEN (1 + MDG_KEY_B64_LEN) /* role letter + base64 pk */
#define BACKLOG_RETRY_MS 5                 /* retry peers whose pipe was full */
#define GRACE_CHECK_MS 250
#define TOMBSTONE_MS 10000                 /* an ended channel's late replies are dropped quietly this long */
#define SPARE_FDS 4                        /* descriptors kept to clear the accept backlog with */

/* Who has lately given a node messages (share_take, broker_route.c): the
 * session of the last message, when, and until when another session counts
 * as about. A session alone at a node gets more than node_window. Kept with
 * the node's session, or for a node of another broker with its directory
 * entry (fleet_node_sharing). */
typedef struct node_sharing {
    uint8_t last_sharer[SESSION_ID_BYTES];
    int64_t last_shared, shared_until;
} node_sharing;

/* A session: a user's or a node's, on either listener. It outlives its
 * link for a grace period (attached false), so that a client can resume. */
typedef struct peer {
    uint8_t rid[255];
    uint8_t rid_len;
    /* the routing id of the link before the last drop: what it delivered
     * before dropping may still be queued in libzmq and is read normally */
    uint8_t stale_rid[255];
    uint8_t stale_rid_len;
    char user_id[USER_ID_LEN + 1]; /* as set by our ZAP reply */
    uint8_t pk[MDG_KEY_BYTES];
    int role;
    uint8_t session_id[SESSION_ID_BYTES];
    int fd;          /* the connection's socket, to notice it closing */
    void *data;      /* the application's per-session / per-node data */
    bool attached;     /* has a live link (rid and fd are valid) */
    bool in_to_flush, in_owed_ack; /* listed in b->to_flush / b->owed_ack (broker_list) */
    bool silent;       /* detached for silence, its link may still be open */
    int64_t detached_at;
    int64_t last_rx;   /* when it last sent anything */
    int silence_ms;    /* silent this long = gone (from its heartbeat) */
    mdg_broker *broker;
    /* numbered messages both ways: ours kept until acknowledged */
    mdg_channel chan;
    /* messages from this peer read but not yet processed because where
     * they go is full: processed in order once there is room, and not
     * acknowledged before, so the peer's own queue limit holds it back */
    struct held *held_head, *held_tail;
    size_t held_len;
    bool resend_owed;  /* messages past hold_limit were not taken: ask for them once the held ones went */
    int paused_fwds;   /* calls to nodes told to pause because this session is not reading */
    node_sharing sharing; /* a node: who has lately given it messages */
    struct broker_listener *listener;         /* the one its link is on */
    const struct broker_transport *transport; /* how messages reach it: its listener's */
    void *transport_state; /* the transport's own state of this peer, or NULL */
} peer;

/* How the core reaches a session's peer, whatever protocol it speaks: one
 * per listener. Session, channel and route code call through it and never
 * ask which protocol a peer speaks. */
typedef struct broker_transport {
    /* One message to the peer in its own protocol, on its listener's
     * socket; mdg_wire_send's contract (params borrowed, bulk taken but on
     * MDG_EAGAIN). */
    int (*send)(mdg_broker *b, peer *p, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk);
    /* A head frame of several messages (mdg_wire_send_head's contract);
     * a transport that acknowledges has one, NULL: one message at a time. */
    int (*send_frame)(mdg_broker *b, peer *p, zmq_msg_t *head);
    /* Whether a session whose link dropped may wait for a resume; NULL:
     * always. */
    bool (*resumable)(const peer *p);
    /* Frees transport_state; NULL when there is none. */
    void (*free_state)(void *state);
    /* The peer numbers its messages and acknowledges ours, so its own
     * window holds it back; else what it sends is unnumbered and what we
     * send is done once libzmq has it. */
    bool acks;
    /* The peer understands the broker's MDG_FLOW_COMMAND (pause, resume, end). */
    bool flow;
} broker_transport;

struct broker_listener;

/* What a protocol's module says of its listener; the core goes through
 * every listener alike (binding, connection events, teardown). */
typedef struct broker_listener_ops {
    const char *name; /* in log lines */
    /* Its options, read by mdg_broker_new: whether it listens, on which
     * port. 0, or MDG_EINVAL with the reason. */
    int (*configure)(struct broker_listener *l, const mdg_broker_options *opts);
    /* Makes its socket, binds and watches it (broker_listen_on). */
    int (*bind)(mdg_broker *b, struct broker_listener *l);
    const broker_transport *transport; /* how its peers are reached */
} broker_listener_ops;

/* A listener: one ROUTER socket, its connection events, and the routing
 * ids of its links (each socket has its own). */
typedef struct broker_listener {
    const broker_listener_ops *ops;
    mdg_broker *broker;
    bool on;              /* listens (configure says) */
    void *sock;           /* its ROUTER; NULL until bound */
    void *mon;            /* its monitor: connections accepted, dropped */
    mdg_map *rids;        /* routing id on its socket -> peer */
    mdg_map *stray;       /* socket fd -> this: links without a session, logged once */
    int port, bound_port; /* asked for (0: any free one), got */
    int listen_fd;        /* its listening socket (ZMQ_EVENT_LISTENING), or -1 */
} broker_listener;

/* The listeners, in the order they are bound. The first (the native one)
 * always listens: its socket is the broker's, made first. */
#define BROKER_LISTENERS 2

typedef struct held {
    struct held *next;
    mdg_inbound in;
} held;

/* A numbered message kept until the peer acknowledges it. */
typedef struct kept {
    mdg_chan_msg m; /* first: the channel's part */
    /* a fire-and-forget command forwarded to a node: it counts in its
     * sender's share of that node until the node acknowledges it */
    bool counted;
    bool pooled; /* from b->kept_pool (params of up to KEPT_POOLED_PARAMS bytes) */
    uint8_t origin[SESSION_ID_BYTES];
    uint8_t params[]; /* the encoded params, which m.params points at */
} kept;

/* Params up to this size are kept in a block of the broker's kept_pool:
 * a call or a reply with a few keys and a 64-byte value, with the stamps. */
#define KEPT_POOLED_PARAMS 256

/* Why the broker refused something (broker_metrics.c names them). */
enum broker_refusal {
    REFUSED_ZAP_UNKNOWN_KEY, /* handshake: key not admitted (or revoked) */
    REFUSED_ZAP_BUSY,        /* handshake: at the connection limit */
    REFUSED_ZAP_NOT_CURVE,   /* handshake: not a CURVE client */
    REFUSED_COMMAND,         /* a message refused with an error to its sender */
    REFUSED_QUEUE_FULL,      /* a send past the receiver's queue_limit */
    REFUSED_HELLO,           /* a hello naming another key's session */
    REFUSED_REASONS
};

/* The broker's counters for /metrics (broker_metrics.c). Written on the
 * loop thread only, read from the metrics server's: relaxed atomics, a
 * plain load and store each (broker_count), no locked instruction. */
typedef struct broker_metrics {
    _Atomic uint64_t msgs_in[MDG_K_MAX + 1], bytes_in[MDG_K_MAX + 1];
    _Atomic uint64_t msgs_out[MDG_K_MAX + 1], bytes_out[MDG_K_MAX + 1];
    _Atomic uint64_t refused[REFUSED_REASONS];
    _Atomic uint64_t handshakes, opened[3], resumes, lost; /* opened by role */
    /* gauges, taken by a loop timer (broker_metrics_start) */
    _Atomic uint64_t sessions[3][2]; /* [role][attached] */
    _Atomic uint64_t held_senders, held_msgs, queued, queue_max, in_flight, conns;
    /* in a fleet: members up and down, the other brokers' nodes, whether
     * NATS is connected (gauges); fleet messages refused by reason
     * (enum fleet_refusal; counted before the rate-limited log line) */
    _Atomic uint64_t fleet_up, fleet_down, fleet_nodes, fleet_nats, fleet_refused[8];
    _Atomic int64_t started_ms, refreshed_ms; /* mdg_now_ms; 0: not started */
} broker_metrics;

static inline void broker_count(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

struct mdg_broker {
    broker_metrics metrics;
    mdg_keys *keys;
    char bind_address[128];
    int port;       /* asked for */
    int bound_port; /* got */
    void *ctx, *zap;
    broker_listener listeners[BROKER_LISTENERS];
    mdg_loop *loop;
    const mdg_cmd *cmds;
    void *cmd_arg;
    mdg_broker_hooks hooks;
    void *hook_arg;
    mdg_auth_fn auth;
    void *auth_arg;
    mdg_map *allow; /* pk -> role, when no auth function is given */
    bool allow_any;
    long long max_message;
    mdg_map *sessions; /* session id -> peer (users and nodes) */
    size_t user_count, node_count; /* of sessions, for other threads (atomic) */
    mdg_map *nodes;    /* node pk -> peer: one live connection per node */
    mdg_map *by_fd;    /* socket fd -> peer */
    mdg_map *fwds;     /* forwarded call id -> fwd */
    mdg_pool fwd_pool, kept_pool; /* freed fwds and kept messages, for the next burst */
    uint64_t next_fwd; /* last id given; starts at random, see mdg_broker_new */
    size_t tombstones; /* ended channels among fwds */
    mdg_map *shares;   /* session id + node pk -> share */
    mdg_map *ready;    /* session id -> held peer that may go on now */
    int grace_ms, node_grace_ms, queue_limit, node_window, hold_limit;
    mdg_map *owed_ack; /* session id -> peer owed an ACK */
    mdg_map *to_flush; /* session id -> peer given messages this turn of the loop */
    mdg_map *backlog;  /* session id -> peer with messages libzmq would not take yet */
    mdg_map *holding;  /* session id -> peer with held messages */
    /* Connections are bounded by descriptors: past max_conns, handshakes
     * are refused (ZAP 500) and the sessions already open go on. */
    int max_conns_asked, max_conns;
    long live_conns;     /* accepted minus dropped, all listeners */
    long fd_limit;       /* RLIMIT_NOFILE when the broker bound */
    int spare[SPARE_FDS], n_spare; /* given up to clear the accept backlog when out of them */
    mdg_ratelog full_log, accept_log; /* LIMIT_LOG_MS apart */
    pthread_t thread;
    bool thread_started;
    pthread_t loop_thread;
    bool loop_running;
    /* messages from other threads, sent by the loop thread */
    pthread_mutex_t qlock;
    struct queued *q_head, *q_tail;
    struct broker_timer {
        mdg_broker_timer_fn fn;
        void *arg;
        mdg_broker *b;
        struct broker_timer *next;
    } *timers; /* mdg_broker_add_timer's, each its own block: the loop keeps pointers */
    struct fleet *fleet; /* the fleet it joined (fleet.h), or NULL */
};

/* A call forwarded to a node: only that node may answer it, and its
 * replies go to the calling session only. */
typedef struct fwd {
    uint64_t id; /* the correlation id the node sees */
    uint8_t node_pk[MDG_KEY_BYTES];
    uint8_t session_id[SESSION_ID_BYTES];
    uint64_t user_corr;
    char command[64];
    bool paused;        /* the node was told to pause its replies (its caller is not reading) */
    size_t since_pause; /* replies that came after that (on their way before the node heard) */
    /* ended by the broker (caller gone or not reading): a tombstone whose
     * late replies are dropped quietly until ended_at + TOMBSTONE_MS */
    bool ended;
    int64_t ended_at;
    /* fleet (docs/fleet.md): the broker the node is at, when not this one;
     * or, at the node's broker, the one the call came from, whose forward
     * id is user_corr (session_id is then the caller's there) */
    struct fleet_member *via, *from;
} fwd;

/* One session's share of one node: what it has there at once (open calls,
 * unacknowledged fire-and-forget commands), at most node_window. */
typedef struct share {
    uint8_t key[SESSION_ID_BYTES + MDG_KEY_BYTES]; /* session id, node pk */
    int used;
} share;

/* A key's first 12 base64 characters, enough to tell keys apart in a log
 * (out, returned so that it can be made inside a log call). */
static inline const char *pk_short(const uint8_t pk[MDG_KEY_BYTES], char out[MDG_KEY_B64_LEN + 1])
{
    mdg_pk_to_b64(pk, out);
    out[12] = '\0';
    return out;
}

/* broker_metrics.c: counters for /metrics */
int broker_metrics_start(mdg_broker *b);
void broker_count_in(mdg_broker *b, const mdg_inbound *in);
void broker_count_out(mdg_broker *b, int kind, const zmq_msg_t *params, const zmq_msg_t *bulk);

/* broker.c: lifecycle and the public API */
int broker_before_start(const mdg_broker *b, const char *what);
bool broker_on_loop(const mdg_broker *b);
int broker_queue_send(mdg_broker *b, bool to_node, const uint8_t *key, size_t key_len, mdg_header *h,
                      mdg_params *params, const void *bulk, size_t bulk_len);
int broker_setsock(void *s, int opt, const void *v, size_t len, const char *name);
int broker_new_router(mdg_broker *b, void **out, int64_t maxmsg);
int broker_listen_on(mdg_broker *b, broker_listener *l, mdg_loop_fn on_input, char ep[160]);
broker_listener *broker_listener_of(const mdg_broker *b, const broker_listener_ops *ops);

/* broker_auth.c: who may connect */
int broker_role_of(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES]);
int broker_on_zap(mdg_loop *loop, void *arg, short revents);
void broker_take_spares(mdg_broker *b);
void broker_accept_failed(mdg_broker *b, broker_listener *l, int err);
void broker_listening(broker_listener *l, int fd);
void broker_set_budget(mdg_broker *b);

/* broker_session.c: the session table */
void broker_close_session(mdg_broker *b, peer *p, const char *why);
void broker_detach(mdg_broker *b, peer *p, const char *why);
/* What a hello says of its link, for the session on it: silent this long =
 * gone (from its heartbeat), and the messages it takes in one head frame
 * (mdg_chan_said_batch). Set before the welcome goes. */
typedef struct hello_terms {
    int silence_ms;
    size_t max_batch;
} hello_terms;
void broker_open_session(mdg_broker *b, broker_listener *l, const uint8_t *rid, size_t rid_len,
                         const char *user_id, int fd, const hello_terms *terms, void *state);
bool broker_resume_session(mdg_broker *b, broker_listener *l, const uint8_t *rid, size_t rid_len,
                           const char *uid, int fd, const uint8_t *sid, size_t sid_len, uint64_t ack,
                           const hello_terms *terms);
bool broker_stray_first(broker_listener *l, int fd);
int broker_on_monitor(mdg_loop *loop, void *arg, short revents);
int broker_on_grace_timer(mdg_loop *loop, void *arg, short revents);

/* broker_channel.c: each session's numbered messages, both ways */
void broker_chan_init(peer *p);
void broker_flush_peer(mdg_broker *b, peer *p);
/* List p in b->to_flush or b->owed_ack (once: a flag on p saves a lookup
 * per message), take it off (whether it was listed), or pop any one. */
void broker_list(mdg_broker *b, mdg_map *list, peer *p);
bool broker_unlist(mdg_broker *b, mdg_map *list, peer *p);
peer *broker_list_pop(mdg_broker *b, mdg_map *list);
int broker_flush_turn(mdg_loop *loop, void *arg, short revents);
size_t broker_over_limit(const mdg_broker *b, int quarters);
int broker_send_frames(mdg_broker *b, peer *p, mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk);
int broker_send_frames_max(mdg_broker *b, peer *p, mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk,
                           size_t limit, const uint8_t *origin);
void broker_free_kept(mdg_broker *b, peer *p);
void broker_trim_kept(mdg_broker *b, peer *p, uint64_t ack);
void broker_room_made(mdg_broker *b, peer *p);
int broker_send_to(mdg_broker *b, const uint8_t *rid, size_t rid_len, peer *p, int kind, uint64_t corr,
                   uint32_t flags, const char *command, mdg_params *params, const void *bulk, size_t bulk_len);
void broker_send_error(mdg_broker *b, const uint8_t *rid, size_t rid_len, peer *p, uint64_t corr,
                       const char *command, const char *text);
void broker_receive(mdg_broker *b, peer *p, mdg_inbound *in, const char *who);
void broker_release_ready(mdg_broker *b);
int broker_on_ack_timer(mdg_loop *loop, void *arg, short revents);
int broker_on_backlog_timer(mdg_loop *loop, void *arg, short revents);

/* broker_route.c: dispatch, forwarding to nodes, fairness */
void broker_share_release(mdg_broker *b, const uint8_t *sid, const uint8_t *node_pk);
void broker_fwd_free(mdg_broker *b, fwd *f);
void broker_resume_paused_fwds(mdg_broker *b, peer *p);
void broker_drop_fwds(mdg_broker *b, peer *p);
bool broker_dispatch_command(mdg_broker *b, peer *p, mdg_inbound *in);
bool broker_route_node_reply(mdg_broker *b, peer *node, mdg_inbound *in);
/* fleet: a reply or error from member m to our call f->id; a call from m
 * to one of our nodes (its params stamped by m, "node" naming the target) */
void broker_route_fleet_reply(mdg_broker *b, struct fleet_member *m, mdg_inbound *in);
void broker_route_fleet_call(mdg_broker *b, struct fleet_member *m, mdg_inbound *in);
void broker_end_fwd(mdg_broker *b, fwd *f, const char *why);
void broker_fleet_flow(mdg_broker *b, fwd *f, const char *state);
/* Call f cannot be answered: its caller (a session here, or the broker
 * it came from) is told why, and it is forgotten. */
void broker_fail_fwd(mdg_broker *b, fwd *f, const char *why);
/* Calls waiting on node pk at broker via (NULL: a node of ours) fail to
 * their callers (it is gone). */
void broker_drop_node_fwds(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], struct fleet_member *via);

/* broker_native.c: the native listener */
extern const broker_listener_ops broker_native_listener;
void broker_drain(broker_listener *l, void (*handle)(mdg_broker *, broker_listener *, mdg_frames *));
int broker_native_notice(mdg_broker *b, const uint8_t *rid, size_t rid_len, const mdg_header *h,
                         zmq_msg_t *params, zmq_msg_t *bulk);

/* broker_legacy.c: the Messidge 1.x listener */
extern const broker_listener_ops broker_legacy_listener;

#endif
