/* broker.c - the broker: one ROUTER socket with CURVE, a ZAP handler that
 * decides who may connect, sessions keyed by routing id, and validation of
 * every command against the application's table before its handler runs.
 *
 * Everything here runs on the broker's loop thread (DESIGN.md: one thread
 * owns all state; libzmq's I/O threads do the encryption). */
#include "internal.h"
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
#include <zmq.h>

#define SESSION_ID_BYTES 16
#define USER_ID_LEN (1 + MDG_KEY_B64_LEN) /* role letter + base64 pk */
#define RECV_BATCH 256                     /* messages handled per wake-up */
#define BROKER_HWM 10000
#define BROKER_MAX_MSG (256LL << 20)       /* ZMQ_MAXMSGSIZE: one frame */
#define BROKER_LINGER_MS 1000              /* bounded flush at shutdown */

typedef struct peer {
    uint8_t rid[255];
    uint8_t rid_len;
    char user_id[USER_ID_LEN + 1]; /* as set by our ZAP reply */
    uint8_t pk[MDG_KEY_BYTES];
    int role;
    uint8_t session_id[SESSION_ID_BYTES];
    void *data;      /* the application's per-session data */
    uint64_t tx_seq; /* last seq we sent */
    uint64_t rx_seq; /* last seq we received */
    uint64_t acked;  /* last of ours the peer has acknowledged */
} peer;

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
    mdg_map *peers; /* routing id -> peer */
    pthread_t thread;
    bool thread_started;
};

static void pk_short(const uint8_t pk[MDG_KEY_BYTES], char out[MDG_KEY_B64_LEN + 1])
{
    mdg_pk_to_b64(pk, out);
    out[12] = '\0'; /* enough to tell keys apart in a log */
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
    if (b->port < 0 || b->port > 65535) {
        free(b);
        return mdg_fail(MDG_EINVAL, "port %d out of range", b->port);
    }
    if (mdg_keys_from_raw(&b->keys, mdg_keys_public(keys), mdg_keys_secret(keys)) != 0 ||
        !(b->allow = mdg_map_new()) || !(b->peers = mdg_map_new()) || !(b->loop = mdg_loop_new()) ||
        !(b->ctx = zmq_ctx_new())) {
        mdg_broker_destroy(&b);
        return mdg_fail(MDG_ENOMEM, "cannot allocate the broker");
    }
    *out = b;
    return 0;
}

int mdg_broker_set_commands(mdg_broker *b, const mdg_cmd *table, void *arg)
{
    if (!b)
        return MDG_EINVAL;
    if (b->router)
        return mdg_fail(MDG_ESTATE, "commands must be set before the broker starts");
    b->cmds = table;
    b->cmd_arg = arg;
    return 0;
}

int mdg_broker_set_hooks(mdg_broker *b, const mdg_broker_hooks *hooks, void *arg)
{
    if (!b || !hooks)
        return MDG_EINVAL;
    if (b->router)
        return mdg_fail(MDG_ESTATE, "hooks must be set before the broker starts");
    b->hooks = *hooks;
    b->hook_arg = arg;
    return 0;
}

