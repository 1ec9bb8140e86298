/* broker_legacy.c - the Messidge 1.x listener (off by default): its
 * socket, the 1.x hello, the uuid table of each 1.x session, and the
 * translation of 1.x frames into the mdg_inbound the rest of the broker
 * reads and of native messages out into 1.x frames. Nothing else in the
 * broker reads or writes a 1.x frame. */
#include "broker_internal.h"
#include "legacy.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define LEGACY_HEARTBEAT_MS 2000           /* 1.x peers do not beat: libzmq pings them */
#define LEGACY_HEADROOM (64 << 10)         /* a little over max_message is refused, not dropped */
#define LEGACY_HELLO_MAX 1024              /* a 1.x link's first frame: its hello is ~150 bytes */

/* What a 1.x peer needs on top: its session key and, since 1.x names
 * calls by uuid and we by number, the uuids of calls it made to us. */
typedef struct legacy_link {
    bool sealed; /* a user link: params and bulk are sealed with key */
    /* a sealed frame of this session opened: its peer holds the user's
     * secret key (a 1.x hello proves nothing; a session that never proves
     * it gets no grace period when its link drops) */
    bool proven;
    uint8_t key[MDG_LEGACY_KEY];
    mdg_legacy_calls calls; /* the uuids of calls it made to us, by our corr */
    bool eviction_logged;   /* said once per session, not once per call */
} legacy_link;

#define CALL_PREFIX "m" /* calls to a 1.x node are named "m<forward id>" */

/* Peers on the legacy socket speak 1.x (legacy.h, docs/compatibility.md).
 * Each 1.x frame becomes the mdg_inbound the rest of the broker reads,
 * unnumbered (1.x has no sequence numbers), so the command
 * table, hooks, forwarding and reply routing are the same code for both
 * protocols. Where 1.x was gullible we refuse, with a log line: a resume
 * must come from the session's own key, only the node a call went to may
 * answer it, users never answer, tables are bounded, and a frame that is
 * malformed or does not open never reaches a handler. */

static legacy_link *link_of(const peer *p)
{
    return p->transport_state;
}

/* The key a peer's frames are sealed with; NULL on a plaintext (node) link. */
static const uint8_t *seal_key(const peer *p)
{
    const legacy_link *l = link_of(p);
    return l->sealed ? l->key : NULL;
}

/* The transport's free_state. */
static void legacy_link_free(void *state)
{
    legacy_link *l = state;
    mdg_legacy_calls_free(&l->calls);
    free(l);
}

/* A user's 1.x session whose peer has never opened a sealed frame is not
 * kept for a resume: anyone may open one with a public key alone. */
static bool legacy_resumable(const peer *p)
{
    const legacy_link *l = link_of(p);
    return !(l->sealed && !l->proven);
}

static legacy_link *legacy_link_new(size_t limit)
{
    legacy_link *l = calloc(1, sizeof *l);
    if (l && mdg_legacy_calls_init(&l->calls, limit) != 0) {
        mdg_legacy_calls_free(&l->calls);
        free(l);
        return NULL;
    }
    return l;
}

/* One 1.x frame to a routing id of the listener: 0, MDG_EAGAIN or an
 * error. out is closed. */
