/* broker.c - the broker: one ROUTER socket with CURVE, a ZAP handler that
 * decides who may connect, sessions keyed by routing id, and validation of
 * every command against the application's table before its handler runs.
 *
 * Everything here runs on the broker's loop thread (one thread
 * owns all state; libzmq's I/O threads do the encryption). */
#include "internal.h"
#include "legacy.h"
#include "loop.h"
#include "map.h"
#include "msg.h"
#include "params.h"
#include "wire.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#define SESSION_ID_BYTES 16
#define USER_ID_LEN (1 + MDG_KEY_B64_LEN) /* role letter + base64 pk */
#define RECV_BATCH 256                     /* messages handled per wake-up */
#define BROKER_HWM 10000
#define BROKER_MAX_MSG (256LL << 20)       /* ZMQ_MAXMSGSIZE: one frame */
#define BROKER_LINGER_MS 1000              /* bounded flush at shutdown */
#define ACK_EVERY 32                       /* acknowledge at least every N messages... */
#define ACK_DELAY_MS 20                    /* ...or this long after the first */
#define BACKLOG_RETRY_MS 5                 /* retry peers whose pipe was full */
#define GRACE_CHECK_MS 250
#define LEGACY_HEARTBEAT_MS 2000           /* 1.x peers do not beat: libzmq pings them */
#define LEGACY_HEADROOM (64 << 10)         /* a little over max_message is refused, not dropped */
#define LEGACY_HELLO_MAX 1024              /* a 1.x link's first frame: its hello is ~150 bytes */
#define NODE_WINDOW 64                     /* default: one session's messages at one node at once */
#define PAUSE_OVERSHOOT 10000              /* replies a paused call may still bring: a client's default queue_limit */
#define TOMBSTONE_MS 10000                 /* an ended channel's late replies are dropped quietly this long */
#define FLOW_COMMAND "mdg.flow"            /* broker -> node: pause, resume or end one call's replies */
/* Each connection holds one descriptor. FD_RESERVE are kept for the rest of
 * the process: the account server's 64 connections, the identity store,
 * logs, and connections accepted only to be refused (docs/guarantees.md). */
#define FD_RESERVE 96
#define FD_LOW_WARN 1000                   /* a limit allowing fewer connections is warned about */
#define LIMIT_LOG_MS 10000                 /* repeated refusals are logged this often */
#define SHED_MAX 1024                      /* waiting connections closed per accept failure */
#define SPARE_FDS 4                        /* descriptors kept to clear the accept backlog with */
#define MONITOR_FAILS_MAX 1000             /* accept failures read per call: libzmq may spin */

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
    uint64_t tx_seq; /* last seq we sent */
    uint64_t rx_seq; /* last seq we received */
    uint64_t acked;  /* last of ours the peer has acknowledged */
    uint64_t ack_sent; /* last rx_seq we told the peer about */
    bool attached;     /* has a live link (rid and fd are valid) */
    bool silent;       /* detached for silence, its link may still be open */
    int64_t detached_at;
    int64_t last_rx;   /* when it last sent anything */
    int silence_ms;    /* silent this long = gone (from its heartbeat) */
    /* numbered messages not yet acknowledged, oldest first; from `unsent`
     * on they have not been handed to libzmq yet */
    struct kept *out_head, *out_tail, *unsent;
    size_t out_len;
    /* messages from this peer read but not yet processed because where
     * they go is full: processed in order once there is room, and not
     * acknowledged before, so the peer's own queue limit holds it back */
    struct held *held_head, *held_tail;
    size_t held_len;
    bool resend_owed;  /* messages past hold_limit were not taken: ask for them once the held ones went */
    int paused_fwds;   /* calls to nodes told to pause because this session is not reading */
    struct legacy_link *legacy; /* a Messidge 1.x peer, or NULL */
} peer;

/* What a 1.x peer needs on top: its session key and, since 1.x names
 * calls by uuid and we by number, the uuids of calls it made to us. */
typedef struct legacy_link {
    bool sealed; /* a user link: params and bulk are sealed with key */
    /* a sealed frame of this session opened: its peer holds the user's
     * secret key (a 1.x hello proves nothing; a session that never proves
     * it gets no grace period when its link drops) */
    bool proven;
    uint8_t key[MDG_LEGACY_KEY];
    mdg_map *uuids; /* our corr -> legacy_uuid, until the final reply */
    mdg_ring order; /* those corrs, oldest first: past queue_limit the oldest goes */
    bool eviction_logged; /* said once per session, not once per call */
    uint64_t next_corr;
} legacy_link;

typedef struct legacy_uuid {
    size_t len;
    uint8_t bytes[MDG_LEGACY_MAX_UUID];
} legacy_uuid;

typedef struct held {
    struct held *next;
    mdg_header h;
    mdg_frames f;
} held;

/* A numbered message kept until the peer acknowledges it. */
typedef struct kept {
    struct kept *next;
    mdg_header h;
    zmq_msg_t params, bulk;
    bool has_bulk;
    /* a fire-and-forget command forwarded to a node: it counts in its
     * sender's share of that node until the node acknowledges it */
    bool counted;
    uint8_t origin[SESSION_ID_BYTES];
} kept;

struct mdg_broker {
    mdg_keys *keys;
    char bind_address[128];
    int port;       /* asked for */
    int bound_port; /* got */
    void *ctx, *router, *zap;
    mdg_loop *loop;
    const mdg_cmd *cmds;
    void *cmd_arg;
    mdg_broker_hooks hooks;
    void *hook_arg;
    mdg_auth_fn auth;
    void *auth_arg;
    mdg_map *allow; /* pk -> role, when no auth function is given */
    bool allow_any;
    mdg_map *peers;    /* routing id -> peer */
    mdg_map *lpeers;   /* routing id on the legacy socket -> 1.x peer */
    void *lrouter, *lmon; /* the 1.x listener (off by default) and its monitor */
    bool legacy;
    int legacy_port, legacy_bound_port;
    long long max_message;
    mdg_map *sessions; /* session id -> peer (users and nodes) */
    mdg_map *nodes;    /* node pk -> peer: one live connection per node */
    mdg_map *by_fd;    /* socket fd -> peer */
    mdg_map *fwds;     /* forwarded call id -> fwd */
    uint64_t next_fwd; /* last id given; starts at random, see mdg_broker_new */
    size_t tombstones; /* ended channels among fwds */
    mdg_map *shares;   /* session id + node pk -> share */
    mdg_map *ready;    /* session id -> held peer that may go on now */
    int grace_ms, node_grace_ms, queue_limit, node_window, hold_limit;
    mdg_map *owed_ack; /* session id -> peer owed an ACK */
    mdg_map *backlog;  /* session id -> peer with messages libzmq would not take yet */
    mdg_map *holding;  /* session id -> peer with held messages */
    void *mon;         /* ROUTER monitor: tells us when a connection drops */
    /* Connections are bounded by descriptors: past max_conns, handshakes
     * are refused (ZAP 500) and the sessions already open go on. */
    int max_conns_asked, max_conns;
    long live_conns;     /* accepted minus dropped, both listeners */
    long fd_limit;       /* RLIMIT_NOFILE when the broker bound */
    int listen_fd[2];    /* the native and 1.x listeners' sockets (ZMQ_EVENT_LISTENING) */
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
} fwd;

/* One session's share of one node: what it has there at once (open calls,
 * unacknowledged fire-and-forget commands), at most node_window. */
typedef struct share {
    uint8_t key[SESSION_ID_BYTES + MDG_KEY_BYTES]; /* session id, node pk */
    int used;
} share;

/* A message queued by another thread for a session or a node. */
typedef struct queued {
    struct queued *next;
    bool to_node;
    bool kick;                  /* disconnect the key instead of sending */
    uint8_t key[MDG_KEY_BYTES]; /* session id or node pk */
    size_t key_len;
    mdg_header h;
    zmq_msg_t params, bulk;
    bool has_bulk;
} queued;

/* A key's first 12 base64 characters, enough to tell keys apart in a log
 * (out, returned so that it can be made inside a log call). */
static const char *pk_short(const uint8_t pk[MDG_KEY_BYTES], char out[MDG_KEY_B64_LEN + 1])
{
    mdg_pk_to_b64(pk, out);
    out[12] = '\0';
    return out;
}

/* ------------------------------------------------------------------ set-up */

int mdg_broker_new(mdg_broker **out, const mdg_keys *keys, const mdg_broker_options *opts)
{
    if (!out || !keys)
        return mdg_fail(MDG_EINVAL, "mdg_broker_new needs keys");
    *out = NULL;
    if (sodium_init() < 0)
        return mdg_fail(MDG_ESYS, "libsodium failed to initialise");
    mdg_broker *b = calloc(1, sizeof *b);
    if (!b)
        return MDG_ENOMEM;
    const char *addr = opts && opts->bind_address ? opts->bind_address : "*";
    if (strlen(addr) >= sizeof b->bind_address) {
        free(b);
        return mdg_fail(MDG_EINVAL, "bind address too long");
    }
    strcpy(b->bind_address, addr);
    b->port = opts ? opts->port : MDG_DEFAULT_PORT;
    b->grace_ms = opts && opts->session_grace_ms > 0 ? opts->session_grace_ms : 60000;
    b->node_grace_ms = opts && opts->node_grace_ms > 0 ? opts->node_grace_ms : 5000;
    b->queue_limit = opts && opts->queue_limit > 0 ? opts->queue_limit : 10000;
    b->node_window = opts && opts->node_window > 0 ? opts->node_window : NODE_WINDOW;
    b->hold_limit = opts && opts->hold_limit > 0 ? opts->hold_limit : b->queue_limit;
    b->legacy = opts && opts->legacy;
    b->legacy_port = opts ? opts->legacy_port : 0;
    b->max_message = opts && opts->max_message > 0 ? opts->max_message : BROKER_MAX_MSG;
    /* Forward ids count up from a random 63-bit start, so that two broker
     * processes (one restarted, say) do not hand out the same ids: a node
     * still answering a call of the old process never names a call of the
     * new one. 63 bits: counting up never wraps to 0 ("no reply wanted"). */
    randombytes_buf(&b->next_fwd, sizeof b->next_fwd);
    b->next_fwd >>= 1;
    b->max_conns_asked = opts && opts->max_connections > 0 ? opts->max_connections : 0;
    b->listen_fd[0] = b->listen_fd[1] = -1;
    if (b->legacy && (b->legacy_port < 0 || b->legacy_port > 65535)) {
        free(b);
        return mdg_fail(MDG_EINVAL, "legacy port out of range");
    }
    if (b->port < 0 || b->port > 65535) {
        int bad = b->port;
        free(b);
        return mdg_fail(MDG_EINVAL, "port %d out of range", bad);
    }
    pthread_mutex_init(&b->qlock, NULL);
    if (mdg_keys_from_raw(&b->keys, mdg_keys_public(keys), mdg_keys_secret(keys)) != 0 ||
        !(b->allow = mdg_map_new()) || !(b->peers = mdg_map_new()) || !(b->lpeers = mdg_map_new()) ||
        !(b->sessions = mdg_map_new()) || !(b->nodes = mdg_map_new()) ||
        !(b->by_fd = mdg_map_new()) || !(b->fwds = mdg_map_new()) || !(b->loop = mdg_loop_new()) ||
        !(b->owed_ack = mdg_map_new()) || !(b->backlog = mdg_map_new()) || !(b->holding = mdg_map_new()) ||
        !(b->shares = mdg_map_new()) || !(b->ready = mdg_map_new()) || !(b->ctx = zmq_ctx_new())) {
        mdg_broker_destroy(&b);
        return mdg_fail(MDG_ENOMEM, "cannot allocate the broker");
    }
    *out = b;
    return 0;
}

/* Configuration is only taken before the broker binds. */
static int before_start(const mdg_broker *b, const char *what)
{
    if (!b)
        return mdg_fail(MDG_EINVAL, "no broker");
    if (b->router)
        return mdg_fail(MDG_ESTATE, "%s before the broker starts", what);
    return 0;
}

int mdg_broker_set_commands(mdg_broker *b, const mdg_cmd *table, void *arg)
{
    int rc = before_start(b, "set commands");
    if (rc)
        return rc;
    b->cmds = table;
    b->cmd_arg = arg;
    return 0;
}

int mdg_broker_set_hooks(mdg_broker *b, const mdg_broker_hooks *hooks, void *arg)
{
    int rc = before_start(b, "set hooks");
    if (rc)
        return rc;
    if (!hooks)
        return mdg_fail(MDG_EINVAL, "no hooks");
    b->hooks = *hooks;
    b->hook_arg = arg;
    return 0;
}

int mdg_broker_set_auth(mdg_broker *b, mdg_auth_fn fn, void *arg)
{
    int rc = before_start(b, "set authentication");
    if (rc)
        return rc;
    b->auth = fn;
    b->auth_arg = arg;
    return 0;
}

int mdg_broker_allow(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], int role)
{
    if (!b || !pk || (role != MDG_ROLE_USER && role != MDG_ROLE_NODE))
        return mdg_fail(MDG_EINVAL, "mdg_broker_allow needs a key and a user or node role");
    return mdg_map_put(b->allow, pk, MDG_KEY_BYTES, (void *)(intptr_t)role);
}

int mdg_broker_allow_any(mdg_broker *b)
{
    if (!b)
        return MDG_EINVAL;
    mdg_log(MDG_LOG_WARN, "broker admits ANY key as a user (test mode)");
    b->allow_any = true;
    return 0;
}

int mdg_broker_legacy_port(const mdg_broker *b)
{
    return b ? b->legacy_bound_port : 0;
}

int mdg_broker_port(const mdg_broker *b)
{
    return b ? b->bound_port : 0;
}

/* ------------------------------------------------------------------ ZAP */

static int role_of(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES])
{
    if (b->auth)
        return b->auth(pk, b->auth_arg);
    int role = (int)(intptr_t)mdg_map_get(b->allow, pk, MDG_KEY_BYTES);
    if (role == MDG_ROLE_NONE && b->allow_any)
        role = MDG_ROLE_USER;
    return role;
}

/* RFC 27 (ZAP): a CURVE request has 7 frames (version, request id, domain,
 * address, routing id, mechanism, client key). We answer 200 with a
 * User-Id that carries the role and the key, or 400. libzmq attaches that
 * User-Id to every message of the connection, so the broker knows who sent
 * each message without trusting anything the message says. */
#define ZAP_FRAMES 7

static int on_monitor(mdg_loop *loop, void *arg, short revents);

