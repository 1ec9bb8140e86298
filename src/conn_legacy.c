/* conn_legacy.c - legacy mode's transport (opts.legacy): the connection
 * speaks Messidge 1.x to an original Python Messidge broker, translating
 * at the socket boundary. legacy_send turns each numbered message into one
 * 1.x frame, legacy_ingest turns each 1.x frame into the header and frames
 * of a native one, and all the rest (queue, pending calls, dispatch, nested
 * waits, reconnects) is shared: it reaches this file only through
 * conn_legacy_transport. 1.x has no acknowledgements, sequence
 * numbers or session resumption, so there a message counts as delivered
 * once libzmq took it, nothing is resent after a reconnect, and every later
 * session is reported as MDG_EV_RECOVERED (a 1.x broker does not say
 * whether it still had ours). Nor can 1.x mark a call's last reply: see
 * legacy_on_reply. The 1.x frames themselves are legacy.c's. */
#include "conn_internal.h"
#include "legacy.h"

#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* Legacy mode's state of a connection (its transport_state). */
typedef struct legacy_state {
    bool sealed;                 /* a user link: params and bulk sealed */
    uint8_t key[MDG_LEGACY_KEY]; /* this link's session key */
    char prefix[16];             /* our calls' uuids: prefix + corr */
    mdg_legacy_calls calls;      /* the uuids of commands we received, by our corr */
    mdg_ring lingering;          /* callback calls kept after a reply */
} legacy_state;

static void legacy_free(void *state)
{
    legacy_state *lg = state;
    if (!lg)
        return;
    mdg_legacy_calls_free(&lg->calls);
    mdg_ring_free(&lg->lingering);
    sodium_memzero(lg->key, sizeof lg->key);
    free(lg);
}

/* Which 1.x peer we are, and legacy mode's tables, bounded like the send
 * queue. */
static int legacy_init(mdg_conn *c)
{
    char id[23];
    size_t cap = (size_t)c->opts.queue_limit;
    legacy_state *lg;
    if (c->opts.legacy != MDG_LEGACY_USER && c->opts.legacy != MDG_LEGACY_NODE)
        return mdg_fail(MDG_EINVAL, "legacy must be 0, MDG_LEGACY_USER or MDG_LEGACY_NODE");
    if (!(lg = calloc(1, sizeof *lg)))
        return mdg_fail(MDG_ENOMEM, "cannot allocate the connection");
    mdg_legacy_uuid(id);
    memcpy(lg->prefix, id, 12);
    lg->prefix[12] = '-'; /* not in the uuid alphabet: the corr follows */
    mdg_ring_init(&lg->lingering, cap);
    c->transport_state = lg;
    return mdg_legacy_calls_init(&lg->calls, cap) == 0 ? 0 : mdg_fail(MDG_ENOMEM, "cannot allocate the connection");
}

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

_Static_assert(MDG_LEGACY_MAX_RID <= SESSION_ID_MAX, "a 1.x rid must fit as our session id");

/* The answer to our hello opens the session on this link; a refusal or a
 * box that does not open is reported like a native CURVE failure. On a
 * node link the answer is not boxed, so a wrong pinned key goes unnoticed
 * there (1.x authenticates neither side of a node link). */
static void legacy_welcome(mdg_conn *c, zmq_msg_t *frame)
{
    legacy_state *lg = c->transport_state;
    uint8_t rid[MDG_LEGACY_MAX_RID];
    size_t rid_len = 0;
    bool sealed = false;
    int rc = mdg_legacy_parse_welcome(zmq_msg_data(frame), zmq_msg_size(frame), c->server_pk,
                                      mdg_keys_secret(c->keys), &sealed, lg->key, rid, &rid_len);
    if (rc == MDG_EAUTH || rc == MDG_EHANDSHAKE) {
        char why[256];
        snprintf(why, sizeof why, "%s", mdg_last_error());
        conn_fatal(c, rc, why);
        c->attempt = 30; /* as native: retry now and then, the key may be admitted later */
        conn_link_lost(c, why);
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
        conn_fatal(c, MDG_EHANDSHAKE, why);
        c->attempt = 30;
        conn_link_lost(c, why);
        return;
    }
    lg->sealed = sealed;
    conn_session_open(c, rid, rid_len, c->had_session, 0);
}

