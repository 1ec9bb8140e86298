/* broker_native.c - the native listener: its CURVE ROUTER (clients
 * admitted by broker_auth.c's ZAP handler); a message read from it, its
 * sender known by the User-Id our ZAP reply gave its link, its header
 * decoded and checked and the rest made an mdg_inbound; then a hello (a
 * session opened or resumed), a goodbye, or a message for its session's
 * channel (broker_receive). What goes back out is encoded by mdg_wire_send
 * (native_transport). */
#include "broker_internal.h"

#include <string.h>


/* One message out, encoded by the wire layer on the CURVE ROUTER. */
static int native_send(mdg_broker *b, peer *p, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    (void)b;
    return mdg_wire_send(p->listener->sock, p->rid, p->rid_len, h, params, bulk);
}

static int native_send_frame(mdg_broker *b, peer *p, zmq_msg_t *head)
{
    (void)b;
    return mdg_wire_send_head(p->listener->sock, p->rid, p->rid_len, head);
}

/* Native peers number and acknowledge their messages and know mdg.flow. */
static const broker_transport native_transport = {
    .send = native_send,
    .send_frame = native_send_frame,
    .acks = true,
    .flow = true,
};

/* A notice to a link without a session (a refusal, "no session"): straight
 * to its routing id, unnumbered. Params and bulk are taken, even on
 * MDG_EAGAIN (a notice is not queued). */
int broker_native_notice(mdg_broker *b, const uint8_t *rid, size_t rid_len, const mdg_header *h,
                         zmq_msg_t *params, zmq_msg_t *bulk)
{
    int rc = mdg_wire_send(broker_listener_of(b, &broker_native_listener)->sock, rid, rid_len, h, params, bulk);
    zmq_msg_close(params);
    if (bulk && rc == MDG_EAGAIN)
        zmq_msg_close(bulk);
    return rc;
}

/* A hello: a new session, or the resume of one. */
static void on_hello(mdg_broker *b, broker_listener *l, peer *p, const uint8_t *rid, size_t rid_len,
                     const char *uid, int fd, mdg_inbound *in)
{
    mdg_params *hp = NULL;
    const uint8_t *sid = NULL;
    size_t sid_len = 0;
    int64_t ack = 0, hb = 0;
    if (mdg_inbound_take_params(in, &hp) == 0) {
        mdg_params_get_bytes(hp, "session", &sid, &sid_len);
        if (mdg_params_get_int(hp, "ack", &ack) != 0 || ack < 0)
            ack = 0;
        mdg_params_get_int(hp, "heartbeat", &hb);
    }
    /* A client that keeps quiet for 3 of its heartbeats (and a second) is
     * taken as gone, as its own side takes a silent broker. */
    if (hb < 100 || hb > 600000)
        hb = 2000;
    hello_terms terms = {.silence_ms = (int)(3 * hb + 1000), .max_batch = mdg_chan_said_batch(hp)};
    if (p && !(sid && sid_len == SESSION_ID_BYTES && memcmp(sid, p->session_id, SESSION_ID_BYTES) == 0))
        broker_close_session(b, p, "replaced by a new hello");
    if (!sid || !broker_resume_session(b, l, rid, rid_len, uid, fd, sid, sid_len, (uint64_t)ack, &terms))
        broker_open_session(b, l, rid, rid_len, uid, fd, &terms, NULL);
    mdg_params_destroy(&hp);
}

/* The session a routing id leads to, for a message from key uid. Routing
 * ids can be chosen by clients: one that now belongs to another key must
 * neither reach nor close the old session, so it is unmapped (and the
 * session detached when that was its live link). */
static peer *peer_of(mdg_broker *b, broker_listener *l, const uint8_t *rid, size_t rid_len, const char *uid)
{
    peer *p = mdg_map_get(l->rids, rid, rid_len);
    if (!p || strcmp(p->user_id, uid) == 0)
        return p;
    mdg_map_take(l->rids, rid, rid_len);
    if (p->attached && p->rid_len == rid_len && memcmp(p->rid, rid, rid_len) == 0)
        broker_detach(b, p, "routing id taken by another key");
    return NULL;
}

#define WHO_LEN 12 /* characters of the User-Id (after its prefix) that name a sender in logs */

/* Who sent a message: its link and its key. */
typedef struct sender {
    const uint8_t *rid;
    size_t rid_len;
    const char *uid; /* the User-Id our ZAP reply gave the link */
    char who[WHO_LEN + 1]; /* the key's start, for log lines */
    const zmq_msg_t *header; /* its head frame: the link's socket fd, when needed */
    int64_t at;              /* when it was read (one clock read for the frame's messages) */
} sender;

/* The socket of the sender's link (a metadata lookup: not for every message). */
static int link_fd(const sender *s)
{
    return zmq_msg_get(s->header, ZMQ_SRCFD);
}

/* A decoded message: a hello or a goodbye, or one for its session's
 * channel (p: the session its routing id leads to, or NULL). */