static int legacy_emit(broker_listener *l, const uint8_t *rid, size_t rid_len, zmq_msg_t *out)
{
    int rc = 0;
    if (zmq_send(l->sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_msg_send(out, l->sock, ZMQ_DONTWAIT) < 0)
        rc = errno == EAGAIN         ? MDG_EAGAIN
             : errno == EHOSTUNREACH ? mdg_fail(MDG_ECLOSED, "1.x peer is not connected")
                                     : mdg_fail(MDG_ESYS, "send: %s", zmq_strerror(errno));
    zmq_msg_close(out);
    return rc;
}

/* An exception reply straight to a frame's sender, for refusals made
 * before the frame becomes a message (only when it asked for a reply). */
static void legacy_refuse_uuid(const peer *p, const uint8_t *uuid, size_t uuid_len, const char *text)
{
    if (!uuid_len)
        return;
    mdg_params *e = mdg_legacy_exception(text);
    zmq_msg_t out;
    if (e && mdg_legacy_build(&out, seal_key(p), NULL, 0, "", 0, uuid, uuid_len, e, NULL, 0) == 0)
        legacy_emit(p->listener, p->rid, p->rid_len, &out);
    mdg_params_destroy(&e);
}

static void legacy_refuse(const peer *p, const mdg_legacy_frame *lf, const char *text)
{
    legacy_refuse_uuid(p, lf->uuid, lf->uuid_len, text);
}

/* 1.x's own refusal of a hello, [b'', b'', uuid, {}, b''], which 1.x
 * clients read as "Authentication failed.". */
static void legacy_refuse_hello(broker_listener *l, const uint8_t *rid, size_t rid_len, const mdg_legacy_frame *lf)
{
    zmq_msg_t out;
    if (mdg_legacy_build(&out, NULL, NULL, 0, "", 0, lf->uuid, lf->uuid_len, NULL, NULL, 0) == 0)
        legacy_emit(l, rid, rid_len, &out);
}

/* A native message out as a 1.x frame (the transport's send). Calls to a
 * node are named "m<forward id>"; replies carry the uuid of the call they
 * answer, and never the bulk in the command field (1.x leaked it there). */
static int legacy_send(mdg_broker *b, peer *p, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    legacy_link *l = link_of(p);
    mdg_legacy_call *u = NULL;
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
            uuid_len = mdg_legacy_call_uuid(num, sizeof num, CALL_PREFIX, h->corr);
            uuid = num;
        } else if (h->kind != MDG_K_CMD) {
            if (!(u = mdg_legacy_calls_get(&l->calls, h->corr))) {
                mdg_log(MDG_LOG_INFO, "%s for a 1.x peer that waits for no reply: logged only", mdg_kind_name(h->kind));
                goto consumed;
            }
            uuid = u->uuid;
            uuid_len = u->len;
        }
        rc = mdg_legacy_params_out(h->kind, zmq_msg_data(params), zmq_msg_size(params), &pp);
        if (rc == 0)
            rc = mdg_legacy_build(&out, seal_key(p), NULL, 0, h->kind == MDG_K_CMD ? h->command : "",
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
            legacy_refuse_uuid(p, u->uuid, u->len, text);
            if (!(h->flags & MDG_F_MORE))
                mdg_legacy_calls_done(&l->calls, h->corr);
        }
        goto consumed;
    }
    rc = legacy_emit(p->listener, p->rid, p->rid_len, &out);
    if (rc == MDG_EAGAIN)
        return rc; /* bulk is still the caller's */
    if (rc == 0 && u && !(h->flags & MDG_F_MORE)) /* the final reply: the call is over */
        mdg_legacy_calls_done(&l->calls, h->corr);
    goto closed;
consumed:
    rc = 0;
closed:
    if (bulk)
        zmq_msg_close(bulk);
    return rc;
}

/* 1.x has no sequence numbers, no acknowledgements and no flow command. */
static const broker_transport legacy_transport = {
    .send = legacy_send,
    .resumable = legacy_resumable,
    .free_state = legacy_link_free,
};