/* The uuid a message goes with. A call that wants replies gets our prefix
 * and its corr (mdg_legacy_corr_of reads it back); a reply, the uuid of
 * the command it answers (*u, NULL for a command). */
static int legacy_out_uuid(mdg_conn *c, const mdg_header *h, char *buf, size_t len, mdg_legacy_call **u)
{
    legacy_state *lg = c->transport_state;
    *u = NULL;
    buf[0] = '\0';
    if (h->kind == MDG_K_CMD) {
        if (h->corr)
            mdg_legacy_call_uuid(buf, len, lg->prefix, h->corr);
        return 0;
    }
    if (!(*u = mdg_legacy_calls_get(&lg->calls, h->corr)))
        return mdg_fail(MDG_ENOTFOUND, "the 1.x uuid of the command it answers was forgotten "
                                       "(more than queue_limit commands awaited replies)");
    return 0;
}

/* One numbered message as one 1.x frame. A reply's command field is 'ka'
 * once its channel is long-term, also for the final reply: the 1.x broker
 * sends a non-'ka' frame whose uuid it knows only as long-term back to its
 * sender. Never the bulk there, as 1.x's replies do: it would cross in
 * clear. */
static int legacy_send_frame(mdg_conn *c, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    legacy_state *lg = c->transport_state;
    char uuid[sizeof lg->prefix + 24];
    mdg_legacy_call *u;
    mdg_params *p = NULL;
    zmq_msg_t frame;
    uint8_t nonce[MDG_LEGACY_NONCE]; /* a node's frames carry one too, as 1.x's */
    bool more = h->flags & MDG_F_MORE;
    int rc = legacy_out_uuid(c, h, uuid, sizeof uuid, &u);
    const char *command = !u ? h->command : more || u->long_term ? "ka" : "";
    randombytes_buf(nonce, sizeof nonce);
    if (!rc && !(rc = mdg_legacy_params_out(h->kind, zmq_msg_data(params), zmq_msg_size(params), &p)))
        rc = mdg_legacy_build(&frame, lg->sealed ? lg->key : NULL, nonce, sizeof nonce, command,
                              strlen(command), u ? (const char *)u->uuid : uuid, u ? u->len : strlen(uuid), p,
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
        mdg_legacy_calls_done(&lg->calls, h->corr);
    return 0;
}

/* The channel's link in legacy mode (mdg_chan_ops.send): a failure ends
 * the message (nothing is resent in 1.x). */
static int legacy_send(void *owner, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    int rc = legacy_send_frame(owner, h, params, bulk);
    if (bulk && rc != MDG_EAGAIN) /* its bytes went into the 1.x frame */
        zmq_msg_close(bulk);
    return rc;
}

/* 1.x has no acks: once libzmq has a message, it is gone */
static const mdg_chan_ops legacy_link = {.send = legacy_send, .release = conn_chan_release, .acks = false};

/* Remember the uuid of a command we received under a corr of our own, for
 * its replies; the oldest are forgotten past queue_limit. 0 when out of
 * memory (the command is then not answerable). */
static uint64_t legacy_remember(mdg_conn *c, const uint8_t *uuid, size_t len)
{
    legacy_state *lg = c->transport_state;
    bool evicted;
    uint64_t corr = mdg_legacy_calls_add(&lg->calls, uuid, len, &evicted);
    if (!corr)
        mdg_log(MDG_LOG_ERROR, "out of memory: a 1.x command cannot be answered");
    if (evicted)
        mdg_log(MDG_LOG_WARN, "more than %d 1.x commands await replies: the oldest can no longer be answered",
                c->opts.queue_limit);
    return corr;
}

/* What a 1.x frame is: a reply to one of our calls (its uuid says so,
 * whatever the command field: 1.x replies put their bulk there), an error
 * notice (an exception for nothing), or a command. */
static int classify_broker_frame(mdg_conn *c, const mdg_legacy_frame *lf, mdg_params **p, mdg_header *h)
{
    const legacy_state *lg = c->transport_state;
    const char *exc = NULL;
    bool is_exc = mdg_params_get_str(*p, "exception", &exc) == 0;
    memset(h, 0, sizeof *h);
    h->corr = mdg_legacy_corr_of(lg->prefix, lf->uuid, lf->uuid_len);
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

/* A 1.x frame from the broker becomes a received message like a native
 * one, its params as decoded (0: dispatch it), or is taken here (the
 * welcome), or dropped with a log line. Nothing a 1.x broker sends ends
 * the link. */
static int legacy_ingest(mdg_conn *c, mdg_frames *f, mdg_inbound *in)
{
    mdg_header *h = &in->h;
    if (!f) /* one message per frame: nothing is ever left */
        return 1;
    const legacy_state *lg = c->transport_state;
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
        if ((rc = mdg_legacy_open(&lf, lg->sealed ? lg->key : NULL, &p, &bulk)) == 0)
            rc = classify_broker_frame(c, &lf, &p, h);
        mdg_legacy_frame_free(&lf);
    }
    if (rc) {
        mdg_log(MDG_LOG_WARN, "1.x frame from the broker dropped: %s", mdg_last_error());
        mdg_params_destroy(&p);
        zmq_msg_close(&bulk);
        return -1;
    }
    in->params = p;
    if (zmq_msg_size(&bulk)) {
        zmq_msg_init(&in->bulk);
        zmq_msg_move(&in->bulk, &bulk);
        in->has_bulk = true;
    }
    zmq_msg_close(&bulk);
    return 0;
}

/* A callback call answered: keep it for more replies, within queue_limit
 * (past it the oldest such call is forgotten). */
static void legacy_linger(mdg_conn *c, uint64_t corr)
{
    legacy_state *lg = c->transport_state;
    uint64_t old = mdg_ring_push(&lg->lingering, corr);
    if (!old)
        return;
    pthread_mutex_lock(&c->lock);
    pending *pd = mdg_map_take_u64(c->pending, old);
    if (pd)
        conn_pending_free_locked(c, pd);
    pthread_mutex_unlock(&c->lock);
    if (pd)
        mdg_log(MDG_LOG_WARN, "more than %d answered 1.x calls kept for further replies: "
                              "the oldest (call %llu) forgotten", c->opts.queue_limit, (unsigned long long)old);
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
        conn_on_reply(c, m);
        return;
    }
    if (first)
        legacy_linger(c, m->h.corr);
    pd->cb(m, pd->arg);
    mdg_msg_destroy(&m);
}