static void on_inbound(mdg_broker *b, broker_listener *l, peer *p, const sender *s, mdg_inbound *in)
{
    const mdg_header *h = &in->h;
    const char *who = s->who;
    switch (h->kind) {
    case MDG_K_HELLO: {
        /* A new link's socket may reuse the fd of one that just dropped:
         * take the drop events first (libzmq emits them before the old fd
         * is closed, so they are queued before this hello could arrive). */
        broker_on_monitor(b->loop, b, 0);
        p = peer_of(b, l, s->rid, s->rid_len, s->uid);
        /* The key was admitted when its connection was made; it may have
         * been revoked since (the connection outlives the revocation). */
        uint8_t pk[MDG_KEY_BYTES];
        int role = mdg_pk_from_b64(pk, s->uid + 1) == 0 ? broker_role_of(b, pk) : MDG_ROLE_NONE;
        if (role != (s->uid[0] == 'N' ? MDG_ROLE_NODE : MDG_ROLE_USER)) {
            mdg_log(MDG_LOG_WARN, "hello from %s refused: key no longer admitted in that role", who);
            mdg_params *why = mdg_params_new();
            if (why)
                mdg_params_set_str(why, "reason", "key not admitted (revoked?)");
            broker_send_to(b, s->rid, s->rid_len, NULL, MDG_K_BYE, 0, 0, "", why, NULL, 0);
            return;
        }
        on_hello(b, l, p, s->rid, s->rid_len, s->uid, link_fd(s), in);
        return;
    }
    case MDG_K_BYE:
        if (p) {
            /* its ack first: what it has is not "undelivered" (even what a
             * detach marked to send again: the ack says it arrived) */
            if (h->ack)
                mdg_chan_resume(&p->chan, h->ack);
            broker_close_session(b, p, "client said goodbye");
        }
        return;
    default:
        break;
    }
    if (!p) {
        broker_on_monitor(b->loop, b, 0); /* drops first: a new link may reuse a closed fd */
        if (broker_stray_first(l, link_fd(s)))
            mdg_log(MDG_LOG_WARN, "%s '%s' from %s without a session (said once per link; each one is answered)",
                    mdg_kind_name(h->kind), h->command, who);
        /* "resync": the client's link is fine but its session is gone (e.g.
         * closed after a long silence): it should say hello again */
        mdg_params *e = mdg_params_new();
        if (e) {
            mdg_params_set_str(e, "error", "no session: send hello first");
            mdg_params_set_str(e, "command", h->command);
            mdg_params_set_bool(e, "resync", true);
            broker_send_to(b, s->rid, s->rid_len, NULL, MDG_K_ERROR, 0, 0, "", e, NULL, 0);
        }
        return;
    }
    p->last_rx = s->at;
    if (!p->attached && p->silent && s->rid_len == p->rid_len && memcmp(s->rid, p->rid, s->rid_len) == 0) {
        /* it was only quiet: the link never dropped */
        mdg_log(MDG_LOG_INFO, "%s %s speaks again on its link", p->role == MDG_ROLE_NODE ? "node" : "user", who);
        p->attached = true;
        p->silent = false;
        mdg_map_put(b->by_fd, &p->fd, sizeof p->fd, p);
        broker_flush_peer(b, p);
    }
    /* acknowledgements count at once, even for a message that must wait:
     * they are what frees the queues it waits for */
    if (h->ack)
        broker_trim_kept(b, p, h->ack);
    if (h->kind == MDG_K_ACK)
        return;
    if (mdg_kind_sequenced(h->kind) && h->seq == 0) {
        /* numbered kinds count from 1: one without its number would skip
         * duplicate detection and run again each time it came. Not
         * processed, not counted; a command's caller is answered, a reply
         * or error gets a notice (its corr names a call of ours) */
        char why[160];
        snprintf(why, sizeof why, "unnumbered %s refused: commands, replies and errors are numbered from 1 "
                                  "(seq 0 is only for hello, welcome, bye and ack)", mdg_kind_name(h->kind));
        mdg_log(MDG_LOG_WARN, "'%s' from %s %s: %s", h->command, p->role == MDG_ROLE_NODE ? "node" : "user", who, why);
        broker_send_error(b, p->rid, p->rid_len, p, h->kind == MDG_K_CMD ? h->corr : 0, h->command, why);
        return;
    }
    broker_receive(b, p, in, who);
}

/* A client of native protocol version 1 (an older libmessidge) cannot
 * read this version's frames: it is told why in its own framing, a
 * goodbye [header, params] that ends its connection with the reason. */