/* A 1.x hello: a new session, or the resume of one the same key owns. */
static void legacy_hello(mdg_broker *b, broker_listener *l, peer *p, const uint8_t *rid, size_t rid_len,
                         int fd, const mdg_legacy_frame *lf)
{
    mdg_params *hp = NULL;
    zmq_msg_t unused;
    const uint8_t *pk = NULL, *sid = NULL;
    size_t pk_len = 0, sid_len = 0;
    int role = MDG_ROLE_NONE;
    char who[MDG_KEY_B64_LEN + 1] = "(no key)";
    if (mdg_legacy_open(lf, NULL, &hp, &unused) == 0) {
        if (mdg_params_get_bytes(hp, "user", &pk, &pk_len) == 0 && pk_len == MDG_KEY_BYTES) {
            role = broker_role_of(b, pk);
            pk_short(pk, who);
        }
        mdg_params_get_bytes(hp, "rid", &sid, &sid_len);
    }
    zmq_msg_close(&unused);
    peer *node = role == MDG_ROLE_NODE ? mdg_map_get(b->nodes, pk, MDG_KEY_BYTES) : NULL;
    const char *why = role == MDG_ROLE_NONE ? (pk_len == MDG_KEY_BYTES ? "unknown key" : "no 32-byte 'user' key")
                      : node && node->transport != &legacy_transport ? "that node is connected on the native (authenticated) protocol"
                      : !p && b->live_conns > b->max_conns ? "broker at its connection limit" /* a new link */
                                              : NULL;
    if (why) {
        mdg_log(MDG_LOG_WARN, "1.x hello from %s refused: %s", who, why);
        legacy_refuse_hello(l, rid, rid_len, lf);
        if (p)
            broker_close_session(b, p, "a refused hello on its link");
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
        broker_close_session(b, p, "replaced by a new 1.x hello");
    /* 1.x peers do not beat: libzmq's heartbeats on this socket notice a
     * dead link instead of our silence check */
    hello_terms terms = {.silence_ms = INT_MAX, .max_batch = MDG_PEER_BATCH}; /* no head frames in 1.x */
    if (!sid_len || !broker_resume_session(b, l, rid, rid_len, uid, fd, sid, sid_len, 0, &terms)) {
        legacy_link *link = legacy_link_new((size_t)b->queue_limit);
        if (link)
            broker_open_session(b, l, rid, rid_len, uid, fd, &terms, link);
        else
            mdg_log(MDG_LOG_ERROR, "cannot open a 1.x session: out of memory");
    }
    mdg_params_destroy(&hp);
}

/* Decide what a 1.x frame of a session is; fill the native header. False
 * (logged, and refused to the sender) when it is not acceptable. */
static bool classify_peer_frame(mdg_broker *b, peer *p, const mdg_legacy_frame *lf, mdg_params **params,
                                mdg_header *h, const char *who)
{
    const char *role = p->role == MDG_ROLE_NODE ? "node" : "user";
    bool ka = lf->command_len == 2 && memcmp(lf->command, "ka", 2) == 0;
    uint64_t id = p->role == MDG_ROLE_NODE ? mdg_legacy_corr_of(CALL_PREFIX, lf->uuid, lf->uuid_len) : 0;
    bool named_by_us = id != 0;
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
        legacy_refuse(p, lf, "bad command name (over 255 bytes, or a NUL byte)");
        return false;
    }
    char name[MDG_MAX_COMMAND + 1];
    memcpy(name, lf->command, lf->command_len);
    name[lf->command_len] = '\0';
    h->kind = MDG_K_CMD;
    mdg_header_set_command(h, name);
    if (!lf->uuid_len)
        return true;
    legacy_link *l = link_of(p);
    bool evicted;
    if (!(h->corr = mdg_legacy_calls_add(&l->calls, lf->uuid, lf->uuid_len, &evicted))) {
        mdg_log(MDG_LOG_ERROR, "'%s' from 1.x %s %s refused: out of memory", name, role, who);
        legacy_refuse(p, lf, "broker out of memory");
        return false;
    }
    if (evicted && !l->eviction_logged) {
        mdg_log(MDG_LOG_WARN, "1.x %s %s has more than %d calls awaiting replies: the oldest can no longer be "
                              "answered (said once per session)", role, who, b->queue_limit);
        l->eviction_logged = true;
    }
    return true;
}

/* A frame of an open 1.x session: opened and classified into the message
 * the rest of the broker reads (its params stay decoded: the route encodes
 * them only to pass a reply on), then processed as any native message
 * (held when where it goes is full). */
static void legacy_frame(mdg_broker *b, peer *p, const mdg_legacy_frame *lf)
{
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    if (p->held_len >= (size_t)b->queue_limit) {
        /* a native sender is held back by its own unacknowledged window;
         * 1.x has none, so what waits for room is bounded here */
        mdg_log(MDG_LOG_WARN, "1.x frame from %s refused: %zu of its messages already wait for room", who,
                p->held_len);
        legacy_refuse(p, lf, "the broker is full: try again later");
        return;
    }
    mdg_inbound in = {.h = {0}}; /* no params, no bulk yet */
    if (mdg_legacy_open(lf, seal_key(p), &in.params, &in.bulk) != 0) {
        mdg_log(MDG_LOG_WARN, "1.x frame from %s %s refused: %s", p->role == MDG_ROLE_NODE ? "node" : "user", who,
                mdg_last_error());
        legacy_refuse(p, lf, mdg_last_error());
        zmq_msg_close(&in.bulk);
        return;
    }
    in.has_bulk = zmq_msg_size(&in.bulk) != 0; /* 1.x sends b'' for none */
    if (!in.has_bulk)
        zmq_msg_close(&in.bulk);
    link_of(p)->proven = true;
    if (classify_peer_frame(b, p, lf, &in.params, &in.h, who))
        broker_receive(b, p, &in, who);
    mdg_inbound_close(&in);
}