static void zap_answer(mdg_broker *b, zmq_msg_t *req_id, const char *status, const char *text,
                       const char *user_id)
{
    zmq_send(b->zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_msg_send(req_id, b->zap, ZMQ_SNDMORE);
    zmq_send(b->zap, status, strlen(status), ZMQ_SNDMORE);
    zmq_send(b->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(b->zap, user_id, strlen(user_id), ZMQ_SNDMORE);
    zmq_send(b->zap, "", 0, 0);
}

static void zap_request(mdg_broker *b)
{
    zmq_msg_t part[ZAP_FRAMES];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t tmp, *m = n < ZAP_FRAMES ? &part[n] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, b->zap, 0) < 0) {
            zmq_msg_close(m);
            break;
        }
        more = zmq_msg_more(m);
        if (m == &tmp)
            zmq_msg_close(m);
        n++;
    }
    if (n != ZAP_FRAMES) { /* a REP socket must answer, but this is libzmq's own request */
        mdg_log(MDG_LOG_ERROR, "malformed ZAP request (%d frames)", n);
        for (int i = 0; i < n && i < ZAP_FRAMES; i++)
            zmq_msg_close(&part[i]);
        return;
    }
    char addr[64];
    snprintf(addr, sizeof addr, "%.*s", (int)zmq_msg_size(&part[3]), (char *)zmq_msg_data(&part[3]));
    const char *why = NULL;
    char user_id[USER_ID_LEN + 1] = "", b64[MDG_KEY_B64_LEN + 1] = "?";
    bool full = false;
    if (zmq_msg_size(&part[5]) != 5 || memcmp(zmq_msg_data(&part[5]), "CURVE", 5) != 0 ||
        zmq_msg_size(&part[6]) != MDG_KEY_BYTES) {
        why = "not a CURVE client";
    } else {
        const uint8_t *pk = zmq_msg_data(&part[6]);
        mdg_pk_to_b64(pk, b64);
        int role = role_of(b, pk);
        if (role != MDG_ROLE_USER && role != MDG_ROLE_NODE) {
            why = "key not known (or revoked)";
        } else {
            on_monitor(b->loop, b, 0); /* count this connection and the latest drops */
            full = b->live_conns > b->max_conns;
            if (!full)
                snprintf(user_id, sizeof user_id, "%c%s", role == MDG_ROLE_NODE ? 'N' : 'U', b64);
        }
    }
    if (full) {
        /* 500, not RFC 27's 300 ("temporary"): libzmq's CURVE server drops
         * a 300 silently, which a client cannot tell from a wrong server
         * key; a 500 reaches it as ZMQ_EVENT_HANDSHAKE_FAILED_AUTH 500 */
        unsigned held;
        if (mdg_ratelog_due(&b->full_log, LIMIT_LOG_MS, &held))
            mdg_log(MDG_LOG_WARN, "refused connection from %s (key %s): broker at its connection limit "
                                  "(%d; RLIMIT_NOFILE %ld); %u more refused since the last such line",
                    addr, b64, b->max_conns, b->fd_limit, held);
        zap_answer(b, &part[1], "500", "broker at its connection limit", "");
    } else if (why) {
        mdg_log(MDG_LOG_WARN, "refused connection from %s (key %s): %s", addr, b64, why);
        zap_answer(b, &part[1], "400", why, "");
    } else {
        mdg_log(MDG_LOG_DEBUG, "admitted %s as %s", addr, user_id);
        zap_answer(b, &part[1], "200", "OK", user_id);
    }
    for (int i = 0; i < ZAP_FRAMES; i++)
        zmq_msg_close(&part[i]);
}

static int on_zap(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    int events = 0;
    size_t len = sizeof events;
    while (zmq_getsockopt(b->zap, ZMQ_EVENTS, &events, &len) == 0 && (events & ZMQ_POLLIN))
        zap_request(b);
    return 0;
}

/* ---------------------------------------------------------------- sending */

static void close_session(mdg_broker *b, peer *p, const char *why);

static bool on_loop(const mdg_broker *b)
{
    return __atomic_load_n(&b->loop_running, __ATOMIC_ACQUIRE) &&
           pthread_equal(pthread_self(), b->loop_thread);
}

static void detach(mdg_broker *b, peer *p, const char *why);

static int legacy_send(mdg_broker *b, peer *p, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk);

/* Send on the peer's own socket, in its own protocol; mdg_wire_send's
 * contract (params and bulk taken, but on MDG_EAGAIN). */
static int peer_send(mdg_broker *b, peer *p, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    if (p->legacy)
        return legacy_send(b, p, h, params, bulk);
    return mdg_wire_send(b->router, p->rid, p->rid_len, h, params, bulk);
}

/* Hand one kept message to libzmq (a copy: the original stays until it is
 * acknowledged). 0, MDG_EAGAIN when the peer's pipe is full, or an error. */
static int push(mdg_broker *b, peer *p, kept *k)
{
    zmq_msg_t pm, bm;
    zmq_msg_init(&pm);
    zmq_msg_copy(&pm, &k->params);
    if (k->has_bulk) {
        zmq_msg_init(&bm);
        zmq_msg_copy(&bm, &k->bulk);
    }
    k->h.ack = p->rx_seq;
    int rc = peer_send(b, p, &k->h, &pm, k->has_bulk ? &bm : NULL);
    if (rc == MDG_EAGAIN) {
        zmq_msg_close(&pm);
        if (k->has_bulk)
            zmq_msg_close(&bm);
    } else if (rc == 0) {
        p->ack_sent = p->rx_seq;
    }
    return rc;
}

static void trim_kept(mdg_broker *b, peer *p, uint64_t ack);

/* Send what a peer has not been sent yet, in order, while it is attached.
 * A full pipe (a slow reader) leaves the rest for the backlog timer. */
static void flush_peer(mdg_broker *b, peer *p)
{
    while (p->attached && p->unsent) {
        int rc = push(b, p, p->unsent);
        if (rc == MDG_EAGAIN) {
            mdg_map_put(b->backlog, p->session_id, SESSION_ID_BYTES, p);
            return;
        }
        if (rc != 0) { /* unroutable: the link is gone (the monitor may not know yet) */
            detach(b, p, "unroutable");
            return;
        }
        p->unsent = p->unsent->next;
        if (p->legacy) /* 1.x has no acknowledgements: libzmq has it, it is gone */
            trim_kept(b, p, p->tx_seq);
    }
}

/* The final answer to a call (a reply without MORE, or an error to a
 * corr) is never refused for lack of room: a call the broker took must end
 * in a reply or an error. Their number is bounded by the calls a session
 * may have open (node_window per node; a sender whose own queue is full is
 * paused before its next command is taken, see process()). */
static bool final_answer(const mdg_header *h)
{
    return (h->kind == MDG_K_REPLY && !(h->flags & MDG_F_MORE)) || (h->kind == MDG_K_ERROR && h->corr);
}

/* queue_limit * quarters / 4: the marks above queue_limit where a caller
 * that does not read has its streams paused (6/4), resumed (5/4), ended
 * (8/4), and its own commands held (8/4). */
static size_t over_limit(const mdg_broker *b, int quarters)
{
    return (size_t)b->queue_limit * (size_t)quarters / 4;
}

static int send_frames_max(mdg_broker *b, peer *p, mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk,
                           size_t limit, const uint8_t *origin);

/* Queue a message to a peer (params and bulk moved). Numbered kinds are
 * kept until acknowledged, within the peer's queue limit (final answers
 * past it); past it the message is refused, loudly. Unnumbered ones go now
 * or not at all. */
static int send_frames(mdg_broker *b, peer *p, mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    return send_frames_max(b, p, h, params, bulk, final_answer(h) ? SIZE_MAX : (size_t)b->queue_limit, NULL);
}

/* limit: how many unacknowledged messages the peer may have with this one;
 * origin: the session that a fire-and-forget command to a node counts for
 * (share_release when the node acknowledges it), or NULL. */
static int send_frames_max(mdg_broker *b, peer *p, mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk,
                           size_t limit, const uint8_t *origin)
{
    if (!mdg_kind_sequenced(h->kind)) {
        h->seq = 0;
        h->ack = p->rx_seq;
        int rc = p->attached ? peer_send(b, p, h, params, bulk) : mdg_fail(MDG_ECLOSED, "peer is away");
        if (rc == MDG_EAGAIN || (rc && !p->attached)) {
            zmq_msg_close(params);
            if (bulk)
                zmq_msg_close(bulk);
        }
        return rc;
    }
    if (p->out_len >= limit) {
        char who[MDG_KEY_B64_LEN + 1];
        pk_short(p->pk, who);
        zmq_msg_close(params);
        if (bulk)
            zmq_msg_close(bulk);
        mdg_log(MDG_LOG_ERROR, "%s '%s' to %s refused: %zu messages already wait for it (queue_limit)",
                mdg_kind_name(h->kind), h->command, who, p->out_len);
        return mdg_fail(MDG_EAGAIN, "the receiver's queue is full (%zu messages unacknowledged)", p->out_len);
    }
    kept *k = calloc(1, sizeof *k);
    if (!k) {
        zmq_msg_close(params);
        if (bulk)
            zmq_msg_close(bulk);
        return mdg_fail(MDG_ENOMEM, "out of memory queueing a message");
    }
    h->seq = ++p->tx_seq;
    k->h = *h;
    if (origin) {
        k->counted = true;
        memcpy(k->origin, origin, SESSION_ID_BYTES);
    }
    zmq_msg_init(&k->params);
    zmq_msg_move(&k->params, params);
    zmq_msg_close(params);
    if (bulk) {
        k->has_bulk = true;
        zmq_msg_init(&k->bulk);
        zmq_msg_move(&k->bulk, bulk);
        zmq_msg_close(bulk);
    }
    if (p->out_tail)
        p->out_tail->next = k;
    else
        p->out_head = k;
    p->out_tail = k;
    p->out_len++;
    if (!p->unsent)
        p->unsent = k;
    flush_peer(b, p);
    return 0;
}

/* ------------------------------------------------------- shares of nodes */

static void share_key(uint8_t key[SESSION_ID_BYTES + MDG_KEY_BYTES], const uint8_t *sid, const uint8_t *node_pk)
{
    memcpy(key, sid, SESSION_ID_BYTES);
    memcpy(key + SESSION_ID_BYTES, node_pk, MDG_KEY_BYTES);
}

/* One more message of a session at a node: 0, MDG_EAGAIN when its share
 * is full (node_window), or MDG_ENOMEM. */
static int share_take(mdg_broker *b, const uint8_t *sid, const uint8_t *node_pk)
{
    uint8_t key[SESSION_ID_BYTES + MDG_KEY_BYTES];
    share_key(key, sid, node_pk);
    share *s = mdg_map_get(b->shares, key, sizeof key);
    if (s && s->used >= b->node_window)
        return MDG_EAGAIN;
    if (!s) {
        if (!(s = calloc(1, sizeof *s)))
            return MDG_ENOMEM;
        memcpy(s->key, key, sizeof key);
        if (mdg_map_put(b->shares, key, sizeof key, s) != 0) {
            free(s);
            return MDG_ENOMEM;
        }
    }
    s->used++;
    return 0;
}

/* One message of a session at a node is done: room in its share, so a
 * session held for want of it goes on (after the current batch). */
static void share_release(mdg_broker *b, const uint8_t *sid, const uint8_t *node_pk)
{
    uint8_t key[SESSION_ID_BYTES + MDG_KEY_BYTES];
    share_key(key, sid, node_pk);
    share *s = mdg_map_get(b->shares, key, sizeof key);
    if (s && --s->used <= 0)
        free(mdg_map_take(b->shares, key, sizeof key));
    peer *held = mdg_map_get(b->holding, sid, SESSION_ID_BYTES);
    if (held)
        mdg_map_put(b->ready, sid, SESSION_ID_BYTES, held);
}

static void free_one_kept(mdg_broker *b, peer *p, kept *k)
{
    if (k->counted)
        share_release(b, k->origin, p->pk);
    zmq_msg_close(&k->params);
    if (k->has_bulk)
        zmq_msg_close(&k->bulk);
    free(k);
}

static void send_error(mdg_broker *b, const uint8_t *rid, size_t rid_len, peer *p, uint64_t corr,
                       const char *command, const char *text);

/* A node's session ends with fire-and-forget commands it has not
 * acknowledged: each sender still connected is told (a notice), since the
 * node may not have run them. */
static void free_kept(mdg_broker *b, peer *p)
{
    while (p->out_head) {
        kept *k = p->out_head;
        p->out_head = k->next;
        peer *sender = k->counted ? mdg_map_get(b->sessions, k->origin, SESSION_ID_BYTES) : NULL;
        if (sender) {
            char who[MDG_KEY_B64_LEN + 1], why[400];
            mdg_pk_to_b64(p->pk, who);
            snprintf(why, sizeof why, "'%s' may not have reached node %s: its session ended before it acknowledged it",
                     k->h.command, who);
            send_error(b, sender->rid, sender->rid_len, sender, 0, k->h.command, why);
        }
        free_one_kept(b, p, k);
    }
    p->out_tail = p->unsent = NULL;
    p->out_len = 0;
}

static void resume_paused_fwds(mdg_broker *b, peer *p);

/* The peer has everything up to ack: forget it (never what was not sent). */
static void trim_kept(mdg_broker *b, peer *p, uint64_t ack)
{
    size_t before = p->out_len;
    while (p->out_head && p->out_head != p->unsent && p->out_head->h.seq <= ack) {
        kept *k = p->out_head;
        p->out_head = k->next;
        free_one_kept(b, p, k);
        p->out_len--;
    }
    if (!p->out_head)
        p->out_tail = NULL;
    if (ack > p->acked)
        p->acked = ack;
    if (p->out_len == before)
        return;
    /* room again: a peer held because its own queue was full goes on, and
     * nodes paused for its sake may send again once it has caught up */
    if (p->held_head && p->out_len < over_limit(b, 8))
        mdg_map_put(b->ready, p->session_id, SESSION_ID_BYTES, p);
    if (p->paused_fwds && p->out_len <= over_limit(b, 5))
        resume_paused_fwds(b, p);
}

/* Encode and send; params taken, bulk copied. With no peer (a sender that
 * has no session, or one whose numbering is broken) the message goes
 * unsequenced to the routing id: then it is only ever a notice (corr 0),
 * the one unnumbered error clients accept (docs/protocol.md 6.1). */
static int send_to(mdg_broker *b, const uint8_t *rid, size_t rid_len, peer *p, int kind,
                   uint64_t corr, uint32_t flags, const char *command, mdg_params *params,
                   const void *bulk, size_t bulk_len)
{
    mdg_header h = {.kind = (uint8_t)kind, .corr = p ? corr : 0, .flags = flags};
    zmq_msg_t pm, bm;
    int rc = mdg_header_set_command(&h, command);
    if (rc == 0)
        rc = mdg_wire_encode_params(params, &pm);
    mdg_params_destroy(&params);
    if (rc)
        return rc;
    if (bulk_len) {
        zmq_msg_init_size(&bm, bulk_len);
        memcpy(zmq_msg_data(&bm), bulk, bulk_len);
    }
    if (p)
        return send_frames(b, p, &h, &pm, bulk_len ? &bm : NULL);
    h.kind = (uint8_t)kind;
    rc = mdg_wire_send(b->router, rid, rid_len, &h, &pm, bulk_len ? &bm : NULL);
    if (rc == MDG_EAGAIN) {
        zmq_msg_close(&pm);
        if (bulk_len)
            zmq_msg_close(&bm);
    }
    return rc;
}

/* An error for the sender of a message: a reply when it waits for one
 * (corr), else a notice its error hook sees. */