/* The peer ended the ZMTP handshake in order, again and again: a peer that
 * wants more than 1.x's plain ZMTP. */
static void legacy_closed_verdict(mdg_conn *c, char *text, size_t len)
{
    snprintf(text, len, "the peer closed the link during the ZMTP handshake on %d attempts in a row: not "
             "Messidge 1.x (a native Messidge broker, which speaks CURVE? then connect without legacy mode)",
             c->hs_closed);
}

const conn_transport conn_legacy_transport = {
    .chan = &legacy_link,
    .init = legacy_init,
    .free_state = legacy_free,
    .secure = NULL, /* 1.x has no CURVE: the broker's key is checked by the welcome's box */
    .hello = legacy_hello,
    .control = NULL, /* nor acknowledgements, keepalives or a goodbye */
    .ingest = legacy_ingest,
    .on_reply = legacy_on_reply,
    .closed_verdict = legacy_closed_verdict,
    .handshake = "ZMTP",
    .mismatch = "the peer speaks CURVE, not Messidge 1.x (a native Messidge broker? then connect without legacy "
                "mode)",
    .recovered_note = "a 1.x broker does not say whether it kept the session: what was sent before the link "
                      "dropped may be lost",
    .flow = false, /* MDG_FLOW_COMMAND is the native broker's */
};