static void legacy_message(mdg_broker *b, broker_listener *l, mdg_frames *f)
{
    if (f->n != 2 || f->dropped) {
        mdg_log(MDG_LOG_WARN, "1.x message of %d frames dropped (1.x sends one)", f->n + f->dropped - 1);
        return;
    }
    const uint8_t *rid = zmq_msg_data(&f->part[0]);
    size_t rid_len = zmq_msg_size(&f->part[0]), len = zmq_msg_size(&f->part[1]);
    peer *p = mdg_map_get(l->rids, rid, rid_len);
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
            legacy_refuse_uuid(p, uuid, mdg_legacy_peek_uuid(zmq_msg_data(&f->part[1]), len, uuid), why);
        return;
    }
    if (p)
        p->last_rx = mdg_now_ms();
    if (lf.command_len == 4 && memcmp(lf.command, "auth", 4) == 0) {
        broker_on_monitor(b->loop, b, 0); /* drops first: a new link may reuse a closed fd */
        legacy_hello(b, l, mdg_map_get(l->rids, rid, rid_len), rid, rid_len, zmq_msg_get(&f->part[1], ZMQ_SRCFD),
                     &lf);
    } else if (!p) {
        broker_on_monitor(b->loop, b, 0); /* as for 'auth' */
        if (broker_stray_first(l, zmq_msg_get(&f->part[1], ZMQ_SRCFD)))
            mdg_log(MDG_LOG_WARN, "1.x frame from a link without a session refused (say 'auth' first; said once "
                                  "per link, each one is refused)");
        legacy_refuse_hello(l, rid, rid_len, &lf);
    } else {
        legacy_frame(b, p, &lf);
    }
    mdg_legacy_frame_free(&lf);
}

static int on_legacy_router(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    broker_drain(arg, legacy_message);
    return 0;
}

/* ------------------------------------------------------------ the listener */

/* Off unless the options ask for it (mdg_broker_options.legacy). */
static int legacy_configure(broker_listener *l, const mdg_broker_options *opts)
{
    l->on = opts && opts->legacy;
    l->port = opts ? opts->legacy_port : 0;
    if (l->on && (l->port < 0 || l->port > 65535))
        return mdg_fail(MDG_EINVAL, "legacy port out of range");
    return 0;
}

/* No CURVE (1.x has none), libzmq heartbeats since 1.x peers send none of
 * their own, and loud warnings about what 1.x lacks. */
static int legacy_bind(mdg_broker *b, broker_listener *l)
{
    int ivl = LEGACY_HEARTBEAT_MS, timeout = 3 * LEGACY_HEARTBEAT_MS, rc;
    char ep[160];
    if ((rc = broker_new_router(b, &l->sock, b->max_message + LEGACY_HEADROOM)) ||
        (rc = broker_setsock(l->sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl, "HEARTBEAT_IVL")) ||
        (rc = broker_setsock(l->sock, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout, "HEARTBEAT_TIMEOUT")) ||
        (rc = broker_listen_on(b, l, on_legacy_router, ep)))
        return rc;
    mdg_log(MDG_LOG_WARN, "Messidge 1.x listener on %s (port %d) keeps 1.x's weaknesses "
                          "(docs/compatibility.md); use it on a trusted network only:", ep, l->bound_port);
    mdg_log(MDG_LOG_WARN, "  1.x node links are plaintext and unauthenticated: a node is trusted on its public key alone");
    mdg_log(MDG_LOG_WARN, "  1.x user frames seal params and bulk under one nonce, and leave command and uuid "
                          "unauthenticated");
    mdg_log(MDG_LOG_WARN, "  1.x has no replay protection, no forward secrecy, and no acknowledgements "
                          "(a message in flight when a link drops is lost)");
    return 0;
}

const broker_listener_ops broker_legacy_listener = {
    .name = "1.x",
    .configure = legacy_configure,
    .bind = legacy_bind,
    .transport = &legacy_transport,
};

int mdg_broker_legacy_port(const mdg_broker *b)
{
    return b ? broker_listener_of(b, &broker_legacy_listener)->bound_port : 0;
}