static void send_error(mdg_broker *b, const uint8_t *rid, size_t rid_len, peer *p, uint64_t corr,
                       const char *command, const char *text)
{
    mdg_params *e = mdg_params_new();
    if (!e)
        return;
    mdg_params_set_str(e, "error", text);
    mdg_params_set_str(e, "command", command ? command : "");
    send_to(b, rid, rid_len, p, MDG_K_ERROR, corr, 0, "", e, NULL, 0);
}

static void refuse(mdg_broker *b, peer *p, const mdg_header *h, const char *why)
{
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    mdg_log(MDG_LOG_WARN, "'%s' from %s %s refused: %s", h->command,
            p->role == MDG_ROLE_NODE ? "node" : "user", who, why);
    send_error(b, p->rid, p->rid_len, p, h->corr, h->command, why);
}

/* Other threads queue; the loop thread sends (it owns the socket). */
static int queue_send(mdg_broker *b, bool to_node, const uint8_t *key, size_t key_len,
                      mdg_header *h, mdg_params *params, const void *bulk, size_t bulk_len)
{
    queued *q = calloc(1, sizeof *q);
    int rc = q ? mdg_wire_encode_params(params, &q->params) : MDG_ENOMEM;
    mdg_params_destroy(&params);
    if (rc) {
        free(q);
        return rc;
    }
    q->to_node = to_node;
    memcpy(q->key, key, key_len);
    q->key_len = key_len;
    q->h = *h;
    if (bulk_len) {
        q->has_bulk = true;
        zmq_msg_init_size(&q->bulk, bulk_len);
        memcpy(zmq_msg_data(&q->bulk), bulk, bulk_len);
    }
    pthread_mutex_lock(&b->qlock);
    bool was_empty = !b->q_head;
    if (b->q_tail)
        b->q_tail->next = q;
    else
        b->q_head = q;
    b->q_tail = q;
    pthread_mutex_unlock(&b->qlock);
    if (was_empty)
        mdg_loop_wake(b->loop);
    return 0;
}

static void free_queued(queued *q)
{
    zmq_msg_close(&q->params);
    if (q->has_bulk)
        zmq_msg_close(&q->bulk);
    free(q);
}

static int on_wake(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    pthread_mutex_lock(&b->qlock);
    queued *q = b->q_head;
    b->q_head = b->q_tail = NULL;
    pthread_mutex_unlock(&b->qlock);
    while (q) {
        queued *next = q->next;
        if (q->kick) {
            char reason[256];
            snprintf(reason, sizeof reason, "%.*s", (int)zmq_msg_size(&q->params),
                     (const char *)zmq_msg_data(&q->params));
            mdg_broker_disconnect_key(b, q->key, reason);
            free_queued(q);
            q = next;
            continue;
        }
        peer *p = mdg_map_get(q->to_node ? b->nodes : b->sessions, q->key, q->key_len);
        if (p) {
            send_frames(b, p, &q->h, &q->params, q->has_bulk ? &q->bulk : NULL);
            q->has_bulk = false;
            free(q);
        } else {
            mdg_log(MDG_LOG_WARN, "%s '%s' not delivered: the %s has gone", mdg_kind_name(q->h.kind),
                    q->h.command, q->to_node ? "node" : "session");
            free_queued(q);
        }
        q = next;
    }
    return 0;
}

/* Send to a session or a node from any thread. */
static int send_cmd_to(mdg_broker *b, bool to_node, const uint8_t *key, size_t key_len,
                       const char *command, mdg_params *params, const void *bulk, size_t bulk_len)
{
    mdg_header h = {.kind = MDG_K_CMD};
    int rc = MDG_EINVAL;
    if (!b || !key || key_len != (to_node ? MDG_KEY_BYTES : SESSION_ID_BYTES) || !command ||
        !*command || (!bulk && bulk_len) || (rc = mdg_header_set_command(&h, command)) != 0) {
        mdg_params_destroy(&params);
        return rc == MDG_EINVAL ? mdg_fail(MDG_EINVAL, "bad target or command") : rc;
    }
    if (!on_loop(b))
        return queue_send(b, to_node, key, key_len, &h, params, bulk, bulk_len);
    peer *p = mdg_map_get(to_node ? b->nodes : b->sessions, key, key_len);
    if (!p) {
        mdg_params_destroy(&params);
        return mdg_fail(MDG_ENOTFOUND, "no such %s connected", to_node ? "node" : "session");
    }
    return send_to(b, NULL, 0, p, MDG_K_CMD, 0, 0, command, params, bulk, bulk_len);
}

int mdg_broker_send_session(mdg_broker *b, const uint8_t *session_id, size_t id_len,
                            const char *command, mdg_params *params, const void *bulk,
                            size_t bulk_len)
{
    return send_cmd_to(b, false, session_id, id_len, command, params, bulk, bulk_len);
}

int mdg_broker_send_node(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], const char *command,
                         mdg_params *params, const void *bulk, size_t bulk_len)
{
    return send_cmd_to(b, true, pk, MDG_KEY_BYTES, command, params, bulk, bulk_len);
}

size_t mdg_broker_session_count(const mdg_broker *b)
{
    return b ? mdg_map_size(b->sessions) - mdg_map_size(b->nodes) : 0;
}

size_t mdg_broker_forward_count(const mdg_broker *b)
{
    return b ? mdg_map_size(b->fwds) - b->tombstones : 0; /* ended calls are not open */
}

size_t mdg_broker_node_count(const mdg_broker *b)
{
    return b ? mdg_map_size(b->nodes) : 0;
}

/* Replies of broker handlers go to the session that sent the command, and
 * only while that session lives. */
static int broker_send_reply(mdg_msg *m, int kind, uint32_t flags, mdg_params *results,
                             const void *bulk, size_t bulk_len)
{
    mdg_broker *b = m->owner;
    if (kind == MDG_K_ERROR) {
        char who[MDG_KEY_B64_LEN + 1];
        const char *text = "";
        pk_short(m->pk, who);
        mdg_params_get_str(results, "error", &text);
        mdg_log(MDG_LOG_INFO, "'%s' from %s failed: %s", m->h.command, who, text);
    }
    mdg_header h = {.kind = (uint8_t)kind, .corr = m->h.corr, .flags = flags};
    if (!on_loop(b))
        return queue_send(b, false, m->session_id, SESSION_ID_BYTES, &h, results, bulk, bulk_len);
    peer *p = mdg_map_get(b->sessions, m->session_id, SESSION_ID_BYTES);
    if (!p) {
        mdg_params_destroy(&results);
        return mdg_fail(MDG_ECLOSED, "the session that sent '%s' has closed", m->h.command);
    }
    return send_to(b, NULL, 0, p, kind, m->h.corr, flags, "", results, bulk, bulk_len);
}

/* --------------------------------------------------------------- sessions */

/* Collect forwarded calls matching a predicate (the map cannot change
 * while it is walked). */
typedef struct fwd_scan {
    const uint8_t *key;
    bool by_node; /* match node_pk, else session_id */
    mdg_ptrs found;
} fwd_scan;

static void scan_one(void *value, void *arg)
{
    fwd *f = value;
    fwd_scan *s = arg;
    bool match = s->by_node ? memcmp(f->node_pk, s->key, MDG_KEY_BYTES) == 0
                            : memcmp(f->session_id, s->key, SESSION_ID_BYTES) == 0;
    if (match)
        mdg_ptrs_push(&s->found, f);
}

static int send_frames_max(mdg_broker *b, peer *p, mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk,
                           size_t limit, const uint8_t *origin);

/* A forwarded call is over: forgotten, and its place in its caller's share
 * of the node freed (an ended one freed it when it ended). */
static void fwd_free(mdg_broker *b, fwd *f)
{
    mdg_map_take_u64(b->fwds, f->id);
    if (f->ended) {
        b->tombstones--;
    } else {
        peer *caller = f->paused ? mdg_map_get(b->sessions, f->session_id, SESSION_ID_BYTES) : NULL;
        if (caller)
            caller->paused_fwds--;
        share_release(b, f->session_id, f->node_pk);
    }
    free(f);
}

/* Tell a node about one of its calls (FLOW_COMMAND, numbered like any
 * command): "pause" its replies (the caller is not reading), "resume"
 * them, or "end" the call (the caller has gone or stopped reading for too
 * long: the node's further replies to it fail locally). Never refused for
 * lack of room: at most a few per call. 1.x nodes know nothing of it. */
static void send_flow(mdg_broker *b, peer *node, uint64_t id, const char *state, const char *reason)
{
    mdg_params *fp = node->legacy ? NULL : mdg_params_new();
    mdg_header h = {.kind = MDG_K_CMD};
    zmq_msg_t pm;
    if (fp && mdg_params_set_int(fp, "call", (int64_t)id) == 0 && mdg_params_set_str(fp, "state", state) == 0 &&
        (!reason || mdg_params_set_str(fp, "reason", reason) == 0) && mdg_header_set_command(&h, FLOW_COMMAND) == 0 &&
        mdg_wire_encode_params(fp, &pm) == 0)
        send_frames_max(b, node, &h, &pm, NULL, SIZE_MAX, NULL);
    mdg_params_destroy(&fp);
}

/* The broker ends a call whose caller has gone or does not read: the
 * caller (if any) gets a final error, the node is told to stop, and the
 * record stays a while as a tombstone so that the replies already on their
 * way are dropped quietly instead of each drawing a refusal. */
static void end_fwd(mdg_broker *b, fwd *f, peer *caller, const char *why)
{
    if (caller)
        send_error(b, caller->rid, caller->rid_len, caller, f->user_corr, f->command, why);
    peer *node = mdg_map_get(b->nodes, f->node_pk, MDG_KEY_BYTES);
    if (node)
        send_flow(b, node, f->id, "end", why);
    if (f->paused && caller)
        caller->paused_fwds--;
    f->paused = false;
    f->ended = true;
    f->ended_at = mdg_now_ms();
    b->tombstones++;
    share_release(b, f->session_id, f->node_pk);
}

/* A session that was not reading has caught up: the nodes paused for it
 * may send its replies again. */
static void resume_paused_fwds(mdg_broker *b, peer *p)
{
    fwd_scan s = {.key = p->session_id};
    mdg_map_each(b->fwds, scan_one, &s);
    for (size_t i = 0; i < s.found.n; i++) {
        fwd *f = s.found.v[i];
        peer *node = f->paused ? mdg_map_get(b->nodes, f->node_pk, MDG_KEY_BYTES) : NULL;
        if (node)
            send_flow(b, node, f->id, "resume", NULL);
        f->paused = false;
    }
    p->paused_fwds = 0;
    mdg_ptrs_free(&s.found);
}

/* A peer has gone. A node: calls waiting on it are failed to their
 * callers, so no one waits forever. A user: its calls to nodes are ended
 * (the nodes are told to stop their replies). */
static void drop_fwds(mdg_broker *b, peer *p)
{
    fwd_scan s = {.key = p->role == MDG_ROLE_NODE ? p->pk : p->session_id,
                  .by_node = p->role == MDG_ROLE_NODE};
    mdg_map_each(b->fwds, scan_one, &s);
    for (size_t i = 0; i < s.found.n; i++) {
        fwd *f = s.found.v[i];
        if (!s.by_node) {
            if (!f->ended)
                end_fwd(b, f, NULL, "the caller's session has closed");
            continue;
        }
        peer *caller = f->ended ? NULL : mdg_map_get(b->sessions, f->session_id, SESSION_ID_BYTES);
        if (caller) {
            char who[MDG_KEY_B64_LEN + 1], why[160];
            mdg_pk_to_b64(f->node_pk, who);
            snprintf(why, sizeof why, "node %s went away before answering", who);
            send_error(b, caller->rid, caller->rid_len, caller, f->user_corr, f->command, why);
        }
        fwd_free(b, f);
    }
    mdg_ptrs_free(&s.found);
}

/* Routing ids are per socket: a 1.x peer's are looked up apart. */
static mdg_map *rids_of(mdg_broker *b, const peer *p)
{
    return p->legacy ? b->lpeers : b->peers;
}

static void legacy_link_free(legacy_link **pl);

static void close_session(mdg_broker *b, peer *p, const char *why)
{
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    mdg_log(MDG_LOG_INFO, "%s %s: session closed: %s", p->role == MDG_ROLE_NODE ? "node" : "user", who, why);
    mdg_map *rids = rids_of(b, p);
    if (mdg_map_get(rids, p->rid, p->rid_len) == p)
        mdg_map_take(rids, p->rid, p->rid_len);
    if (p->stale_rid_len && mdg_map_get(rids, p->stale_rid, p->stale_rid_len) == p)
        mdg_map_take(rids, p->stale_rid, p->stale_rid_len);
    if (p->attached && mdg_map_get(b->by_fd, &p->fd, sizeof p->fd) == p)
        mdg_map_take(b->by_fd, &p->fd, sizeof p->fd);
    mdg_map_take(b->sessions, p->session_id, SESSION_ID_BYTES);
    mdg_map_take(b->owed_ack, p->session_id, SESSION_ID_BYTES);
    mdg_map_take(b->backlog, p->session_id, SESSION_ID_BYTES);
    if (p->role == MDG_ROLE_NODE) {
        if (mdg_map_get(b->nodes, p->pk, MDG_KEY_BYTES) == p)
            mdg_map_take(b->nodes, p->pk, MDG_KEY_BYTES);
        if (b->hooks.node_left)
            b->hooks.node_left(b, p->pk, p->data, b->hook_arg);
    } else if (b->hooks.session_closed) {
        b->hooks.session_closed(b, p->pk, p->data, b->hook_arg);
    }
    mdg_map_take(b->holding, p->session_id, SESSION_ID_BYTES);
    mdg_map_take(b->ready, p->session_id, SESSION_ID_BYTES);
    while (p->held_head) {
        held *hm = p->held_head;
        p->held_head = hm->next;
        mdg_frames_close(&hm->f);
        free(hm);
    }
    drop_fwds(b, p);
    if (p->out_len)
        mdg_log(MDG_LOG_WARN, "%s %s: %zu queued message(s) not delivered: its session closed (%s)",
                p->role == MDG_ROLE_NODE ? "node" : "user", who, p->out_len, why);
    free_kept(b, p);
    legacy_link_free(&p->legacy);
    free(p);
}

/* The link dropped: keep the session (and what it has not acknowledged)
 * for its grace period, so the client can resume it on a new link. */
static void detach(mdg_broker *b, peer *p, const char *why)
{
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    mdg_log(MDG_LOG_INFO, "%s %s: link lost (%s); session kept %d ms for a resume",
            p->role == MDG_ROLE_NODE ? "node" : "user", who, why,
            p->role == MDG_ROLE_NODE ? b->node_grace_ms : b->grace_ms);
    /* keep reading what the old link delivered (its rid stays mapped) */
    mdg_map *rids = rids_of(b, p);
    if (p->stale_rid_len && mdg_map_get(rids, p->stale_rid, p->stale_rid_len) == p &&
        (p->stale_rid_len != p->rid_len || memcmp(p->stale_rid, p->rid, p->rid_len) != 0))
        mdg_map_take(rids, p->stale_rid, p->stale_rid_len);
    memcpy(p->stale_rid, p->rid, p->rid_len);
    p->stale_rid_len = p->rid_len;
    if (mdg_map_get(b->by_fd, &p->fd, sizeof p->fd) == p)
        mdg_map_take(b->by_fd, &p->fd, sizeof p->fd);
    mdg_map_take(b->owed_ack, p->session_id, SESSION_ID_BYTES);
    mdg_map_take(b->backlog, p->session_id, SESSION_ID_BYTES);
    p->attached = false;
    p->silent = false;
    p->detached_at = mdg_now_ms();
    p->unsent = p->out_head; /* whatever was not acknowledged goes again */
}