static void goodbye_version_1(broker_listener *l, const uint8_t *rid, size_t rid_len)
{
    static const uint8_t bye_v1[] = {0x87, 1, MDG_K_BYE, 0, 0, 0, 0x60, 0}; /* [1, BYE, 0, 0, 0, "", 0] */
    zmq_msg_t pm;
    mdg_params *p = mdg_params_new();
    if (!p || mdg_params_set_str(p, "reason", "this broker speaks native protocol version 2: upgrade libmessidge") ||
        mdg_params_encode(p, &pm) != 0) {
        mdg_params_destroy(&p);
        return;
    }
    mdg_params_destroy(&p);
    if (zmq_send(l->sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(l->sock, bye_v1, sizeof bye_v1, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_msg_send(&pm, l->sock, ZMQ_DONTWAIT) < 0)
        zmq_msg_close(&pm);
}

/* One message off the socket: [routing id, head, bulk], the head frame
 * holding one or more messages (a bulk frame only after one). Its
 * sender and header are checked, then it is decoded into an mdg_inbound. */
static void handle_message(mdg_broker *b, broker_listener *l, mdg_frames *f)
{
    if (f->n < 2) {
        mdg_log(MDG_LOG_WARN, "message without a header dropped");
        return;
    }
    sender s = {.rid = zmq_msg_data(&f->part[0]), .rid_len = zmq_msg_size(&f->part[0]),
                .uid = zmq_msg_gets(&f->part[1], "User-Id"), .header = &f->part[1], .at = mdg_now_ms()};
    if (!s.uid || strlen(s.uid) != USER_ID_LEN) {
        mdg_log(MDG_LOG_ERROR, "message without an authenticated key dropped");
        return;
    }
    /* for log lines: a copy, not snprintf, which cost 4% of the broker
     * thread's time per message */
    memcpy(s.who, s.uid + 1, WHO_LEN);
    s.who[WHO_LEN] = '\0';

    peer *p = peer_of(b, l, s.rid, s.rid_len, s.uid);

    mdg_inbound in;
    mdg_inbound_cursor at = {0};
    int rc;
    while ((rc = mdg_inbound_next(&in, f, 1, &at)) == 0) { /* each message of the head frame, in order */
        on_inbound(b, l, p, &s, &in);
        mdg_inbound_close(&in);
        p = peer_of(b, l, s.rid, s.rid_len, s.uid); /* a hello or a goodbye may have changed it */
    }
    if (rc < 0) {
        if (!in.h.kind) { /* the header did not decode */
            mdg_log(MDG_LOG_WARN, "from %s: %s", s.who, mdg_last_error());
            if (mdg_wire_peek_version(zmq_msg_data(&f->part[1]), zmq_msg_size(&f->part[1])) == 1)
                goodbye_version_1(l, s.rid, s.rid_len);
            else
                broker_send_error(b, s.rid, s.rid_len, p, 0, "", mdg_last_error());
        } else {
            mdg_log(MDG_LOG_WARN, "'%s' from %s with too many frames dropped", in.h.command, s.who);
            broker_send_error(b, s.rid, s.rid_len, p, in.h.corr, in.h.command, mdg_last_error());
        }
        mdg_inbound_close(&in);
    }
}

/* Read a batch from a listener's socket. Connection events first: a
 * socket fd closes before it can be reused by a new connection whose
 * messages follow. */
void broker_drain(broker_listener *l, void (*handle)(mdg_broker *, broker_listener *, mdg_frames *))
{
    mdg_broker *b = l->broker;
    mdg_frames f;
    /* Connection events are not read first here (a receive on each
     * listener's monitor socket, a system call each, before every turn's
     * messages): only a hello and a message without a session use the
     * link's fd, and they read them first themselves. */
    for (int i = 0; i < MDG_LOOP_BATCH && mdg_frames_recv(l->sock, &f) == 0; i++) {
        handle(b, l, &f);
        mdg_frames_close(&f);
    }
    broker_release_ready(b);
}

static int on_router(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    broker_drain(arg, handle_message);
    return 0;
}

/* ------------------------------------------------------------ the listener */

static int native_configure(broker_listener *l, const mdg_broker_options *opts)
{
    l->on = true;
    l->port = opts ? opts->port : MDG_DEFAULT_PORT;
    if (l->port < 0 || l->port > 65535)
        return mdg_fail(MDG_EINVAL, "port %d out of range", l->port);
    return 0;
}

/* CURVE, its clients admitted by the ZAP handler (broker_auth.c). */
static int native_bind(mdg_broker *b, broker_listener *l)
{
    int one = 1, rc;
    char ep[160];
    if ((rc = broker_new_router(b, &l->sock, b->max_message + MDG_CURVE_OVERHEAD)) ||
        (rc = broker_setsock(l->sock, ZMQ_CURVE_SERVER, &one, sizeof one, "CURVE_SERVER")) ||
        (rc = broker_setsock(l->sock, ZMQ_CURVE_SECRETKEY, mdg_keys_secret(b->keys), MDG_KEY_BYTES, "CURVE_SECRETKEY")) ||
        (rc = broker_setsock(l->sock, ZMQ_ZAP_DOMAIN, "messidge", 8, "ZAP_DOMAIN")) ||
        (rc = broker_listen_on(b, l, on_router, ep)))
        return rc;
    mdg_log(MDG_LOG_INFO, "broker listening on %s (port %d)", ep, l->bound_port);
    return 0;
}

const broker_listener_ops broker_native_listener = {
    .name = "native",
    .configure = native_configure,
    .bind = native_bind,
    .transport = &native_transport,
};

int mdg_broker_port(const mdg_broker *b)
{
    return b ? broker_listener_of(b, &broker_native_listener)->bound_port : 0;
}
