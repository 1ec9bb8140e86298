/* conn_receive.c - the connection's incoming side, in arrival order:
 * socket -> decode (the transport's ingest, into an mdg_inbound) -> in
 * order and once (conn_in_order: the broker's acknowledgement, the
 * channel's order and duplicate checks) -> session (a welcome opens it:
 * new, resumed, or lost and begun again) -> dispatch: a command to the
 * application's handler, a reply to the call that waits for it, a goodbye
 * that ends the connection. What a nested wait (conn.c) reads is deferred
 * here and dispatched later, still in order. Loop thread only. */
#include "conn_internal.h"

#include <stdlib.h>
#include <string.h>


/* Where a message the transport decoded stands in the session's
 * numbering: the broker's acknowledgement taken, a duplicate dropped, a
 * gap answered by a resync, the next one counted (its ack scheduled).
 * Returns 0 when it should be dispatched (an ACK never is). */
int conn_in_order(mdg_conn *c, const mdg_header *h)
{
    if (h->kind != MDG_K_WELCOME && h->ack <= c->chan.tx_seq)
        conn_acked(c, h->ack);
    switch (mdg_chan_check(&c->chan, h)) {
    case MDG_CHAN_DUPLICATE:
        mdg_log(MDG_LOG_DEBUG, "duplicate seq %llu dropped", (unsigned long long)h->seq);
        return -1;
    case MDG_CHAN_GAP:
        /* something before it was lost: never skip it, have it resent */
        mdg_log(MDG_LOG_ERROR, "seq gap from the broker: expected %llu, got %llu; dropped",
                (unsigned long long)c->chan.rx_seq + 1, (unsigned long long)h->seq);
        if (!c->resyncing)
            conn_resync(c, "messages from the broker were lost");
        return -1;
    case MDG_CHAN_NEXT:
        mdg_chan_received(&c->chan, h->seq);
        conn_schedule_ack(c);
        break;
    }
    return h->kind == MDG_K_ACK ? -1 : 0;
}

/* The session is open on this link: resumed (the broker has what we sent
 * up to ack) or new. */