/* Attach a session to a (new) link. */
static int attach(mdg_broker *b, peer *p, const uint8_t *rid, size_t rid_len, int fd)
{
    memcpy(p->rid, rid, rid_len);
    p->rid_len = (uint8_t)rid_len;
    p->fd = fd;
    if (mdg_map_put(rids_of(b, p), rid, rid_len, p) || mdg_map_put(b->by_fd, &p->fd, sizeof p->fd, p)) {
        mdg_map_take(rids_of(b, p), rid, rid_len);
        return MDG_ENOMEM;
    }
    p->attached = true;
    p->silent = false;
    p->last_rx = mdg_now_ms();
    return 0;
}

static void collect_node(void *value, void *arg)
{
    peer *p = value;
    cbor_item_t *list = arg;
    cbor_item_t *pk = cbor_build_bytestring(p->pk, MDG_KEY_BYTES);
    if (pk) {
        cbor_array_push(list, pk);
        cbor_decref(&pk);
    }
}

/* The default resource offer: the keys of the connected nodes. */
static mdg_params *default_offer(mdg_broker *b)
{
    mdg_params *o = mdg_params_new();
    cbor_item_t *list = cbor_new_definite_array(mdg_map_size(b->nodes));
    if (!o || !list) {
        mdg_params_destroy(&o);
        if (list)
            cbor_decref(&list);
        return NULL;
    }
    mdg_map_each(b->nodes, collect_node, list);
    mdg_params_set_item(o, "nodes", list);
    return o;
}

static void welcome(mdg_broker *b, peer *p, bool resumed)
{
    mdg_params *w = mdg_params_new();
    if (w) {
        mdg_params_set_bytes(w, "session", p->session_id, sizeof p->session_id);
        mdg_params_set_str(w, "role", p->role == MDG_ROLE_NODE ? "node" : "user");
        mdg_params_set_bool(w, "resumed", resumed);
        mdg_params_set_int(w, "ack", (int64_t)p->rx_seq);
    }
    send_to(b, NULL, 0, p, MDG_K_WELCOME, 0, 0, "", w, NULL, 0);
}

/* legacy: the 1.x state of a peer on the legacy listener (taken), or NULL. */
static void open_session(mdg_broker *b, const uint8_t *rid, size_t rid_len, const char *user_id, int fd,
                         int silence_ms, legacy_link *legacy)
{
    peer *p = calloc(1, sizeof *p);
    if (!p || mdg_pk_from_b64(p->pk, user_id + 1) != 0) {
        mdg_log(MDG_LOG_ERROR, "cannot open a session: out of memory");
        legacy_link_free(&legacy);
        free(p);
        return;
    }
    p->legacy = legacy;
    snprintf(p->user_id, sizeof p->user_id, "%s", user_id);
    p->role = user_id[0] == 'N' ? MDG_ROLE_NODE : MDG_ROLE_USER;
    p->silence_ms = silence_ms;
    p->last_rx = mdg_now_ms();
    randombytes_buf(p->session_id, sizeof p->session_id);
    if (p->role == MDG_ROLE_NODE) {
        /* one live connection per node: a restarted node replaces it, and
         * calls waiting on the old one fail to their callers */
        peer *old = mdg_map_get(b->nodes, p->pk, MDG_KEY_BYTES);
        if (old)
            close_session(b, old, "replaced by a new connection");
    }
    if (attach(b, p, rid, rid_len, fd) || mdg_map_put(b->sessions, p->session_id, SESSION_ID_BYTES, p) ||
        (p->role == MDG_ROLE_NODE && mdg_map_put(b->nodes, p->pk, MDG_KEY_BYTES, p))) {
        mdg_log(MDG_LOG_ERROR, "cannot open a session: out of memory");
        mdg_map_take(rids_of(b, p), rid, rid_len);
        mdg_map_take(b->by_fd, &p->fd, sizeof p->fd);
        mdg_map_take(b->sessions, p->session_id, SESSION_ID_BYTES);
        legacy_link_free(&p->legacy);
        free(p);
        return;
    }
    if (p->role == MDG_ROLE_NODE && b->hooks.node_joined)
        p->data = b->hooks.node_joined(b, p->pk, b->hook_arg);
    else if (p->role == MDG_ROLE_USER && b->hooks.session_new)
        p->data = b->hooks.session_new(b, p->pk, p->session_id, sizeof p->session_id, b->hook_arg);

    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    mdg_log(MDG_LOG_INFO, "new %s session for %s", p->role == MDG_ROLE_NODE ? "node" : "user", who);
    welcome(b, p, false);
    if (p->role != MDG_ROLE_USER)
        return;
    mdg_params *offer = b->hooks.resources ? b->hooks.resources(b, p->pk, b->hook_arg) : default_offer(b);
    if (offer)
        send_to(b, NULL, 0, p, MDG_K_CMD, 0, 0, "resource_offer", offer, NULL, 0);
}

/* A hello that names a session: resume it on this link when it belongs to
 * the same key (never another's: the id alone proves nothing), then send
 * what the client has not acknowledged. False when there is nothing to
 * resume (the client gets a new session). */
static bool resume_session(mdg_broker *b, const uint8_t *rid, size_t rid_len, const char *uid, int fd,
                           const uint8_t *sid, size_t sid_len, uint64_t ack, int silence_ms, bool legacy)
{
    peer *p = sid_len == SESSION_ID_BYTES ? mdg_map_get(b->sessions, sid, sid_len) : NULL;
    if (!p)
        return false;
    if (strcmp(p->user_id, uid) != 0) {
        mdg_log(MDG_LOG_WARN, "hello from %.12s names a session of another key: refused", uid + 1);
        return false;
    }
    if (!p->legacy != !legacy) {
        mdg_log(MDG_LOG_WARN, "hello from %.12s names a session of the other protocol: refused", uid + 1);
        return false;
    }
    if (p->attached) /* the old link has not been seen to drop yet */
        detach(b, p, "superseded by a new link");
    if (attach(b, p, rid, rid_len, fd) != 0) {
        close_session(b, p, "out of memory");
        return false;
    }
    p->silence_ms = silence_ms;
    p->unsent = NULL; /* everything kept goes again, but what the client has */
    trim_kept(b, p, ack < p->tx_seq ? ack : p->tx_seq);
    p->unsent = p->out_head;
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    mdg_log(MDG_LOG_INFO, "%s %s resumed its session; resending %zu message(s)",
            p->role == MDG_ROLE_NODE ? "node" : "user", who, p->out_len);
    welcome(b, p, true);
    flush_peer(b, p);
    if (p->role == MDG_ROLE_USER && b->hooks.session_recovered)
        b->hooks.session_recovered(b, p->pk, p->data, b->hook_arg);
    return true;
}

/* A hello: a new session, or the resume of one. */
static void on_hello(mdg_broker *b, peer *p, const uint8_t *rid, size_t rid_len, const char *uid,
                     int fd, mdg_frames *f)
{
    mdg_params *hp = NULL;
    const uint8_t *sid = NULL;
    size_t sid_len = 0;
    int64_t ack = 0, hb = 0;
    if (f->n >= 3 &&
        mdg_wire_decode_params(zmq_msg_data(&f->part[2]), zmq_msg_size(&f->part[2]), &hp) == 0) {
        mdg_params_get_bytes(hp, "session", &sid, &sid_len);
        if (mdg_params_get_int(hp, "ack", &ack) != 0 || ack < 0)
            ack = 0;
        mdg_params_get_int(hp, "heartbeat", &hb);
    }
    /* A client that keeps quiet for 3 of its heartbeats (and a second) is
     * taken as gone, as its own side takes a silent broker. */
    if (hb < 100 || hb > 600000)
        hb = 2000;
    int silence_ms = (int)(3 * hb + 1000);
    if (p && !(sid && sid_len == SESSION_ID_BYTES && memcmp(sid, p->session_id, SESSION_ID_BYTES) == 0))
        close_session(b, p, "replaced by a new hello");
    if (!sid || !resume_session(b, rid, rid_len, uid, fd, sid, sid_len, (uint64_t)ack, silence_ms, false))
        open_session(b, rid, rid_len, uid, fd, silence_ms, NULL);
    mdg_params_destroy(&hp);
}

/* Sessions of one key, collected first: closing changes the maps. */
typedef struct key_scan {
    const uint8_t *pk;
    mdg_ptrs found;
} key_scan;

static void scan_key(void *value, void *arg)
{
    peer *p = value;
    key_scan *k = arg;
    if (memcmp(p->pk, k->pk, MDG_KEY_BYTES) == 0)
        mdg_ptrs_push(&k->found, p);
}

int mdg_broker_disconnect_key(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], const char *reason)
{
    if (!b || !pk)
        return MDG_EINVAL;
    if (!reason)
        reason = "disconnected by the broker";
    if (!on_loop(b)) {
        queued *q = calloc(1, sizeof *q);
        if (!q)
            return MDG_ENOMEM;
        q->kick = true;
        memcpy(q->key, pk, MDG_KEY_BYTES);
        q->key_len = MDG_KEY_BYTES;
        zmq_msg_init_size(&q->params, strlen(reason));
        memcpy(zmq_msg_data(&q->params), reason, strlen(reason));
        pthread_mutex_lock(&b->qlock);
        if (b->q_tail)
            b->q_tail->next = q;
        else
            b->q_head = q;
        b->q_tail = q;
        pthread_mutex_unlock(&b->qlock);
        mdg_loop_wake(b->loop);
        return 0;
    }
    key_scan k = {.pk = pk};
    mdg_map_each(b->sessions, scan_key, &k);
    for (size_t i = 0; i < k.found.n; i++) {
        mdg_params *why = mdg_params_new();
        if (why)
            mdg_params_set_str(why, "reason", reason);
        send_to(b, NULL, 0, k.found.v[i], MDG_K_BYE, 0, 0, "", why, NULL, 0);
        close_session(b, k.found.v[i], reason);
    }
    int closed = (int)k.found.n;
    mdg_ptrs_free(&k.found);
    return closed;
}

static int on_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    struct broker_timer *t = arg;
    t->fn(t->b, t->arg);
    return 0;
}

int mdg_broker_add_timer(mdg_broker *b, int interval_ms, mdg_broker_timer_fn fn, void *arg)
{
    int rc = before_start(b, "add timers");
    if (rc)
        return rc;
    if (!fn || interval_ms <= 0)
        return mdg_fail(MDG_EINVAL, "a timer needs a function and an interval");
    struct broker_timer *t = malloc(sizeof *t);
    if (!t)
        return mdg_fail(MDG_ENOMEM, "no room for another timer");
    *t = (struct broker_timer){fn, arg, b, b->timers};
    b->timers = t; /* freed with the broker, even if the loop has no room */
    if (mdg_loop_timer(b->loop, interval_ms, true, on_timer, t) < 0)
        return mdg_fail(MDG_ENOMEM, "no room for another timer");
    return 0;
}

/* -------------------------------------------------------------- dispatch */

/* The provenance params (docs/protocol.md section 7). Every command a peer
 * sends, user or node, native or 1.x, to a broker handler or forwarded to a
 * node, passes here: whatever the sender wrote under these names is
 * removed, then the broker writes its own values, by the sender's role:
 *
 *   sender   user                session                 node
 *   user     its key (32 bytes)  its session id (16)     -
 *   node     -                   -                       its key (32 bytes)
 *
 * so a receiver sees each of them only when the broker put it there. (A
 * node's call to a node is refused before this; replies and the broker's
 * own commands are stamped nothing.) forward: a user's call to a node,
 * whose `node` names the target and is no forgery. */
static const char *const provenance[] = {"user", "session", "node"};

static int stamp_identity(mdg_msg *m, peer *p, bool forward)
{
    bool node = p->role == MDG_ROLE_NODE;
    for (size_t i = 0; i < sizeof provenance / sizeof provenance[0]; i++) {
        int rc = mdg_params_remove(m->params, provenance[i]);
        if (rc == MDG_ENOTFOUND || (rc == 0 && forward && strcmp(provenance[i], "node") == 0))
            continue;
        if (rc) /* still there: the message must not go on */
            return rc;
        char who[MDG_KEY_B64_LEN + 1];
        mdg_log(MDG_LOG_INFO, "'%s' from %s %s: its own '%s' param removed (only the broker stamps user, session "
                              "and node)", m->h.command, node ? "node" : "user", pk_short(p->pk, who), provenance[i]);
    }
    if (node)
        return mdg_params_set_bytes(m->params, "node", p->pk, MDG_KEY_BYTES);
    int rc = mdg_params_set_bytes(m->params, "user", p->pk, MDG_KEY_BYTES);
    return rc ? rc : mdg_params_set_bytes(m->params, "session", p->session_id, SESSION_ID_BYTES);
}

static bool in_table(const mdg_cmd *t, const char *name)
{
    for (; t && t->name; t++)
        if (strcmp(t->name, name) == 0)
            return true;
    return false;
}

/* A user's call to a node: check the node, stamp who calls, remember who
 * may answer, and pass it on (the bulk frame is moved, not copied). */
static bool peer_full(const mdg_broker *b, const peer *p)
{
    return p->out_len >= (size_t)b->queue_limit;
}