int mdg_broker_set_auth(mdg_broker *b, mdg_auth_fn fn, void *arg)
{
    if (!b)
        return MDG_EINVAL;
    if (b->router)
        return mdg_fail(MDG_ESTATE, "authentication must be set before the broker starts");
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
    if (zmq_msg_size(&part[5]) != 5 || memcmp(zmq_msg_data(&part[5]), "CURVE", 5) != 0 ||
        zmq_msg_size(&part[6]) != MDG_KEY_BYTES) {
        why = "not a CURVE client";
    } else {
        const uint8_t *pk = zmq_msg_data(&part[6]);
        mdg_pk_to_b64(pk, b64);
        int role = role_of(b, pk);
        if (role == MDG_ROLE_USER || role == MDG_ROLE_NODE)
            snprintf(user_id, sizeof user_id, "%c%s", role == MDG_ROLE_NODE ? 'N' : 'U', b64);
        else
            why = "key not known";
    }
    if (why) {
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

/* Send one message to a peer, sequenced when its kind is. params taken;
 * bulk copied. A peer that is gone closes its session. */
static void close_session(mdg_broker *b, peer *p, const char *why);

static int send_to(mdg_broker *b, const uint8_t *rid, size_t rid_len, peer *p, int kind,
                   uint64_t corr, uint32_t flags, const char *command, mdg_params *params,
                   const void *bulk, size_t bulk_len)
{
    mdg_header h = {.kind = (uint8_t)kind, .corr = corr, .flags = flags};
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
    if (p) {
        h.seq = mdg_kind_sequenced(kind) ? p->tx_seq + 1 : 0;
        h.ack = p->rx_seq;
    }
    rc = mdg_wire_send(b->router, rid, rid_len, &h, &pm, bulk_len ? &bm : NULL);
    if (rc == MDG_EAGAIN) {
        /* The peer's queue is full (BROKER_HWM messages unread). The
         * reliability layer will queue instead; until then, say so loudly. */
        zmq_msg_close(&pm);
        if (bulk_len)
            zmq_msg_close(&bm);
        mdg_log(MDG_LOG_ERROR, "%s '%s' to a peer not reading: its queue is full, message refused",
                mdg_kind_name(kind), command ? command : "");
        return mdg_fail(MDG_EAGAIN, "peer's queue is full");
    }
    if (rc == 0 && p && h.seq)
        p->tx_seq = h.seq;
    if (rc == MDG_ECLOSED && p)
        close_session(b, p, "connection gone");
    return rc;
}

/* An error for the sender of a message: a reply when it waits for one
 * (corr), else a notice its error hook sees. Also logged here. */
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

static int broker_send_reply(mdg_msg *m, int kind, uint32_t flags, mdg_params *results,
                             const void *bulk, size_t bulk_len)
{
    mdg_broker *b = m->owner;
    peer *p = mdg_map_get(b->peers, m->rid, m->rid_len);
    if (!p) {
        mdg_params_destroy(&results);
        return mdg_fail(MDG_ECLOSED, "the session that sent '%s' has closed", m->h.command);
    }
    if (kind == MDG_K_ERROR) {
        char who[MDG_KEY_B64_LEN + 1];
        const char *text = "";
        pk_short(p->pk, who);
        mdg_params_get_str(results, "error", &text);
        mdg_log(MDG_LOG_INFO, "'%s' from %s failed: %s", m->h.command, who, text);
    }
    return send_to(b, m->rid, m->rid_len, p, kind, m->h.corr, flags, "", results, bulk, bulk_len);
}

/* --------------------------------------------------------------- sessions */

static void close_session(mdg_broker *b, peer *p, const char *why)
{
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    mdg_log(MDG_LOG_INFO, "session of %s closed: %s", who, why);
    mdg_map_take(b->peers, p->rid, p->rid_len);
    if (p->role == MDG_ROLE_USER && b->hooks.session_closed)
        b->hooks.session_closed(b, p->pk, p->data, b->hook_arg);
    free(p);
}

static void open_session(mdg_broker *b, const uint8_t *rid, size_t rid_len, const char *user_id)
{
    peer *p = calloc(1, sizeof *p);
    if (!p || mdg_pk_from_b64(p->pk, user_id + 1) != 0 ||
        mdg_map_put(b->peers, rid, rid_len, p) != 0) {
        mdg_log(MDG_LOG_ERROR, "cannot open a session: out of memory");
        free(p);
        return;
    }
    memcpy(p->rid, rid, rid_len);
    p->rid_len = (uint8_t)rid_len;
    snprintf(p->user_id, sizeof p->user_id, "%s", user_id);
    p->role = user_id[0] == 'N' ? MDG_ROLE_NODE : MDG_ROLE_USER;
    randombytes_buf(p->session_id, sizeof p->session_id);
    if (p->role == MDG_ROLE_USER && b->hooks.session_new)
        p->data = b->hooks.session_new(b, p->pk, p->session_id, sizeof p->session_id, b->hook_arg);

    mdg_params *w = mdg_params_new();
    if (w) {
        mdg_params_set_bytes(w, "session", p->session_id, sizeof p->session_id);
        mdg_params_set_str(w, "role", p->role == MDG_ROLE_NODE ? "node" : "user");
        mdg_params_set_bool(w, "resumed", false);
    }
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    mdg_log(MDG_LOG_INFO, "new %s session for %s", p->role == MDG_ROLE_NODE ? "node" : "user", who);
    send_to(b, rid, rid_len, p, MDG_K_WELCOME, 0, 0, "", w, NULL, 0);
}

/* -------------------------------------------------------------- dispatch */

/* Params the broker vouches for replace whatever the sender put there. */
static int stamp_identity(mdg_msg *m, peer *p)
{
    if (p->role == MDG_ROLE_NODE) {
        mdg_params_remove(m->params, "session");
        return mdg_params_set_bytes(m->params, "node", p->pk, MDG_KEY_BYTES);
    }
    int rc = mdg_params_set_bytes(m->params, "user", p->pk, MDG_KEY_BYTES);
    return rc ? rc : mdg_params_set_bytes(m->params, "session", p->session_id, SESSION_ID_BYTES);
}

static void dispatch_command(mdg_broker *b, peer *p, const mdg_header *h, mdg_frames *f)
{
    char who[MDG_KEY_B64_LEN + 1], why[512];
    mdg_msg *m = NULL;
    pk_short(p->pk, who);
    int rc = mdg_msg_from_frames(&m, h, f, 2);
    if (rc) {
        snprintf(why, sizeof why, "bad message: %s", mdg_last_error());
        mdg_log(MDG_LOG_WARN, "'%s' from %s refused: %s", h->command, who, why);
        send_error(b, p->rid, p->rid_len, p, h->corr, h->command, why);
        return;
    }
    m->send_reply = broker_send_reply;
    m->owner = b;
    m->session_data = p->data;
    m->rid_len = p->rid_len;
    memcpy(m->rid, p->rid, p->rid_len);

    const mdg_cmd *c = mdg_cmd_check(b->cmds, m, p->role == MDG_ROLE_NODE, why, sizeof why);
    if (!c) {
        mdg_log(MDG_LOG_WARN, "'%s' from %s refused: %s", h->command, who, why);
        send_error(b, p->rid, p->rid_len, p, h->corr, h->command, why);
    } else if (stamp_identity(m, p) != 0) {
        mdg_msg_fail(m, "broker out of memory");
    } else {
        c->handler(m, b->cmd_arg);
    }
    mdg_msg_destroy(&m);
}

/* Sequence check: true when the message is the next one expected. */
static bool in_sequence(peer *p, const mdg_header *h, const char *who)
{
    if (!mdg_kind_sequenced(h->kind))
        return true;
    if (h->seq <= p->rx_seq) {
        mdg_log(MDG_LOG_DEBUG, "duplicate seq %llu from %s dropped", (unsigned long long)h->seq, who);
        return false;
    }
    if (h->seq != p->rx_seq + 1)
        mdg_log(MDG_LOG_ERROR, "seq gap from %s: expected %llu, got %llu", who,
                (unsigned long long)p->rx_seq + 1, (unsigned long long)h->seq);
    p->rx_seq = h->seq;
    if (h->ack > p->acked && h->ack <= p->tx_seq)
        p->acked = h->ack;
    return true;
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

    peer *p = mdg_map_get(b->peers, rid, rid_len);
    if (p && strcmp(p->user_id, uid) != 0) {
        /* The routing id now belongs to another key (ids can be chosen by
         * clients): the old session must not be reachable by the new one. */
        close_session(b, p, "routing id taken by another key");
        p = NULL;
    }

    mdg_header h;
    if (mdg_wire_decode_header(zmq_msg_data(&f->part[1]), zmq_msg_size(&f->part[1]), &h) != 0) {
        mdg_log(MDG_LOG_WARN, "from %s: %s", who, mdg_last_error());
        send_error(b, rid, rid_len, p, 0, "", mdg_last_error());
        return;
    }
    switch (h.kind) {
    case MDG_K_HELLO:
        if (p)
            close_session(b, p, "replaced by a new hello");
        open_session(b, rid, rid_len, uid);
        return;
    case MDG_K_BYE:
        if (p)
            close_session(b, p, "client said goodbye");
        return;
    case MDG_K_ACK:
        if (p && h.ack > p->acked && h.ack <= p->tx_seq)
            p->acked = h.ack;
        return;
    default:
        break;
    }
    if (!p) {
        mdg_log(MDG_LOG_WARN, "%s '%s' from %s without a session", mdg_kind_name(h.kind), h.command, who);
        send_error(b, rid, rid_len, NULL, h.corr, h.command, "no session: send hello first");
        return;
    }
    if (!in_sequence(p, &h, who))
        return;
    if (h.kind == MDG_K_CMD) {
        dispatch_command(b, p, &h, f);
    } else {
        /* Replies from clients answer commands the broker sent; routing
         * node replies is the nodes layer's work. */
        mdg_log(MDG_LOG_WARN, "unexpected %s from %s dropped", mdg_kind_name(h.kind), who);
    }
}

static int on_router(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    mdg_frames f;
    for (int i = 0; i < RECV_BATCH && mdg_frames_recv(b->router, &f) == 0; i++) {
        if (f.dropped)
            mdg_log(MDG_LOG_WARN, "message with %d extra frames dropped", f.dropped);
        else
            handle_message(b, &f);
        mdg_frames_close(&f);
    }
    return 0;
}

/* ------------------------------------------------------------ run / stop */

static int setsock(void *s, int opt, const void *v, size_t len, const char *name)
{
    if (zmq_setsockopt(s, opt, v, len) != 0)
        return mdg_fail(MDG_ESYS, "cannot set %s: %s", name, zmq_strerror(errno));
    return 0;
}

static int bind_sockets(mdg_broker *b)
{
    int one = 1, hwm = BROKER_HWM, linger = BROKER_LINGER_MS;
    int64_t maxmsg = BROKER_MAX_MSG;
    int rc;
    if (b->router)
        return 0;
    /* The ZAP handler must be bound before the ROUTER accepts anyone. */
    b->zap = zmq_socket(b->ctx, ZMQ_REP);
    if (!b->zap || zmq_bind(b->zap, "inproc://zeromq.zap.01") != 0)
        return mdg_fail(MDG_ESYS, "cannot bind the ZAP handler: %s", zmq_strerror(errno));
    b->router = zmq_socket(b->ctx, ZMQ_ROUTER);
    if (!b->router)
        return mdg_fail(MDG_ESYS, "cannot make the ROUTER: %s", zmq_strerror(errno));
    if ((rc = setsock(b->router, ZMQ_CURVE_SERVER, &one, sizeof one, "CURVE_SERVER")) ||
        (rc = setsock(b->router, ZMQ_CURVE_SECRETKEY, mdg_keys_secret(b->keys), MDG_KEY_BYTES, "CURVE_SECRETKEY")) ||
        (rc = setsock(b->router, ZMQ_ZAP_DOMAIN, "messidge", 8, "ZAP_DOMAIN")) ||
        (rc = setsock(b->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one, "ROUTER_MANDATORY")) ||
        (rc = setsock(b->router, ZMQ_SNDHWM, &hwm, sizeof hwm, "SNDHWM")) ||
        (rc = setsock(b->router, ZMQ_RCVHWM, &hwm, sizeof hwm, "RCVHWM")) ||
        (rc = setsock(b->router, ZMQ_LINGER, &linger, sizeof linger, "LINGER")) ||
        (rc = setsock(b->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg, "MAXMSGSIZE")))
        return rc;
    char ep[160], last[256];
    size_t len = sizeof last;
    if (b->port)
        snprintf(ep, sizeof ep, "tcp://%s:%d", b->bind_address, b->port);
    else
        snprintf(ep, sizeof ep, "tcp://%s:*", b->bind_address);
    if (zmq_bind(b->router, ep) != 0)
        return mdg_fail(MDG_ESYS, "cannot bind %s: %s", ep, zmq_strerror(errno));
    if (zmq_getsockopt(b->router, ZMQ_LAST_ENDPOINT, last, &len) == 0) {
        const char *colon = strrchr(last, ':');
        b->bound_port = colon ? atoi(colon + 1) : b->port;
    }
    if ((rc = mdg_loop_watch(b->loop, b->zap, -1, ZMQ_POLLIN, on_zap, b)) ||
        (rc = mdg_loop_watch(b->loop, b->router, -1, ZMQ_POLLIN, on_router, b)))
        return rc;
    mdg_log(MDG_LOG_INFO, "broker listening on %s (port %d)", ep, b->bound_port);
    return 0;
}

static void close_one(void *value, void *arg)
{
    peer *p = value;
    mdg_broker *b = arg;
    if (p->role == MDG_ROLE_USER && b->hooks.session_closed)
        b->hooks.session_closed(b, p->pk, p->data, b->hook_arg);
    free(p);
}

/* The loop has ended: every session is closed (hooks fired), once. */
static void close_all_sessions(mdg_broker *b)
{
    mdg_map_each(b->peers, close_one, b);
    while (mdg_map_pop(b->peers))
        ;
}

int mdg_broker_run(mdg_broker *b)
{
    if (!b)
        return MDG_EINVAL;
    int rc = bind_sockets(b);
    if (rc)
        return rc;
    rc = mdg_loop_run(b->loop);
    close_all_sessions(b);
    return rc;
}

static void *broker_thread(void *arg)
{
    mdg_broker *b = arg;
    if (mdg_loop_run(b->loop) != 0)
        mdg_log(MDG_LOG_ERROR, "broker loop failed: %s", mdg_last_error());
    close_all_sessions(b);
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
    if (b->router)
        zmq_close(b->router);
    if (b->zap)
        zmq_close(b->zap);
    if (b->ctx)
        zmq_ctx_term(b->ctx);
    mdg_loop_destroy(&b->loop);
    mdg_map_destroy(&b->peers);
    mdg_map_destroy(&b->allow);
    mdg_keys_destroy(&b->keys);
    free(b);
    *pb = NULL;
}