void conn_session_open(mdg_conn *c, const uint8_t *sid, size_t len, bool resumed, int64_t ack)
{
    int ev = MDG_EV_CONNECTED;
    char moved[2 * ENDPOINT_MAX + 60] = "";
    if (c->had_session && resumed) {
        /* the broker has what we sent up to ack: resend the rest, in order */
        mdg_chan_resume(&c->chan, (uint64_t)ack); /* sent by conn_flush() below, before anything new */
        conn_room_made(c);
        ev = MDG_EV_RECOVERED;
    } else if (c->had_session) {
        /* from now on replies to the old session's commands fail at once
         * (MDG_ECLOSED), so a node streaming to a caller that is gone stops */
        pthread_mutex_lock(&c->lock);
        c->epoch++;
        size_t stale = conn_drop_stale_replies(c);
        pthread_mutex_unlock(&c->lock);
        if (stale)
            mdg_log(MDG_LOG_WARN, "%zu queued repl%s to calls of the lost session dropped: their callers are gone",
                    stale, stale == 1 ? "y" : "ies");
        size_t lost = mdg_chan_reset(&c->chan); /* numbered from 1 again */
        conn_room_made(c);
        char why[2 * ENDPOINT_MAX + 200];
        if (strcmp(c->session_at, c->endpoint) != 0) { /* failover: another broker of the fleet */
            snprintf(why, sizeof why, "the broker at %s went away; now connected to %s: session lost; "
                     "%zu unacknowledged message(s) not delivered", c->session_at, c->endpoint, lost);
            snprintf(moved, sizeof moved, "now connected to %s (the broker at %s went away)", c->endpoint,
                     c->session_at);
        } else {
            snprintf(why, sizeof why, "the broker no longer knew our session (restarted, or away longer "
                                      "than its grace period); %zu unacknowledged message(s) not delivered", lost);
        }
        /* the new session and the event first: a caller woken by the
         * failure below already sees both */
        pthread_mutex_lock(&c->lock);
        memcpy(c->session_id, sid, len);
        c->session_id_len = len;
        pthread_mutex_unlock(&c->lock);
        conn_event(c, MDG_EV_LOST, why);
        conn_fail_pending(c, MDG_ECLOSED, why);
        pthread_mutex_lock(&c->lock); /* the broker's word on the old session's calls is void */
        while (mdg_map_pop(c->flow))
            ;
        pthread_cond_broadcast(&c->room_cond);
        pthread_mutex_unlock(&c->lock);
        ev = moved[0] ? MDG_EV_CONNECTED : 0; /* a session at another broker */
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
    c->down_since = 0;
    c->refused_in_row = 0;
    memcpy(c->session_at, c->endpoint, sizeof c->session_at);
    if (ev)
        conn_event(c, ev, ev == MDG_EV_RECOVERED ? c->transport->recovered_note : moved[0] ? moved : NULL);
    conn_flush(c);
}

/* The broker's answer to our hello: the session, and whether it is the
 * one we named, with what the broker had of ours. */
static void on_welcome(mdg_conn *c, mdg_msg *m)
{
    const uint8_t *sid = NULL;
    size_t len = 0;
    bool resumed = false;
    int64_t ack = 0, max = 0;
    mdg_params_get_bytes(m->params, "session", &sid, &len);
    mdg_params_get_bool(m->params, "resumed", &resumed);
    mdg_params_get_int(m->params, "ack", &ack);
    c->chan.batch_max = mdg_chan_said_batch(m->params);
    if (mdg_params_get_int(m->params, "max_message", &max) == 0 && max > 0) {
        atomic_store_explicit(&c->broker_max, max, memory_order_relaxed);
        mdg_chan_limit_frame(&c->chan, (size_t)max);
    }
    if (!sid || len > SESSION_ID_MAX) {
        mdg_log(MDG_LOG_ERROR, "welcome without a session id from %s", c->endpoint);
        return;
    }
    conn_session_open(c, sid, len, resumed, ack);
}

/* A command from the broker (a call routed to this node, or the broker's
 * own, such as resource_offer): checked against the application's table,
 * then its handler, which answers through conn_send_reply. The broker's
 * word on a call's replies (MDG_FLOW_COMMAND) goes to conn_queue.c. */
static void on_command(mdg_conn *c, mdg_msg *m)
{
    char why[512];
    if (c->transport->flow && strcmp(m->h.command, MDG_FLOW_COMMAND) == 0) {
        conn_on_flow(c, m);
        mdg_msg_destroy(&m);
        return;
    }
    m->send_reply = conn_send_reply;
    m->owner = c;
    m->epoch = c->epoch; /* the loop thread is the only writer */
    const mdg_cmd *cmd = mdg_cmd_check(c->cmds, m, false, why, sizeof why);
    if (!cmd)
        m->send_reply = conn_queue_reply; /* the library's own checks always reach the caller */
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

/* A reply to one of our calls, or an error notice: a blocking call is
 * woken with it, a callback call gets it (and is done with at its final
 * reply); a notice that the broker no longer knows our session on this
 * link says hello again. */
void conn_on_reply(mdg_conn *c, mdg_msg *m)
{
    bool wants_resync = false;
    if (m->h.kind == MDG_K_ERROR && mdg_params_get_bool(m->params, "resync", &wants_resync) == 0 &&
        wants_resync) {
        /* The link is up but the broker has no session for it (it closed
         * ours, e.g. after a long silence): say hello again, at most once
         * per welcome. Pending calls learn their fate from what follows (a
         * resumed session, or a lost one that fails them). */
        if (!c->resyncing)
            conn_resync(c, "the broker no longer knows our session on this link");
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
    mdg_reply_fn cb = pd ? pd->cb : NULL;
    void *arg = pd ? pd->arg : NULL;
    if (pd && final) /* out of the map: no one else can reach it */
        conn_pending_free_locked(c, pd);
    pthread_mutex_unlock(&c->lock);
    if (!cb)
        mdg_log(MDG_LOG_INFO, "reply to call %llu that no one waits for (timed out?) dropped",
                (unsigned long long)m->h.corr);
    else
        cb(m, arg);
    mdg_msg_destroy(&m);
}

/* The broker closed our session: nothing more can be sent. */
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

/* A reply that cannot be decoded (the broker passes a node's params on as
 * they came) still ends its call, as an error: its caller is told instead
 * of waiting for ever. NULL when out of memory. */
static mdg_msg *undecodable_reply(const mdg_header *h, const char *why)
{
    char text[300];
    mdg_inbound e;
    mdg_msg *m = NULL;
    mdg_inbound_init(&e);
    mdg_header_copy(&e.h, h);
    e.h.kind = MDG_K_ERROR;
    e.h.flags = 0; /* the call is over */
    snprintf(text, sizeof text, "malformed reply from the broker: %s", why);
    if ((e.params = mdg_params_new()) && mdg_params_set_str(e.params, "error", text) == 0)
        mdg_msg_from_inbound(&m, &e);
    mdg_inbound_close(&e);
    return m;
}

/* Second step: build the message and hand it to whoever wants it. in's
 * params and bulk are taken; the caller closes it. */
void conn_dispatch(mdg_conn *c, mdg_inbound *in)
{
    mdg_msg *m = NULL;
    const mdg_header *h = &in->h;
    if (mdg_msg_from_inbound(&m, in) != 0) {
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
        c->transport->on_reply(c, m);
        return; /* it owns m */
    case MDG_K_BYE:
        on_bye(c, m);
        break;
    default:
        mdg_log(MDG_LOG_WARN, "unexpected %s from the broker dropped", mdg_kind_name(h->kind));
    }
    mdg_msg_destroy(&m);
}

/* Keep a message read during a nested wait (conn.c) for later, in order. */
void conn_defer(mdg_conn *c, mdg_inbound *in)
{
    deferred *d = malloc(sizeof *d);
    if (!d) {
        mdg_log(MDG_LOG_ERROR, "out of memory: message dropped during a nested call");
        mdg_inbound_close(in);
        return;
    }
    d->next = NULL;
    mdg_inbound_init(&d->in);
    mdg_inbound_move(&d->in, in);
    if (c->def_tail)
        c->def_tail->next = d;
    else
        c->def_head = d;
    c->def_tail = d;
}

/* The oldest deferred message, if any (taken). */
bool conn_pop_deferred(mdg_conn *c, mdg_inbound *in)
{
    deferred *d = c->def_head;
    if (!d)
        return false;
    c->def_head = d->next;
    if (!c->def_head)
        c->def_tail = NULL;
    mdg_inbound_move(in, &d->in);
    free(d);
    return true;
}

/* The socket is readable (or has room again): what a nested wait
 * deferred goes first, then what is new, a batch at a time so that the
 * loop's timers and other threads' messages get their turn. */
int conn_on_socket(mdg_loop *loop, void *arg, short revents)
{
    mdg_conn *c = arg;
    mdg_inbound in;
    mdg_inbound_init(&in);
    if (revents & ZMQ_POLLOUT)
        conn_flush(c);
    void *sock = c->sock;
    for (int i = 0; i < MDG_LOOP_BATCH && !mdg_loop_stopping(loop) && c->sock == sock; i++) {
        if (!conn_pop_deferred(c, &in) && !conn_next_inbound(c, &in))
            break;
        conn_dispatch(c, &in);
        mdg_inbound_close(&in);
    }
    if (c->def_head || c->rx_frames.n)
        mdg_loop_wake(loop); /* come back for what a nested wait or a long frame left */
    return 0;
}

/* The next message, in arrival order: what is left of the last frame
 * read, then new frames from the socket. False when nothing waits. */
bool conn_next_inbound(mdg_conn *c, mdg_inbound *in)
{
    mdg_frames f;
    for (;;) {
        int rc = c->transport->ingest(c, NULL, in);
        if (rc == 0)
            return true;
        mdg_inbound_close(in);
        if (rc < 0)
            continue; /* that one was dropped; more may be left */
        if (!c->sock || mdg_frames_recv(c->sock, &f) != 0)
            return false;
        rc = c->transport->ingest(c, &f, in);
        mdg_frames_close(&f);
        if (rc == 0)
            return true;
        mdg_inbound_close(in);
    }
}

/* Forget what is left of the last frame read (its link is gone: the broker
 * sends again what we did not take). */
void conn_drop_rx(mdg_conn *c)
{
    mdg_frames_close(&c->rx_frames);
}