/* Returns false when the node cannot take more now: the call waits. */
static bool forward_to_node(mdg_broker *b, peer *p, mdg_msg *m)
{
    const uint8_t *pk;
    size_t len;
    char why[200], who[MDG_KEY_B64_LEN + 1];
    if (mdg_params_get_bytes(m->params, "node", &pk, &len) != 0 || len != MDG_KEY_BYTES) {
        refuse(b, p, &m->h, "param 'node' must be a node's public key (32 bytes)");
        return true;
    }
    peer *node = mdg_map_get(b->nodes, pk, MDG_KEY_BYTES);
    if (!node) {
        mdg_pk_to_b64(pk, who);
        snprintf(why, sizeof why, "node %s is not connected", who);
        refuse(b, p, &m->h, why);
        return true;
    }
    /* commands named mdg.* are the broker's own word to a node (FLOW_COMMAND):
     * a user who could send one could pause or end another user's call */
    if (strncmp(m->h.command, "mdg.", 4) == 0) {
        refuse(b, p, &m->h, "command names beginning 'mdg.' are reserved");
        return true;
    }
    /* fairness: one session has at most node_window messages at a node,
     * so a flood from one sender waits at the broker, not in front of
     * everyone else's calls at the node */
    if (peer_full(b, node))
        return false;
    int rc = share_take(b, p->session_id, node->pk);
    if (rc == MDG_EAGAIN)
        return false;
    zmq_msg_t pm, bm;
    if (rc || stamp_identity(m, p, true) != 0 || /* which removes "node": pk is no longer valid */
        mdg_wire_encode_params(m->params, &pm) != 0) {
        if (rc == 0)
            share_release(b, p->session_id, node->pk);
        refuse(b, p, &m->h, "broker out of memory");
        return true;
    }
    fwd *f = NULL;
    if (m->h.corr) {
        f = calloc(1, sizeof *f);
        if (!f || mdg_map_put_u64(b->fwds, b->next_fwd + 1, f) != 0) {
            free(f);
            zmq_msg_close(&pm);
            share_release(b, p->session_id, node->pk);
            refuse(b, p, &m->h, "broker out of memory");
            return true;
        }
        f->id = ++b->next_fwd;
        memcpy(f->node_pk, node->pk, MDG_KEY_BYTES);
        memcpy(f->session_id, p->session_id, SESSION_ID_BYTES);
        f->user_corr = m->h.corr;
        snprintf(f->command, sizeof f->command, "%.63s", m->h.command);
    }
    mdg_header h = {.kind = MDG_K_CMD, .corr = f ? f->id : 0};
    mdg_header_set_command(&h, m->h.command);
    if (m->has_bulk) {
        zmq_msg_init(&bm);
        zmq_msg_move(&bm, &m->bulk);
    }
    /* a call counts in the share while its forward lives, a
     * fire-and-forget command until the node acknowledges it */
    if (send_frames_max(b, node, &h, &pm, m->has_bulk ? &bm : NULL, (size_t)b->queue_limit,
                        f ? NULL : p->session_id) != 0) {
        if (f)
            fwd_free(b, f);
        else
            share_release(b, p->session_id, node->pk);
        pk_short(node->pk, who);
        snprintf(why, sizeof why, "node %s cannot take the call: %s", who, mdg_last_error());
        refuse(b, p, &m->h, why);
    }
    return true;
}

/* A node's reply: only the node the call went to may answer, and the reply
 * goes to the calling session only. Frames are passed on as they came. */
static bool route_node_reply(mdg_broker *b, peer *node, mdg_header *h, mdg_frames *f)
{
    char who[MDG_KEY_B64_LEN + 1]; /* made only for a log line: this is the reply path */
    if (h->corr == 0) { /* the node reports an error about a fire-and-forget call */
        mdg_log(MDG_LOG_WARN, "node %s reports an error it cannot route (no caller waits)", pk_short(node->pk, who));
        return true;
    }
    fwd *fw = mdg_map_get_u64(b->fwds, h->corr);
    if (!fw || memcmp(fw->node_pk, node->pk, MDG_KEY_BYTES) != 0) {
        mdg_log(MDG_LOG_WARN, "reply from node %s to call %llu, not pending for it (never sent, or its caller left): refused", pk_short(node->pk, who),
                (unsigned long long)h->corr);
        send_error(b, node->rid, node->rid_len, node, 0, "", "reply refused: no such call pending for this node");
        return true;
    }
    if (fw->ended) { /* on its way before the node heard that the call was ended */
        if (!(h->flags & MDG_F_MORE))
            fwd_free(b, fw);
        return true;
    }
    int nparts = f->n - 2;
    if (nparts < 1 || nparts > 2 || f->dropped ||
        mdg_wire_check_cbor(zmq_msg_data(&f->part[2]), zmq_msg_size(&f->part[2])) != 0 ||
        (((uint8_t *)zmq_msg_data(&f->part[2]))[0] >> 5) != 5 /* a CBOR map */) {
        mdg_log(MDG_LOG_WARN, "malformed reply from node %s refused", pk_short(node->pk, who));
        send_error(b, node->rid, node->rid_len, node, 0, "", "reply refused: malformed frames or params");
        return true;
    }
    /* A node is never paused for one caller: its replies to a caller that
     * does not read wait in that caller's queue, past queue_limit. At 1.5
     * times queue_limit the node is asked to pause this call (its other
     * calls go on). A node that goes on sending to it (more than the
     * replies already on their way: queue_limit, at least PAUSE_OVERSHOOT)
     * has the call ended: the caller gets an error, the node is told to
     * stop. So what waits for one caller is bounded per open call. */
    bool final = !(h->flags & MDG_F_MORE);
    size_t overshoot = b->queue_limit > PAUSE_OVERSHOOT ? (size_t)b->queue_limit : PAUSE_OVERSHOOT;
    peer *caller = mdg_map_get(b->sessions, fw->session_id, SESSION_ID_BYTES);
    if (!caller) {
        fwd_free(b, fw);
        return true;
    }
    if (!final && fw->paused && ++fw->since_pause > overshoot) {
        char why[300];
        snprintf(why, sizeof why, "the broker ended '%s': its caller is not reading (%zu messages wait for it)",
                 fw->command, caller->out_len);
        mdg_log(MDG_LOG_WARN, "from node %s: %s", pk_short(node->pk, who), why);
        end_fwd(b, fw, caller, why);
        return true;
    }
    mdg_header out = {.kind = h->kind, .corr = fw->user_corr, .flags = h->flags};
    zmq_msg_t pm, bm;
    zmq_msg_init(&pm);
    zmq_msg_move(&pm, &f->part[2]);
    if (nparts == 2) {
        zmq_msg_init(&bm);
        zmq_msg_move(&bm, &f->part[3]);
    }
    if (send_frames_max(b, caller, &out, &pm, nparts == 2 ? &bm : NULL, SIZE_MAX, NULL) != 0) {
        char why[300];
        snprintf(why, sizeof why, "reply to '%s' not delivered: %s", fw->command, mdg_last_error());
        mdg_log(MDG_LOG_ERROR, "from node %s: %s", pk_short(node->pk, who), why);
        send_error(b, node->rid, node->rid_len, node, 0, fw->command, why);
    }
    if (final) {
        fwd_free(b, fw);
    } else if (caller->out_len >= over_limit(b, 6) && !fw->paused && !node->legacy) {
        fw->paused = true;
        fw->since_pause = 0;
        caller->paused_fwds++;
        send_flow(b, node, fw->id, "pause", NULL);
    }
    return true;
}

/* Returns false when the message must wait (its node is full). */
static bool dispatch_command(mdg_broker *b, peer *p, const mdg_header *h, mdg_frames *f)
{
    char why[512];
    mdg_msg *m = NULL;
    int rc = mdg_msg_from_frames(&m, h, f, 2);
    if (rc) {
        snprintf(why, sizeof why, "bad message: %s", mdg_last_error());
        refuse(b, p, h, why);
        return true;
    }
    m->send_reply = broker_send_reply;
    m->owner = b;
    m->session_data = p->data;
    memcpy(m->session_id, p->session_id, SESSION_ID_BYTES);
    memcpy(m->pk, p->pk, MDG_KEY_BYTES);

    if (!in_table(b->cmds, h->command) && mdg_params_has(m->params, "node")) {
        bool done = true;
        if (p->role == MDG_ROLE_NODE)
            refuse(b, p, h, "nodes cannot call nodes");
        else
            done = forward_to_node(b, p, m);
        if (!done && m->has_bulk) { /* give the bulk back to the frames for the retry */
            zmq_msg_move(&f->part[3], &m->bulk);
        }
        mdg_msg_destroy(&m);
        return done;
    }
    /* stamped first, so a table may list user/session/node as required */
    const mdg_cmd *c = NULL;
    if (stamp_identity(m, p, false) != 0)
        refuse(b, p, h, "broker out of memory");
    else if (!(c = mdg_cmd_check(b->cmds, m, p->role == MDG_ROLE_NODE, why, sizeof why)))
        refuse(b, p, h, why);
    else
        c->handler(m, b->cmd_arg);
    if (!m->kept)
        mdg_msg_destroy(&m);
    return true;
}

/* Ask a peer whose link is fine to say hello again: the resume that
 * follows makes it resend what we have not taken (unsequenced: it may
 * have no room, and it is about the session itself). */
static void ask_resend(mdg_broker *b, peer *p, const char *text)
{
    mdg_params *e = mdg_params_new();
    if (e && p->attached) {
        mdg_params_set_str(e, "error", text);
        mdg_params_set_bool(e, "resync", true);
        send_to(b, p->rid, p->rid_len, NULL, MDG_K_ERROR, 0, 0, "", e, NULL, 0);
    } else {
        mdg_params_destroy(&e);
    }
}

/* Process one numbered (or unnumbered) message of a peer in order. False
 * when it must wait because where it goes is full: it is then neither
 * counted nor acknowledged. Duplicates (resent after a resume) are dropped. */
static bool process(mdg_broker *b, peer *p, mdg_header *h, mdg_frames *f, const char *who)
{
    /* 1.x frames have no numbers; a native one of a numbered kind without
     * its number never gets here (handle_message refuses it) */
    bool numbered = !p->legacy && mdg_kind_sequenced(h->kind);
    if (numbered && h->seq <= p->rx_seq) {
        mdg_log(MDG_LOG_DEBUG, "duplicate seq %llu from %s dropped", (unsigned long long)h->seq, who);
        return true;
    }
    if (numbered && h->seq != p->rx_seq + 1) {
        /* something before it was lost: never skip it; the client is asked
         * to say hello again, which makes it resend from what we have */
        mdg_log(MDG_LOG_ERROR, "seq gap from %s: expected %llu, got %llu; dropped, asking for a resend", who,
                (unsigned long long)p->rx_seq + 1, (unsigned long long)h->seq);
        ask_resend(b, p, "messages were lost: say hello again");
        return true;
    }
    /* A sender whose queue is far past queue_limit is not reading: what
     * handling this would send it (an answer, a refusal) must not pile up
     * without bound, so it waits, unacknowledged, until the sender reads.
     * (Past queue_limit itself only the broker's own sends are refused: a
     * busy stream of those must not starve the sender's own commands.) A
     * node's replies go on whatever its own queue holds: they are what
     * others wait for. */
    if (p->out_len >= over_limit(b, 8) &&
        !(p->role == MDG_ROLE_NODE && (h->kind == MDG_K_REPLY || h->kind == MDG_K_ERROR)))
        return false;
    /* Counted as received before it is handled, so that what the handling
     * sends to this peer (a reply, a refusal) acknowledges it at once
     * instead of a separate ACK later. A message that must wait is taken
     * back below; nothing is sent to its sender in that case. */
    uint64_t prev_rx = p->rx_seq;
    if (numbered)
        p->rx_seq = h->seq;
    bool done = true;
    switch (h->kind) {
    case MDG_K_CMD:
        done = dispatch_command(b, p, h, f);
        break;
    case MDG_K_REPLY:
    case MDG_K_ERROR:
        if (p->role == MDG_ROLE_NODE) {
            done = route_node_reply(b, p, h, f);
        } else {
            mdg_log(MDG_LOG_WARN, "%s from user %s refused: users do not answer calls", mdg_kind_name(h->kind), who);
            send_error(b, p->rid, p->rid_len, p, 0, "", "replies are only accepted from the node a call went to");
        }
        break;
    default:
        mdg_log(MDG_LOG_WARN, "unexpected %s from %s dropped", mdg_kind_name(h->kind), who);
    }
    if (!done)
        p->rx_seq = prev_rx;
    else if (numbered && p->rx_seq - p->ack_sent >= ACK_EVERY)
        send_to(b, NULL, 0, p, MDG_K_ACK, 0, 0, "", NULL, NULL, 0);
    else if (numbered && p->rx_seq > p->ack_sent) /* not when a reply carried it */
        mdg_map_put(b->owed_ack, p->session_id, SESSION_ID_BYTES, p);
    return done;
}

static void hold(mdg_broker *b, peer *p, const mdg_header *h, mdg_frames *f)
{
    if (!p->legacy && p->held_len >= (size_t)b->hold_limit) {
        /* the broker's own bound, whatever the sender's queue_limit: not
         * taken nor acknowledged, asked for again once the held ones went
         * on (a 1.x peer is refused instead, legacy_frame) */
        if (!p->resend_owed) {
            char who[MDG_KEY_B64_LEN + 1];
            mdg_log(MDG_LOG_WARN, "%s %s has %zu messages held (hold_limit): further ones are not taken until "
                                  "those have gone on, then it is asked to resend them",
                    p->role == MDG_ROLE_NODE ? "node" : "user", pk_short(p->pk, who), p->held_len);
        }
        p->resend_owed = true;
        return;
    }
    held *hm = malloc(sizeof *hm);
    if (!hm) { /* not acknowledged: the peer resends it after a reconnect */
        mdg_log(MDG_LOG_ERROR, "out of memory holding a message");
        return;
    }
    hm->next = NULL;
    hm->h = *h;
    mdg_frames_move(&hm->f, f);
    if (!p->held_head) {
        char who[MDG_KEY_B64_LEN + 1];
        pk_short(p->pk, who);
        mdg_log(MDG_LOG_DEBUG, "%s %s paused: where its %s '%s' goes is full", p->role == MDG_ROLE_NODE ? "node" : "user",
                who, mdg_kind_name(h->kind), h->command);
    }
    if (p->held_tail)
        p->held_tail->next = hm;
    else
        p->held_head = hm;
    p->held_tail = hm;
    p->held_len++;
    mdg_map_put(b->holding, p->session_id, SESSION_ID_BYTES, p);
}

/* Retry a peer's held messages, in order, until one must wait again. */
static void release_held(mdg_broker *b, peer *p)
{
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    while (p->held_head) {
        held *hm = p->held_head;
        if (!process(b, p, &hm->h, &hm->f, who))
            return;
        p->held_head = hm->next;
        if (!p->held_head)
            p->held_tail = NULL;
        p->held_len--;
        mdg_frames_close(&hm->f);
        free(hm);
    }
    mdg_map_take(b->holding, p->session_id, SESSION_ID_BYTES);
    if (p->resend_owed) {
        p->resend_owed = false;
        ask_resend(b, p, "messages past the broker's hold_limit were not taken: say hello again");
    }
}

/* Held peers that may go on now (room made by an acknowledgement or a
 * finished call), after the batch that made it. */
static void release_ready(mdg_broker *b)
{
    peer *p;
    while ((p = mdg_map_pop(b->ready)) != NULL)
        if (mdg_map_get(b->holding, p->session_id, SESSION_ID_BYTES) == p)
            release_held(b, p);
}

static int on_monitor(mdg_loop *loop, void *arg, short revents);

/* The session a routing id leads to, for a message from key uid. Routing
 * ids can be chosen by clients: one that now belongs to another key must
 * neither reach nor close the old session, so it is unmapped (and the
 * session detached when that was its live link). */
static peer *peer_of(mdg_broker *b, const uint8_t *rid, size_t rid_len, const char *uid)
{
    peer *p = mdg_map_get(b->peers, rid, rid_len);
    if (!p || strcmp(p->user_id, uid) == 0)
        return p;
    mdg_map_take(b->peers, rid, rid_len);
    if (p->attached && p->rid_len == rid_len && memcmp(p->rid, rid, rid_len) == 0)
        detach(b, p, "routing id taken by another key");
    return NULL;
}

