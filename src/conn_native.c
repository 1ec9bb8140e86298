/* conn_native.c - the native transport: how the connection speaks the
 * native protocol (docs/protocol.md) to its broker. CURVE on every socket;
 * the hello that names the session to resume; each message out encoded by
 * mdg_wire_send (numbered ones through the channel, control messages
 * straight); each message in decoded and checked, then put in order by
 * conn_in_order; and what it means when the peer ends the CURVE
 * handshake. Legacy mode's transport is conn_legacy.c. */
#include "conn_internal.h"

#include <string.h>

#define PROBE_MS 2000

/* The channel's link: one numbered message to the socket. */
static int native_send(void *owner, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    mdg_conn *c = owner;
    int rc = mdg_wire_send(c->sock, NULL, 0, h, params, bulk);
    if (rc == 0)
        c->last_tx = mdg_now_ms();
    return rc;
}

static int native_send_frame(void *owner, zmq_msg_t *head)
{
    mdg_conn *c = owner;
    int rc = mdg_wire_send_head(c->sock, NULL, 0, head);
    if (rc == 0)
        c->last_tx = mdg_now_ms();
    return rc;
}

static const mdg_chan_ops native_link = {
    .send = native_send, .send_frame = native_send_frame, .release = conn_chan_release, .acks = true};

/* An unnumbered control message, stamped with what we received. */
static void native_control(mdg_conn *c, int kind, mdg_params *params)
{
    mdg_header h = {.kind = (uint8_t)kind};
    zmq_msg_t pm;
    mdg_chan_stamp(&c->chan, &h);
    if (mdg_params_encode(params, &pm) == 0) {
        if (mdg_wire_send(c->sock, NULL, 0, &h, &pm, NULL) != MDG_EAGAIN) {
            mdg_chan_ack_told(&c->chan, h.ack);
            c->last_tx = mdg_now_ms();
        }
        zmq_msg_close(&pm);
    }
    mdg_params_destroy(&params);
}

/* Our hello, the first thing on every link: the session to resume and
 * what we have of it. */
static void native_hello(mdg_conn *c)
{
    mdg_params *p = mdg_params_new();
    if (p) {
        mdg_params_set_int(p, "version", MDG_WIRE_VERSION);
        mdg_params_set_int(p, "ack", (int64_t)c->chan.rx_seq);
        mdg_params_set_int(p, "heartbeat", c->opts.heartbeat_ms);
        mdg_params_set_int(p, "max_batch", MDG_MAX_BATCH);
        if (c->had_session)
            mdg_params_set_bytes(p, "session", c->session_id, c->session_id_len);
    }
    conn_send_control(c, MDG_K_HELLO, p);
}

/* The broker is who we pinned, and we are who our keys say. */
static int native_secure(mdg_conn *c, void *sock)
{
    int rc;
    if ((rc = conn_set_option(sock, ZMQ_CURVE_SERVERKEY, c->server_pk, MDG_KEY_BYTES)) ||
        (rc = conn_set_option(sock, ZMQ_CURVE_PUBLICKEY, mdg_keys_public(c->keys), MDG_KEY_BYTES)) ||
        (rc = conn_set_option(sock, ZMQ_CURVE_SECRETKEY, mdg_keys_secret(c->keys), MDG_KEY_BYTES)))
        return rc;
    return 0;
}

/* First step for every received message, in arrival order: its frames
 * and header, then its place in the session's numbering (conn_in_order).
 * Returns 0 with *in filled (the frames moved into it) when it should be
 * dispatched. */
static int native_ingest(mdg_conn *c, mdg_frames *f, mdg_inbound *in)
{
    mdg_header *h = &in->h;
    if (f) {
        if (f->n < 1) {
            mdg_log(MDG_LOG_WARN, "malformed message from the broker dropped (%d frames)", f->n + f->dropped);
            return -1;
        }
        conn_drop_rx(c);
        mdg_frames_move(&c->rx_frames, f);
        c->rx_at = (mdg_inbound_cursor){0};
    } else if (!c->rx_frames.n) {
        return 1;
    }
    mdg_frames *rf = &c->rx_frames;
    int rc = mdg_inbound_next(in, rf, 0, &c->rx_at);
    if (rc == 1) {
        conn_drop_rx(c);
        return 1;
    }
    if (rc && !h->kind) { /* the header did not decode: the rest of the frame is lost */
        if (mdg_wire_peek_version(zmq_msg_data(&rf->part[0]), zmq_msg_size(&rf->part[0])) == 1)
            conn_fatal(c, MDG_EPROTO, "the broker speaks native protocol version 1 (an older libmessidge); "
                                      "this one speaks version 2: upgrade the broker");
        else
            mdg_log(MDG_LOG_WARN, "from the broker: %s", mdg_last_error());
        conn_drop_rx(c);
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
    if (conn_in_order(c, h) != 0)
        return -1;
    if (rc) { /* counted in order, but more frames than a message has */
        mdg_log(MDG_LOG_WARN, "%s from the broker dropped: %s", mdg_kind_name(h->kind), mdg_last_error());
        conn_drop_rx(c);
        return -1;
    }
    /* its last message (in holds its own references): a frame kept means
     * messages are left in it, for whoever reads next */
    if (c->rx_at.off >= zmq_msg_size(&rf->part[0]))
        conn_drop_rx(c);
    return 0;
}

#define NOT_CURVE \
    "the peer does not speak CURVE, so it is no native Messidge broker (a Messidge 1.x broker? then use legacy mode)"

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
    if (s) { /* as conn_close_socket: the monitor first */
        zmq_socket_monitor(s, NULL, 0);
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(s);
    }
    if (m)
        zmq_close(m);
    return yes;
}

/* The peer ended the CURVE handshake in order, again and again: a CURVE
 * broker does that with a HELLO that does not open under its key (we
 * pinned another), unless a NULL handshake shows a 1.x broker (asked once). */
static void native_closed_verdict(mdg_conn *c, char *text, size_t len)
{
    if (c->hs_closed == HS_VERDICT_AFTER && peer_speaks_null(c))
        snprintf(text, len, "%s", NOT_CURVE);
    else
        snprintf(text, len, "the broker closed the link during the CURVE handshake on %d attempts in "
                 "a row: its key is most likely not the one pinned", c->hs_closed);
}

const conn_transport conn_native_transport = {
    .chan = &native_link,
    .secure = native_secure,
    .hello = native_hello,
    .control = native_control,
    .ingest = native_ingest,
    .on_reply = conn_on_reply,
    .closed_verdict = native_closed_verdict,
    .handshake = "CURVE",
    .mismatch = NOT_CURVE,
    .flow = true,
};