static void handle_message(mdg_broker *b, mdg_frames *f)
{
    if (f->n < 2) {
        mdg_log(MDG_LOG_WARN, "message without a header dropped");
        return;
    }
    const uint8_t *rid = zmq_msg_data(&f->part[0]);
    size_t rid_len = zmq_msg_size(&f->part[0]);
    const char *uid = zmq_msg_gets(&f->part[1], "User-Id");
    if (!uid || strlen(uid) != USER_ID_LEN) {
        mdg_log(MDG_LOG_ERROR, "message without an authenticated key dropped");
        return;
    }
    char who[16];
    snprintf(who, sizeof who, "%.12s", uid + 1);

    peer *p = peer_of(b, rid, rid_len, uid);

    mdg_header h;
    if (mdg_wire_decode_header(zmq_msg_data(&f->part[1]), zmq_msg_size(&f->part[1]), &h) != 0) {
        mdg_log(MDG_LOG_WARN, "from %s: %s", who, mdg_last_error());
        send_error(b, rid, rid_len, p, 0, "", mdg_last_error());
        return;
    }
    if (f->dropped || f->n > 4) {
        mdg_log(MDG_LOG_WARN, "'%s' from %s with too many frames dropped", h.command, who);
        send_error(b, rid, rid_len, p, h.corr, h.command, "a message has a header, params and at most one bulk frame");
        return;
    }
    switch (h.kind) {
    case MDG_K_HELLO: {
        /* A new link's socket may reuse the fd of one that just dropped:
         * take the drop events first (libzmq emits them before the old fd
         * is closed, so they are queued before this hello could arrive). */
        on_monitor(b->loop, b, 0);
        p = peer_of(b, rid, rid_len, uid);
        /* The key was admitted when its connection was made; it may have
         * been revoked since (the connection outlives the revocation). */
        uint8_t pk[MDG_KEY_BYTES];
        int role = mdg_pk_from_b64(pk, uid + 1) == 0 ? role_of(b, pk) : MDG_ROLE_NONE;
        if (role != (uid[0] == 'N' ? MDG_ROLE_NODE : MDG_ROLE_USER)) {
            mdg_log(MDG_LOG_WARN, "hello from %s refused: key no longer admitted in that role", who);
            mdg_params *why = mdg_params_new();
            if (why)
                mdg_params_set_str(why, "reason", "key not admitted (revoked?)");
            send_to(b, rid, rid_len, NULL, MDG_K_BYE, 0, 0, "", why, NULL, 0);
            return;
        }
        on_hello(b, p, rid, rid_len, uid, zmq_msg_get(&f->part[1], ZMQ_SRCFD), f);
        return;
    }
    case MDG_K_BYE:
        if (p) {
            /* its ack first: what it has is not "undelivered" (even what a
             * detach marked to send again: the ack says it arrived) */
            p->unsent = NULL;
            if (h.ack)
                trim_kept(b, p, h.ack < p->tx_seq ? h.ack : p->tx_seq);
            close_session(b, p, "client said goodbye");
        }
        return;
    default:
        break;
    }
    if (!p) {
        mdg_log(MDG_LOG_WARN, "%s '%s' from %s without a session", mdg_kind_name(h.kind), h.command, who);
        /* "resync": the client's link is fine but its session is gone (e.g.
         * closed after a long silence): it should say hello again */
        mdg_params *e = mdg_params_new();
        if (e) {
            mdg_params_set_str(e, "error", "no session: send hello first");
            mdg_params_set_str(e, "command", h.command);
            mdg_params_set_bool(e, "resync", true);
            send_to(b, rid, rid_len, NULL, MDG_K_ERROR, 0, 0, "", e, NULL, 0);
        }
        return;
    }
    p->last_rx = mdg_now_ms();
    if (!p->attached && p->silent && rid_len == p->rid_len && memcmp(rid, p->rid, rid_len) == 0) {
        /* it was only quiet: the link never dropped */
        mdg_log(MDG_LOG_INFO, "%s %s speaks again on its link", p->role == MDG_ROLE_NODE ? "node" : "user", who);
        p->attached = true;
        p->silent = false;
        mdg_map_put(b->by_fd, &p->fd, sizeof p->fd, p);
        flush_peer(b, p);
    }
    /* acknowledgements count at once, even for a message that must wait:
     * they are what frees the queues it waits for */
    if (h.ack)
        trim_kept(b, p, h.ack < p->tx_seq ? h.ack : p->tx_seq);
    if (h.kind == MDG_K_ACK)
        return;
    if (mdg_kind_sequenced(h.kind) && h.seq == 0) {
        /* numbered kinds count from 1: one without its number would skip
         * duplicate detection and run again each time it came. Not
         * processed, not counted; a command's caller is answered, a reply
         * or error gets a notice (its corr names a call of ours) */
        char why[160];
        snprintf(why, sizeof why, "unnumbered %s refused: commands, replies and errors are numbered from 1 "
                                  "(seq 0 is only for hello, welcome, bye and ack)", mdg_kind_name(h.kind));
        mdg_log(MDG_LOG_WARN, "'%s' from %s %s: %s", h.command, p->role == MDG_ROLE_NODE ? "node" : "user", who, why);
        send_error(b, p->rid, p->rid_len, p, h.kind == MDG_K_CMD ? h.corr : 0, h.command, why);
        return;
    }
    if (p->held_head || !process(b, p, &h, f, who))
        hold(b, p, &h, f);
}

/* Hold SPARE_FDS descriptors again, as far as there are free ones. */
static void take_spares(mdg_broker *b)
{
    int fd;
    while (b->n_spare < SPARE_FDS && (fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
        b->spare[b->n_spare++] = fd;
}

/* libzmq's listener could not accept a connection (zeromq 4.3.4,
 * tcp_listener.cpp). Out of descriptors (EMFILE, ENFILE) the connection
 * stays in the backlog and the listening socket stays readable, so libzmq's
 * I/O thread spins and the client hangs. We give up the spare descriptors,
 * take the waiting connections ourselves and reset them: those clients see
 * their link drop at once, and the spin ends. libzmq may accept one of them
 * first with a freed descriptor; it then goes through the handshake as
 * usual (refused while the broker is full), and spares are taken again
 * once descriptors are free (on_grace_timer). Open sessions go on. (zmq_unbind
 * would stop the spin too, but libzmq closes every connection the listener
 * accepted along with it.) */
static void accept_failed(mdg_broker *b, int which, int err)
{
    if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM)
        return; /* EAGAIN, ECONNABORTED...: nothing is left waiting */
    int lfd = b->listen_fd[which], closed = 0, s;
    struct pollfd pfd = {.fd = lfd, .events = POLLIN};
    if (lfd >= 0 && poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN)) {
        while (b->n_spare)
            close(b->spare[--b->n_spare]);
        /* a reset, not an orderly close: to a client, a broker closing the
         * link in order during the handshake suggests a wrong server key */
        struct linger reset = {.l_onoff = 1, .l_linger = 0};
        while (closed < SHED_MAX && (s = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
            setsockopt(s, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
            close(s);
            closed++;
        }
        take_spares(b);
    }
    unsigned held;
    if (mdg_ratelog_due(&b->accept_log, LIMIT_LOG_MS, &held))
        mdg_log(MDG_LOG_ERROR, "cannot accept connections on the %s listener: %s (RLIMIT_NOFILE %ld, "
                               "%ld connections open, at most %d served): closed %d waiting; "
                               "%u more failures since the last such line",
                which ? "1.x" : "native", strerror(err), b->fd_limit, b->live_conns, b->max_conns, closed, held);
}

/* A listener is bound: its socket is non-blocking from now on, so that
 * accept_failed never waits (libzmq takes EAGAIN in its stride). */
static void listening(mdg_broker *b, int which, int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0)
        b->listen_fd[which] = fd;
}

/* Connection events: connections counted for the limit, listeners bound,
 * accepts failed, and drops: a dropped connection's session goes (the
 * reliability layer keeps it for a grace period instead). */
static int on_monitor(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    mdg_frames f;
    /* both listeners' events; fds are unique across them */
    for (void *mon = b->mon; mon; mon = mon == b->mon ? b->lmon : NULL) {
        int fails = 0, which = mon == b->mon ? 0 : 1;
        while (fails < MONITOR_FAILS_MAX && mdg_frames_recv(mon, &f) == 0) {
            uint16_t event = 0;
            uint32_t fd = 0; /* the event's value: an fd, or an errno */
            if (f.n >= 1 && zmq_msg_size(&f.part[0]) >= 6) {
                memcpy(&event, zmq_msg_data(&f.part[0]), 2);
                memcpy(&fd, (uint8_t *)zmq_msg_data(&f.part[0]) + 2, 4);
            }
            mdg_frames_close(&f);
            if (event == ZMQ_EVENT_ACCEPTED) {
                b->live_conns++;
            } else if (event == ZMQ_EVENT_LISTENING) {
                listening(b, which, (int)fd);
            } else if (event == ZMQ_EVENT_ACCEPT_FAILED) {
                fails++;
                accept_failed(b, which, (int)fd);
            } else if (event == ZMQ_EVENT_DISCONNECTED) {
                b->live_conns--;
                int ifd = (int)fd;
                peer *p = mdg_map_get(b->by_fd, &ifd, sizeof ifd);
                if (p)
                    detach(b, p, "connection lost");
            }
        }
    }
    return 0;
}

/* Read a batch from one of the listeners. Connection events first: a
 * socket fd closes before it can be reused by a new connection whose
 * messages follow. */
static void drain(mdg_broker *b, void *sock, void (*handle)(mdg_broker *, mdg_frames *))
{
    mdg_frames f;
    on_monitor(b->loop, b, 0);
    for (int i = 0; i < RECV_BATCH && mdg_frames_recv(sock, &f) == 0; i++) {
        handle(b, &f);
        mdg_frames_close(&f);
    }
    release_ready(b);
}

static int on_router(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    drain(b, b->router, handle_message);
    return 0;
}

/* ------------------------------------------------- Messidge 1.x listener */

/* Peers on the legacy socket speak 1.x (legacy.h, docs/compatibility.md).
 * Each 1.x frame becomes the native header and frames the rest of the
 * broker reads, unnumbered (1.x has no sequence numbers), so the command
 * table, hooks, forwarding and reply routing are the same code for both
 * protocols. Where 1.x was gullible we refuse, with a log line: a resume
 * must come from the session's own key, only the node a call went to may
 * answer it, users never answer, tables are bounded, and a frame that is
 * malformed or does not open never reaches a handler. */

static void legacy_link_free(legacy_link **pl)
{
    legacy_link *l = *pl;
    if (!l)
        return;
    legacy_uuid *u;
    while ((u = mdg_map_pop(l->uuids)) != NULL)
        free(u);
    mdg_map_destroy(&l->uuids);
    mdg_ring_free(&l->order);
    free(l);
    *pl = NULL;
}

static legacy_link *legacy_link_new(size_t limit)
{
    legacy_link *l = calloc(1, sizeof *l);
    if (l && !(l->uuids = mdg_map_new())) {
        free(l);
        return NULL;
    }
    if (l)
        mdg_ring_init(&l->order, limit);
    return l;
}

/* One 1.x frame to a routing id: 0, MDG_EAGAIN or an error. out is closed. */
static int legacy_emit(mdg_broker *b, const uint8_t *rid, size_t rid_len, zmq_msg_t *out)
{
    int rc = 0;
    if (zmq_send(b->lrouter, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_msg_send(out, b->lrouter, ZMQ_DONTWAIT) < 0)
        rc = errno == EAGAIN         ? MDG_EAGAIN
             : errno == EHOSTUNREACH ? mdg_fail(MDG_ECLOSED, "1.x peer is not connected")
                                     : mdg_fail(MDG_ESYS, "send: %s", zmq_strerror(errno));
    zmq_msg_close(out);
    return rc;
}

/* An exception reply straight to a frame's sender, for refusals made
 * before the frame becomes a message (only when it asked for a reply). */
static void legacy_refuse_uuid(mdg_broker *b, const peer *p, const uint8_t *uuid, size_t uuid_len,
                               const char *text)
{
    if (!uuid_len)
        return;
    mdg_params *e = mdg_legacy_exception(text);
    zmq_msg_t out;
    if (e && mdg_legacy_build(&out, p->legacy->sealed ? p->legacy->key : NULL, NULL, 0, "", 0, uuid, uuid_len, e,
                              NULL, 0) == 0)
        legacy_emit(b, p->rid, p->rid_len, &out);
    mdg_params_destroy(&e);
}

static void legacy_refuse(mdg_broker *b, const peer *p, const mdg_legacy_frame *lf, const char *text)
{
    legacy_refuse_uuid(b, p, lf->uuid, lf->uuid_len, text);
}

/* 1.x's own refusal of a hello, [b'', b'', uuid, {}, b''], which 1.x
 * clients read as "Authentication failed.". */
static void legacy_refuse_hello(mdg_broker *b, const uint8_t *rid, size_t rid_len, const mdg_legacy_frame *lf)
{
    zmq_msg_t out;
    if (mdg_legacy_build(&out, NULL, NULL, 0, "", 0, lf->uuid, lf->uuid_len, NULL, NULL, 0) == 0)
        legacy_emit(b, rid, rid_len, &out);
}

/* A native message out as a 1.x frame (peer_send's contract). Calls to a
 * node are named "m<forward id>"; replies carry the uuid of the call they
 * answer, and never the bulk in the command field (1.x leaked it there). */
static int legacy_send(mdg_broker *b, peer *p, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    legacy_link *l = p->legacy;
    legacy_uuid *u = NULL;
    mdg_params *pp = NULL;
    char num[24];
    const void *uuid = "";
    size_t uuid_len = 0;
    zmq_msg_t out;
    int rc = 0;
    switch (h->kind) {
    case MDG_K_WELCOME: /* a fresh session key on every hello, as 1.x */
        rc = mdg_legacy_build_welcome(&out, p->role == MDG_ROLE_USER ? p->pk : NULL, mdg_keys_secret(b->keys),
                                      l->key, p->session_id, SESSION_ID_BYTES);
        l->sealed = p->role == MDG_ROLE_USER;
        break;
    case MDG_K_CMD:
    case MDG_K_REPLY:
    case MDG_K_ERROR:
        if (h->kind == MDG_K_CMD && h->corr) {
            uuid_len = (size_t)snprintf(num, sizeof num, "m%llu", (unsigned long long)h->corr);
            uuid = num;
        } else if (h->kind != MDG_K_CMD) {
            if (!h->corr || !(u = mdg_map_get_u64(l->uuids, h->corr))) {
                mdg_log(MDG_LOG_INFO, "%s for a 1.x peer that waits for no reply: logged only", mdg_kind_name(h->kind));
                goto consumed;
            }
            uuid = u->bytes;
            uuid_len = u->len;
        }
        rc = mdg_legacy_params_out(h->kind, zmq_msg_data(params), zmq_msg_size(params), &pp);
        if (rc == 0)
            rc = mdg_legacy_build(&out, l->sealed ? l->key : NULL, NULL, 0, h->kind == MDG_K_CMD ? h->command : "",
                                  h->kind == MDG_K_CMD ? h->command_len : 0, uuid, uuid_len, pp,
                                  bulk ? zmq_msg_data(bulk) : NULL, bulk ? zmq_msg_size(bulk) : 0);
        mdg_params_destroy(&pp);
        break;
    default: /* acknowledgements, goodbyes: 1.x has none */
        goto consumed;
    }
    if (rc) {
        /* 1.x cannot carry it (a native peer's params with non-text keys,
         * say): dropped loudly, and a waiting caller told, so that neither
         * the queue nor the caller is stuck behind it */
        char who[MDG_KEY_B64_LEN + 1], why[300];
        pk_short(p->pk, who);
        snprintf(why, sizeof why, "%s", mdg_last_error());
        mdg_log(MDG_LOG_ERROR, "%s '%s' for 1.x %s %s dropped: %s", mdg_kind_name(h->kind), h->command,
                p->role == MDG_ROLE_NODE ? "node" : "user", who, why);
        if (u) {
            char text[360];
            snprintf(text, sizeof text, "the reply cannot be carried by Messidge 1.x: %s", why);
            legacy_refuse_uuid(b, p, u->bytes, u->len, text);
            if (!(h->flags & MDG_F_MORE)) {
                mdg_map_take_u64(l->uuids, h->corr);
                free(u);
            }
        }
        goto consumed;
    }
    rc = legacy_emit(b, p->rid, p->rid_len, &out);
    if (rc == MDG_EAGAIN)
        return rc; /* params and bulk are still the caller's */
    if (rc == 0 && u && !(h->flags & MDG_F_MORE)) { /* the final reply: the call is over */
        mdg_map_take_u64(l->uuids, h->corr);
        free(u);
    }
    goto closed;
consumed:
    rc = 0;
closed:
    zmq_msg_close(params);
    if (bulk)
        zmq_msg_close(bulk);
    return rc;
}

/* A 1.x hello: a new session, or the resume of one the same key owns. */
static void legacy_hello(mdg_broker *b, peer *p, const uint8_t *rid, size_t rid_len, int fd,
                         const mdg_legacy_frame *lf)
{
    mdg_params *hp = NULL;
    zmq_msg_t unused;
    const uint8_t *pk = NULL, *sid = NULL;
    size_t pk_len = 0, sid_len = 0;
    int role = MDG_ROLE_NONE;
    char who[MDG_KEY_B64_LEN + 1] = "(no key)";
    if (mdg_legacy_open(lf, NULL, &hp, &unused) == 0) {
        if (mdg_params_get_bytes(hp, "user", &pk, &pk_len) == 0 && pk_len == MDG_KEY_BYTES) {
            role = role_of(b, pk);
            pk_short(pk, who);
        }
        mdg_params_get_bytes(hp, "rid", &sid, &sid_len);
    }
    zmq_msg_close(&unused);
    peer *node = role == MDG_ROLE_NODE ? mdg_map_get(b->nodes, pk, MDG_KEY_BYTES) : NULL;
    const char *why = role == MDG_ROLE_NONE ? (pk_len == MDG_KEY_BYTES ? "unknown key" : "no 32-byte 'user' key")
                      : node && !node->legacy ? "that node is connected on the native (authenticated) protocol"
                      : !p && b->live_conns > b->max_conns ? "broker at its connection limit" /* a new link */
                                              : NULL;
    if (why) {
        mdg_log(MDG_LOG_WARN, "1.x hello from %s refused: %s", who, why);
        legacy_refuse_hello(b, rid, rid_len, lf);
        if (p)
            close_session(b, p, "a refused hello on its link");
        mdg_params_destroy(&hp);
        return;
    }
    char uid[USER_ID_LEN + 1];
    uid[0] = role == MDG_ROLE_NODE ? 'N' : 'U';
    mdg_pk_to_b64(pk, uid + 1);
    /* A 1.x hello proves nothing (the pk is public, the session id travels
     * in clear): it may take up a session whose link has gone, never one
     * still attached elsewhere. A 1.x client cannot tell a new session from
     * a resumed one, so this stays compatible. */
    peer *target = sid_len == SESSION_ID_BYTES ? mdg_map_get(b->sessions, sid, sid_len) : NULL;
    if (target && target->attached && target != p && memcmp(target->pk, pk, MDG_KEY_BYTES) == 0) {
        mdg_log(MDG_LOG_WARN, "1.x hello from %s names a session still connected elsewhere: a new session instead",
                who);
        sid_len = 0;
    }
    if (p && p != target)
        close_session(b, p, "replaced by a new 1.x hello");
    /* 1.x peers do not beat: libzmq's heartbeats on this socket notice a
     * dead link instead of our silence check */
    if (!sid_len || !resume_session(b, rid, rid_len, uid, fd, sid, sid_len, 0, INT_MAX, true)) {
        legacy_link *l = legacy_link_new((size_t)b->queue_limit);
        if (l)
            open_session(b, rid, rid_len, uid, fd, INT_MAX, l);
        else
            mdg_log(MDG_LOG_ERROR, "cannot open a 1.x session: out of memory");
    }
    mdg_params_destroy(&hp);
}

/* "m<forward id>": a name we gave a call to a node. */
static bool legacy_fwd_id(const mdg_legacy_frame *lf, uint64_t *id)
{
    if (lf->uuid_len < 2 || lf->uuid_len > 21 || lf->uuid[0] != 'm')
        return false;
    uint64_t v = 0;
    for (size_t i = 1; i < lf->uuid_len; i++) {
        if (lf->uuid[i] < '0' || lf->uuid[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(lf->uuid[i] - '0');
    }
    *id = v;
    return true;
}

/* Decide what a 1.x frame of a session is; fill the native header. False
 * (logged, and refused to the sender) when it is not acceptable. */
static bool legacy_classify(mdg_broker *b, peer *p, const mdg_legacy_frame *lf, mdg_params **params,
                            mdg_header *h, const char *who)
{
    const char *role = p->role == MDG_ROLE_NODE ? "node" : "user";
    bool ka = lf->command_len == 2 && memcmp(lf->command, "ka", 2) == 0;
    uint64_t id;
    bool named_by_us = p->role == MDG_ROLE_NODE && legacy_fwd_id(lf, &id);
    fwd *fw = named_by_us ? mdg_map_get_u64(b->fwds, id) : NULL;
    if (fw && memcmp(fw->node_pk, p->pk, MDG_KEY_BYTES) == 0) {
        /* the answer to a call forwarded to this very node; 1.x marks a
         * reply of a long-term channel 'ka' and cannot mark the last one */
        const char *exc = NULL;
        h->kind = MDG_K_REPLY;
        h->corr = id;
        h->flags = ka ? MDG_F_MORE : 0;
        if (mdg_params_get_str(*params, "exception", &exc) == 0) {
            if (mdg_legacy_error_in(params, exc, fw->command) != 0)
                return false;
            h->kind = MDG_K_ERROR;
        }
        return true;
    }
    if (lf->command_len == 0 || ka || named_by_us) {
        mdg_log(MDG_LOG_WARN, "1.x reply from %s %s refused: %s", role, who,
                p->role == MDG_ROLE_USER ? "users do not answer calls" : "no such call was made to this node");
        return false;
    }
    if (lf->command_len > MDG_MAX_COMMAND || memchr(lf->command, 0, lf->command_len)) {
        mdg_log(MDG_LOG_WARN, "1.x command from %s %s refused: its name is longer than %d bytes or has a NUL byte",
                role, who, MDG_MAX_COMMAND);
        legacy_refuse(b, p, lf, "bad command name (over 255 bytes, or a NUL byte)");
        return false;
    }
    char name[MDG_MAX_COMMAND + 1];
    memcpy(name, lf->command, lf->command_len);
    name[lf->command_len] = '\0';
    h->kind = MDG_K_CMD;
    mdg_header_set_command(h, name);
    if (!lf->uuid_len)
        return true;
    legacy_link *l = p->legacy;
    legacy_uuid *u = malloc(sizeof *u);
    if (!u || mdg_map_put_u64(l->uuids, l->next_corr + 1, u) != 0) {
        free(u);
        mdg_log(MDG_LOG_ERROR, "'%s' from 1.x %s %s refused: out of memory", name, role, who);
        legacy_refuse(b, p, lf, "broker out of memory");
        return false;
    }
    u->len = lf->uuid_len;
    memcpy(u->bytes, lf->uuid, lf->uuid_len);
    h->corr = ++l->next_corr;
    /* calls no one answers must not fill the table for good: past
     * queue_limit the oldest is forgotten (its late reply is dropped) */
    uint64_t old = mdg_ring_push(&l->order, h->corr);
    if (old && (u = mdg_map_take_u64(l->uuids, old)) != NULL) {
        if (!l->eviction_logged)
            mdg_log(MDG_LOG_WARN, "1.x %s %s has more than %d calls awaiting replies: the oldest can no longer be "
                                  "answered (said once per session)", role, who, b->queue_limit);
        l->eviction_logged = true;
        free(u);
    }
    return true;
}

/* A frame of an open 1.x session: opened, classified, then processed as
 * any native message (held when where it goes is full). */
static void legacy_frame(mdg_broker *b, peer *p, const mdg_legacy_frame *lf)
{
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    if (p->held_len >= (size_t)b->queue_limit) {
        /* a native sender is held back by its own unacknowledged window;
         * 1.x has none, so what waits for room is bounded here */
        mdg_log(MDG_LOG_WARN, "1.x frame from %s refused: %zu of its messages already wait for room", who,
                p->held_len);
        legacy_refuse(b, p, lf, "the broker is full: try again later");
        return;
    }
    mdg_params *params = NULL;
    mdg_frames f = {.n = 3};
    zmq_msg_init(&f.part[3]);
    if (mdg_legacy_open(lf, p->legacy->sealed ? p->legacy->key : NULL, &params, &f.part[3]) != 0) {
        mdg_log(MDG_LOG_WARN, "1.x frame from %s %s refused: %s", p->role == MDG_ROLE_NODE ? "node" : "user", who,
                mdg_last_error());
        legacy_refuse(b, p, lf, mdg_last_error());
        zmq_msg_close(&f.part[3]);
        return;
    }
    p->legacy->proven = true;
    mdg_header h = {0};
    bool ok = legacy_classify(b, p, lf, &params, &h, who);
    if (ok && mdg_wire_encode_params(params, &f.part[2]) != 0) {
        legacy_refuse(b, p, lf, "broker out of memory");
        ok = false;
    }
    mdg_params_destroy(&params);
    if (!ok) {
        zmq_msg_close(&f.part[3]);
        return;
    }
    zmq_msg_init(&f.part[0]); /* where routing id and header would be */
    zmq_msg_init(&f.part[1]);
    if (zmq_msg_size(&f.part[3]))
        f.n = 4;
    else
        zmq_msg_close(&f.part[3]);
    if (p->held_head || !process(b, p, &h, &f, who))
        hold(b, p, &h, &f);
    mdg_frames_close(&f);
}

static void legacy_message(mdg_broker *b, mdg_frames *f)
{
    if (f->n != 2 || f->dropped) {
        mdg_log(MDG_LOG_WARN, "1.x message of %d frames dropped (1.x sends one)", f->n + f->dropped - 1);
        return;
    }
    const uint8_t *rid = zmq_msg_data(&f->part[0]);
    size_t rid_len = zmq_msg_size(&f->part[0]), len = zmq_msg_size(&f->part[1]);
    peer *p = mdg_map_get(b->lpeers, rid, rid_len);
    char who[MDG_KEY_B64_LEN + 1] = "a new link";
    if (p)
        pk_short(p->pk, who);
    mdg_legacy_frame lf;
    char why[300];
    if ((long long)len > b->max_message)
        snprintf(why, sizeof why, "frame of %zu bytes larger than max_message (%lld)", len, b->max_message);
    else if (!p && len > LEGACY_HELLO_MAX) /* nothing is decoded for a link that has not said hello */
        snprintf(why, sizeof why, "frame of %zu bytes before a hello (at most %d)", len, LEGACY_HELLO_MAX);
    else if (mdg_legacy_parse(zmq_msg_data(&f->part[1]), len, &lf) != 0)
        snprintf(why, sizeof why, "%s", mdg_last_error());
    else
        why[0] = '\0';
    if (why[0]) {
        uint8_t uuid[MDG_LEGACY_MAX_UUID];
        mdg_log(MDG_LOG_WARN, "1.x frame from %s refused: %s", who, why);
        if (p) /* the sender is told when it waits for a reply, as 1.x did */
            legacy_refuse_uuid(b, p, uuid, mdg_legacy_peek_uuid(zmq_msg_data(&f->part[1]), len, uuid), why);
        return;
    }
    if (p)
        p->last_rx = mdg_now_ms();
    if (lf.command_len == 4 && memcmp(lf.command, "auth", 4) == 0) {
        on_monitor(b->loop, b, 0); /* drops first: a new link may reuse a closed fd */
        legacy_hello(b, mdg_map_get(b->lpeers, rid, rid_len), rid, rid_len, zmq_msg_get(&f->part[1], ZMQ_SRCFD),
                     &lf);
    } else if (!p) {
        mdg_log(MDG_LOG_WARN, "1.x frame from a link without a session refused (say 'auth' first)");
        legacy_refuse_hello(b, rid, rid_len, &lf);
    } else {
        legacy_frame(b, p, &lf);
    }
    mdg_legacy_frame_free(&lf);
}

static int on_legacy_router(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    drain(b, b->lrouter, legacy_message);
    return 0;
}

/* ---------------------------------------------------------------- timers */

static int on_ack_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    peer *p;
    while ((p = mdg_map_pop(b->owed_ack)) != NULL)
        if (p->attached && p->rx_seq > p->ack_sent)
            send_to(b, NULL, 0, p, MDG_K_ACK, 0, 0, "", NULL, NULL, 0);
    return 0;
}

static void collect(void *value, void *arg)
{
    mdg_ptrs_push(arg, value);
}

/* Peers that waited for room: their held messages, then what libzmq would
 * not take. Collected first: processing changes the maps. */
static int on_backlog_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    mdg_ptrs ps = {0};
    release_ready(b);
    if (mdg_map_size(b->holding)) {
        mdg_map_each(b->holding, collect, &ps);
        for (size_t i = 0; i < ps.n; i++)
            if (mdg_map_get(b->holding, ((peer *)ps.v[i])->session_id, SESSION_ID_BYTES) == ps.v[i])
                release_held(b, ps.v[i]);
        ps.n = 0;
    }
    if (mdg_map_size(b->backlog)) {
        peer *p;
        while ((p = mdg_map_pop(b->backlog)) != NULL)
            mdg_ptrs_push(&ps, p);
        for (size_t i = 0; i < ps.n; i++)
            flush_peer(b, ps.v[i]); /* puts it back if its pipe is still full */
    }
    mdg_ptrs_free(&ps);
    return 0;
}

typedef struct expired {
    mdg_broker *b;
    int64_t now;
    mdg_ptrs found;
} expired;

static void find_expired(void *value, void *arg)
{
    peer *p = value;
    expired *e = arg;
    int grace = p->role == MDG_ROLE_NODE ? e->b->node_grace_ms : e->b->grace_ms;
    if (p->legacy && p->legacy->sealed && !p->legacy->proven)
        grace = 0; /* anyone may open such sessions with a public key alone */
    if (p->attached && e->now - p->last_rx > p->silence_ms) {
        /* silent past its heartbeats: detached like a dropped link (no
         * libzmq heartbeats at the broker: their timers cost O(n) each) */
        char why[64];
        snprintf(why, sizeof why, "silent for %lld ms", (long long)(e->now - p->last_rx));
        detach(e->b, p, why);
        p->silent = true;
        return;
    }
    if (!p->attached && e->now - p->detached_at >= grace)
        mdg_ptrs_push(&e->found, p);
}

static void find_old_tombstone(void *value, void *arg)
{
    fwd *f = value;
    expired *e = arg;
    if (f->ended && e->now - f->ended_at >= TOMBSTONE_MS)
        mdg_ptrs_push(&e->found, f);
}

/* Sessions away longer than their grace period are closed for good; ended
 * calls are forgotten once their late replies have had time to come. */
static int on_grace_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    expired e = {.b = b, .now = mdg_now_ms()};
    if (b->n_spare < SPARE_FDS)
        take_spares(b); /* given up when descriptors ran out */
    mdg_map_each(b->sessions, find_expired, &e);
    for (size_t i = 0; i < e.found.n; i++)
        close_session(b, e.found.v[i], "not resumed within its grace period");
    if (b->tombstones) {
        e.found.n = 0;
        mdg_map_each(b->fwds, find_old_tombstone, &e);
        for (size_t i = 0; i < e.found.n; i++)
            fwd_free(b, e.found.v[i]);
    }
    mdg_ptrs_free(&e.found);
    return 0;
}

/* ------------------------------------------------------------ run / stop */

static int setsock(void *s, int opt, const void *v, size_t len, const char *name)
{
    if (zmq_setsockopt(s, opt, v, len) != 0)
        return mdg_fail(MDG_ESYS, "cannot set %s: %s", name, zmq_strerror(errno));
    return 0;
}

/* A ROUTER with what both listeners share. No receive limit in libzmq:
 * with heartbeats on, libzmq 4.3.4 aborts (assert !_io_error,
 * zeromq/libzmq#4364) when a link drops while its receive pipe is full.
 * Each native client keeps at most its queue_limit messages
 * unacknowledged, and a 1.x sender's waiting messages are bounded by ours,
 * which bounds what can queue here. */
static int new_router(mdg_broker *b, void **out, int64_t maxmsg)
{
    int one = 1, hwm = BROKER_HWM, unlimited = 0, linger = BROKER_LINGER_MS, rc;
    void *s = *out = zmq_socket(b->ctx, ZMQ_ROUTER);
    if (!s)
        return mdg_fail(MDG_ESYS, "cannot make a ROUTER: %s", zmq_strerror(errno));
    if ((rc = setsock(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one, "ROUTER_MANDATORY")) ||
        (rc = setsock(s, ZMQ_SNDHWM, &hwm, sizeof hwm, "SNDHWM")) ||
        (rc = setsock(s, ZMQ_RCVHWM, &unlimited, sizeof unlimited, "RCVHWM")) ||
        (rc = setsock(s, ZMQ_LINGER, &linger, sizeof linger, "LINGER")) ||
        (rc = setsock(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg, "MAXMSGSIZE")))
        return rc;
    return 0;
}

/* Watch a ROUTER's connections, bind it (port 0: a free one) and watch it.
 * ep gets the endpoint asked for, *bound the port got. */
static int listen_on(mdg_broker *b, void *sock, void **mon, const char *tag, int port, int *bound,
                     mdg_loop_fn on_input, char ep[160])
{
    char mon_ep[80], last[256];
    size_t len = sizeof last;
    int rc;
    snprintf(mon_ep, sizeof mon_ep, "inproc://mdg-broker-%s-monitor-%p", tag, (void *)b);
    if (zmq_socket_monitor(sock, mon_ep,
                           ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_ACCEPT_FAILED |
                               ZMQ_EVENT_LISTENING) != 0 ||
        !(*mon = zmq_socket(b->ctx, ZMQ_PAIR)) ||
        zmq_connect(*mon, mon_ep) != 0)
        return mdg_fail(MDG_ESYS, "cannot monitor the %s ROUTER: %s", tag, zmq_strerror(errno));
    if (port)
        snprintf(ep, 160, "tcp://%s:%d", b->bind_address, port);
    else
        snprintf(ep, 160, "tcp://%s:*", b->bind_address);
    if (zmq_bind(sock, ep) != 0)
        return mdg_fail(MDG_ESYS, "cannot bind the %s listener %s: %s", tag, ep, zmq_strerror(errno));
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, last, &len) == 0) {
        const char *colon = strrchr(last, ':');
        *bound = colon ? atoi(colon + 1) : port;
    }
    if ((rc = mdg_loop_watch(b->loop, *mon, -1, ZMQ_POLLIN, on_monitor, b)) ||
        (rc = mdg_loop_watch(b->loop, sock, -1, ZMQ_POLLIN, on_input, b)))
        return rc;
    return 0;
}

/* The 1.x listener: no CURVE (1.x has none), libzmq heartbeats since 1.x
 * peers send none of their own, and loud warnings about what 1.x lacks. */
static int bind_legacy(mdg_broker *b)
{
    int ivl = LEGACY_HEARTBEAT_MS, timeout = 3 * LEGACY_HEARTBEAT_MS, rc;
    char ep[160];
    if (!b->legacy)
        return 0;
    if ((rc = new_router(b, &b->lrouter, b->max_message + LEGACY_HEADROOM)) ||
        (rc = setsock(b->lrouter, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl, "HEARTBEAT_IVL")) ||
        (rc = setsock(b->lrouter, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout, "HEARTBEAT_TIMEOUT")) ||
        (rc = listen_on(b, b->lrouter, &b->lmon, "legacy", b->legacy_port, &b->legacy_bound_port, on_legacy_router,
                        ep)))
        return rc;
    mdg_log(MDG_LOG_WARN, "Messidge 1.x listener on %s (port %d) keeps 1.x's weaknesses "
                          "(docs/compatibility.md); use it on a trusted network only:", ep, b->legacy_bound_port);
    mdg_log(MDG_LOG_WARN, "  1.x node links are plaintext and unauthenticated: a node is trusted on its public key alone");
    mdg_log(MDG_LOG_WARN, "  1.x user frames seal params and bulk under one nonce, and leave command and uuid "
                          "unauthenticated");
    mdg_log(MDG_LOG_WARN, "  1.x has no replay protection, no forward secrecy, and no acknowledgements "
                          "(a message in flight when a link drops is lost)");
    return 0;
}

/* Descriptors open now (/proc/self/fd, else a scan of the first ones). */
static long open_fds(long limit)
{
    long n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        for (struct dirent *e; (e = readdir(d)) != NULL;)
            n += e->d_name[0] != '.';
        closedir(d);
        return n - 1; /* the directory's own */
    }
    for (long fd = 0; fd < limit && fd < 65536; fd++)
        n += fcntl((int)fd, F_GETFD) != -1;
    return n;
}

/* How many connections fit: one descriptor each, in what RLIMIT_NOFILE
 * leaves once the broker is set up, less FD_RESERVE for the rest of the
 * process (half of what is left when that is small). Said at start; a
 * warning when it is lower than asked, or low. */
static void set_budget(mdg_broker *b)
{
    struct rlimit rl;
    long limit = INT_MAX;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < INT_MAX)
        limit = (long)rl.rlim_cur;
    take_spares(b); /* counted below */
    long open_now = open_fds(limit), avail = limit - open_now;
    long fit = avail > 2 * FD_RESERVE ? avail - FD_RESERVE : avail / 2;
    if (fit < 1)
        fit = 1;
    b->fd_limit = limit;
    b->max_conns = b->max_conns_asked && b->max_conns_asked < fit ? b->max_conns_asked : (int)fit;
    const char *how = "raise it for more (ulimit -n, or LimitNOFILE= in a systemd unit)";
    if (b->max_conns_asked > fit)
        mdg_log(MDG_LOG_WARN, "max_connections %d is more than RLIMIT_NOFILE %ld allows: the broker admits at most "
                              "%ld connections (one descriptor each; %ld open, %d kept for the rest); %s",
                b->max_conns_asked, limit, fit, open_now, FD_RESERVE, how);
    else if (!b->max_conns_asked && fit < FD_LOW_WARN)
        mdg_log(MDG_LOG_WARN, "RLIMIT_NOFILE %ld is low: the broker admits at most %ld connections (one "
                              "descriptor each; %ld open, %d kept for the rest); %s",
                limit, fit, open_now, FD_RESERVE, how);
    else
        mdg_log(MDG_LOG_INFO, "the broker admits at most %d connections (RLIMIT_NOFILE %ld)", b->max_conns, limit);
}

static int bind_sockets(mdg_broker *b)
{
    int one = 1, rc;
    char ep[160];
    if (b->router)
        return 0;
    /* The ZAP handler must be bound before the ROUTER accepts anyone. */
    b->zap = zmq_socket(b->ctx, ZMQ_REP);
    if (!b->zap || zmq_bind(b->zap, "inproc://zeromq.zap.01") != 0)
        return mdg_fail(MDG_ESYS, "cannot bind the ZAP handler: %s", zmq_strerror(errno));
    if ((rc = new_router(b, &b->router, b->max_message)) ||
        (rc = setsock(b->router, ZMQ_CURVE_SERVER, &one, sizeof one, "CURVE_SERVER")) ||
        (rc = setsock(b->router, ZMQ_CURVE_SECRETKEY, mdg_keys_secret(b->keys), MDG_KEY_BYTES, "CURVE_SECRETKEY")) ||
        (rc = setsock(b->router, ZMQ_ZAP_DOMAIN, "messidge", 8, "ZAP_DOMAIN")) ||
        (rc = mdg_loop_watch(b->loop, b->zap, -1, ZMQ_POLLIN, on_zap, b)) ||
        (rc = listen_on(b, b->router, &b->mon, "native", b->port, &b->bound_port, on_router, ep)))
        return rc;
    if (mdg_loop_timer(b->loop, ACK_DELAY_MS, true, on_ack_timer, b) < 0 ||
        mdg_loop_timer(b->loop, BACKLOG_RETRY_MS, true, on_backlog_timer, b) < 0 ||
        mdg_loop_timer(b->loop, GRACE_CHECK_MS, true, on_grace_timer, b) < 0)
        return mdg_fail(MDG_ENOMEM, "no room for the broker's timers");
    mdg_loop_on_wake(b->loop, on_wake, b);
    mdg_log(MDG_LOG_INFO, "broker listening on %s (port %d)", ep, b->bound_port);
    if ((rc = bind_legacy(b)))
        return rc;
    set_budget(b);
    return 0;
}

/* The loop has ended: every session is closed (hooks fired), once. */
static void close_all_sessions(mdg_broker *b)
{
    peer *p;
    if (!b->peers || !b->lpeers || !b->sessions || !b->nodes || !b->by_fd || !b->fwds || !b->loop || !b->owed_ack ||
        !b->backlog || !b->holding || !b->shares || !b->ready)
        return; /* a broker that failed half-way through mdg_broker_new */
    while ((p = mdg_map_pop(b->sessions)) != NULL) {
        mdg_map_put(b->sessions, p->session_id, SESSION_ID_BYTES, p); /* close_session takes it out */
        close_session(b, p, "broker stopping");
    }
    on_wake(b->loop, b, 0); /* log what other threads queued too late */
}

static int run_loop(mdg_broker *b)
{
    b->loop_thread = pthread_self();
    __atomic_store_n(&b->loop_running, true, __ATOMIC_RELEASE);
    int rc = mdg_loop_run(b->loop);
    close_all_sessions(b);
    __atomic_store_n(&b->loop_running, false, __ATOMIC_RELEASE);
    return rc;
}

int mdg_broker_run(mdg_broker *b)
{
    if (!b)
        return MDG_EINVAL;
    int rc = bind_sockets(b);
    return rc ? rc : run_loop(b);
}

static void *broker_thread(void *arg)
{
    mdg_broker *b = arg;
    if (run_loop(b) != 0)
        mdg_log(MDG_LOG_ERROR, "broker loop failed: %s", mdg_last_error());
    return NULL;
}

int mdg_broker_start(mdg_broker *b)
{
    if (!b)
        return MDG_EINVAL;
    if (b->thread_started)
        return mdg_fail(MDG_ESTATE, "broker already started");
    int rc = bind_sockets(b);
    if (rc)
        return rc;
    if (pthread_create(&b->thread, NULL, broker_thread, b) != 0)
        return mdg_fail(MDG_ESYS, "cannot start the broker thread");
    b->thread_started = true;
    return 0;
}

void mdg_broker_stop(mdg_broker *b)
{
    if (b)
        mdg_loop_stop(b->loop);
}

void mdg_broker_destroy(mdg_broker **pb)
{
    if (!pb || !*pb)
        return;
    mdg_broker *b = *pb;
    if (b->thread_started) {
        mdg_loop_stop(b->loop);
        pthread_join(b->thread, NULL);
    } else if (b->peers) {
        close_all_sessions(b);
    }
    if (b->lmon)
        zmq_close(b->lmon);
    if (b->lrouter)
        zmq_close(b->lrouter);
    if (b->mon)
        zmq_close(b->mon);
    if (b->router)
        zmq_close(b->router);
    if (b->zap)
        zmq_close(b->zap);
    if (b->ctx)
        zmq_ctx_term(b->ctx);
    while (b->n_spare)
        close(b->spare[--b->n_spare]);
    fwd *f;
    while (b->fwds && (f = mdg_map_pop(b->fwds)) != NULL)
        free(f);
    share *sh;
    while (b->shares && (sh = mdg_map_pop(b->shares)) != NULL)
        free(sh);
    pthread_mutex_lock(&b->qlock);
    while (b->q_head) {
        queued *n = b->q_head->next;
        free_queued(b->q_head);
        b->q_head = n;
    }
    pthread_mutex_unlock(&b->qlock);
    pthread_mutex_destroy(&b->qlock);
    mdg_loop_destroy(&b->loop);
    while (b->timers) {
        struct broker_timer *next = b->timers->next;
        free(b->timers);
        b->timers = next;
    }
    mdg_map_destroy(&b->peers);
    mdg_map_destroy(&b->lpeers);
    mdg_map_destroy(&b->sessions);
    mdg_map_destroy(&b->nodes);
    mdg_map_destroy(&b->by_fd);
    mdg_map_destroy(&b->fwds);
    mdg_map_destroy(&b->owed_ack);
    mdg_map_destroy(&b->backlog);
    mdg_map_destroy(&b->holding);
    mdg_map_destroy(&b->shares);
    mdg_map_destroy(&b->ready);
    mdg_map_destroy(&b->allow);
    mdg_keys_destroy(&b->keys);
    free(b);
    *pb = NULL;
}
