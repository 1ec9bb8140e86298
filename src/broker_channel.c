/* broker_channel.c - each session's reliable channel at the broker:
 * messages out are numbered and kept until the peer acknowledges them
 * (resent after a resume, trimmed on each ack, the rest left to a backlog
 * timer when libzmq's pipe is full); messages in are taken in order and
 * once (duplicates dropped, a gap answered with a resync), acknowledged on
 * the next message out or after ACK_DELAY_MS, and held, unacknowledged,
 * while where they go is full. broker_receive takes each message a
 * listener decoded (an mdg_inbound) and hands it on to broker_route.c.
 * The connection (conn.c) has the other end. */
#include "broker_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- sending */

/* The peer's link, for its channel: its own socket, in its own protocol. */
static int chan_send(void *owner, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    peer *p = owner;
    return p->transport->send(p->broker, p, h, params, bulk);
}

static int chan_send_frame(void *owner, zmq_msg_t *head)
{
    peer *p = owner;
    return p->transport->send_frame(p->broker, p, head);
}

static void free_one_kept(mdg_broker *b, peer *p, kept *k)
{
    if (k->counted)
        broker_share_release(b, k->origin, p->pk);
    zmq_msg_close(&k->m.params);
    if (k->m.has_bulk)
        zmq_msg_close(&k->m.bulk);
    if (k->pooled)
        mdg_pool_free(&b->kept_pool, k);
    else
        free(k);
}

static void chan_release(void *owner, mdg_chan_msg *m)
{
    peer *p = owner;
    free_one_kept(p->broker, p, (kept *)m);
}

static const mdg_chan_ops acking_link = {.send = chan_send, .send_frame = chan_send_frame, .release = chan_release,
                                         .acks = true};
/* none will come: once libzmq has a message, it is gone */
static const mdg_chan_ops plain_link = {.send = chan_send, .release = chan_release, .acks = false};

void broker_chan_init(peer *p)
{
    /* a transport that acknowledges (native) also takes several messages in
     * one head frame */
    mdg_chan_init(&p->chan, p->transport->acks ? &acking_link : &plain_link, p);
}

/* Send what a peer has not been sent yet, in order, while it is attached.
 * A full pipe (a slow reader) leaves the rest for the backlog timer. */
void broker_flush_peer(mdg_broker *b, peer *p)
{
    if (!p->attached)
        return;
    int rc = mdg_chan_flush(&p->chan);
    if (rc == MDG_EAGAIN)
        mdg_map_put(b->backlog, p->session_id, SESSION_ID_BYTES, p);
    else if (rc != 0) /* unroutable: the link is gone (the monitor may not know yet) */
        broker_detach(b, p, "unroutable");
}

static bool *listed_flag(mdg_broker *b, mdg_map *list, peer *p)
{
    return list == b->to_flush ? &p->in_to_flush : &p->in_owed_ack;
}

void broker_list(mdg_broker *b, mdg_map *list, peer *p)
{
    bool *listed = listed_flag(b, list, p);
    if (!*listed && mdg_map_put(list, p->session_id, SESSION_ID_BYTES, p) == 0)
        *listed = true;
}

bool broker_unlist(mdg_broker *b, mdg_map *list, peer *p)
{
    bool *listed = listed_flag(b, list, p);
    if (!*listed)
        return false;
    mdg_map_take(list, p->session_id, SESSION_ID_BYTES);
    *listed = false;
    return true;
}

peer *broker_list_pop(mdg_broker *b, mdg_map *list)
{
    peer *p = mdg_map_pop(list);
    if (p)
        *listed_flag(b, list, p) = false;
    return p;
}

/* The end of a turn of the loop: what it gave each peer goes out. */
int broker_flush_turn(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    peer *p;
    while ((p = broker_list_pop(b, b->to_flush)) != NULL) {
        broker_flush_peer(b, p);
        if (p->attached && mdg_chan_ack_due(&p->chan)) /* nothing sent carried it */
            broker_send_to(b, NULL, 0, p, MDG_K_ACK, 0, 0, "", NULL, NULL, 0);
    }
    return 0;
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
size_t broker_over_limit(const mdg_broker *b, int quarters)
{
    return (size_t)b->queue_limit * (size_t)quarters / 4;
}

/* Queue a message to a peer (params and bulk moved). Numbered kinds are
 * kept until acknowledged, within the peer's queue limit (final answers
 * past it); past it the message is refused, loudly. Unnumbered ones go now
 * or not at all. */
int broker_send_frames(mdg_broker *b, peer *p, mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    return broker_send_frames_max(b, p, h, params, bulk, final_answer(h) ? SIZE_MAX : (size_t)b->queue_limit, NULL);
}

/* limit: how many unacknowledged messages the peer may have with this one;
 * origin: the session that a fire-and-forget command to a node counts for
 * (broker_share_release when the node acknowledges it), or NULL. */
int broker_send_frames_max(mdg_broker *b, peer *p, mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk,
                           size_t limit, const uint8_t *origin)
{
    if (!mdg_kind_sequenced(h->kind)) {
        /* never ahead of the numbered ones this turn gave the peer (a
         * goodbye after the last replies) */
        if (broker_unlist(b, b->to_flush, p))
            broker_flush_peer(b, p);
        h->seq = 0;
        mdg_chan_stamp(&p->chan, h);
        if (p->attached)
            broker_count_out(b, h->kind, params, bulk);
        int rc = p->attached ? chan_send(p, h, params, bulk) : mdg_fail(MDG_ECLOSED, "peer is away");
        zmq_msg_close(params);
        if (bulk && (rc == MDG_EAGAIN || (rc && !p->attached)))
            zmq_msg_close(bulk);
        else if (rc == 0)
            mdg_chan_ack_told(&p->chan, h->ack); /* an ACK (or a hello's answer) says it too */
        return rc;
    }
    if (p->chan.len >= limit) {
        char who[MDG_KEY_B64_LEN + 1];
        pk_short(p->pk, who);
        zmq_msg_close(params);
        if (bulk)
            zmq_msg_close(bulk);
        broker_count(&b->metrics.refused[REFUSED_QUEUE_FULL], 1);
        mdg_log(MDG_LOG_ERROR, "%s '%s' to %s refused: %zu messages already wait for it (queue_limit)",
                mdg_kind_name(h->kind), h->command, who, p->chan.len);
        return mdg_fail(MDG_EAGAIN, "the receiver's queue is full (%zu messages unacknowledged)", p->chan.len);
    }
    /* the params are copied into the kept message itself (one allocation
     * for both); m.params is a libzmq message over those bytes that owns
     * nothing, safe because every send copies them into a frame of its own */
    size_t plen = zmq_msg_size(params);
    bool pooled = plen <= KEPT_POOLED_PARAMS;
    kept *k = pooled ? mdg_pool_alloc(&b->kept_pool) : calloc(1, sizeof *k + plen);
    if (!k) {
        zmq_msg_close(params);
        if (bulk)
            zmq_msg_close(bulk);
        return mdg_fail(MDG_ENOMEM, "out of memory queueing a message");
    }
    broker_count_out(b, h->kind, params, bulk);
    k->pooled = pooled;
    k->m.h = *h;
    if (origin) {
        k->counted = true;
        memcpy(k->origin, origin, SESSION_ID_BYTES);
    }
    memcpy(k->params, zmq_msg_data(params), plen);
    zmq_msg_init_data(&k->m.params, k->params, plen, NULL, NULL);
    zmq_msg_close(params);
    if (bulk) {
        k->m.has_bulk = true;
        zmq_msg_init(&k->m.bulk);
        zmq_msg_move(&k->m.bulk, bulk);
        zmq_msg_close(bulk);
    }
    mdg_chan_append(&p->chan, &k->m);
    h->seq = k->m.h.seq;
    /* sent at the end of this turn of the loop, with whatever else the turn
     * gives this peer: one frame for many, never a wait for a lone one */
    if (p->attached)
        broker_list(b, b->to_flush, p);
    return 0;
}

/* A node's session ends with fire-and-forget commands it has not
 * acknowledged: each sender still connected is told (a notice), since the
 * node may not have run them. */
void broker_free_kept(mdg_broker *b, peer *p)
{
    for (mdg_chan_msg *m = p->chan.head; m; m = m->next) {
        kept *k = (kept *)m;
        peer *sender = k->counted ? mdg_map_get(b->sessions, k->origin, SESSION_ID_BYTES) : NULL;
        if (sender) {
            char who[MDG_KEY_B64_LEN + 1], why[400];
            mdg_pk_to_b64(p->pk, who);
            snprintf(why, sizeof why, "'%s' may not have reached node %s: its session ended before it acknowledged it",
                     m->h.command, who);
            broker_send_error(b, sender->rid, sender->rid_len, sender, 0, m->h.command, why);
        }
    }
    mdg_chan_reset(&p->chan);
}

/* The peer has everything up to ack: forget it (never what was not sent). */
void broker_trim_kept(mdg_broker *b, peer *p, uint64_t ack)
{
    if (mdg_chan_acked(&p->chan, ack))
        broker_room_made(b, p);
}

/* Room again in a peer's queue: a peer held because its own queue was full
 * goes on, and nodes paused for its sake may send again once it has caught
 * up. */
void broker_room_made(mdg_broker *b, peer *p)
{
    if (p->held_head && p->chan.len < broker_over_limit(b, 8))
        mdg_map_put(b->ready, p->session_id, SESSION_ID_BYTES, p);
    if (p->paused_fwds && p->chan.len <= broker_over_limit(b, 5))
        broker_resume_paused_fwds(b, p);
}

/* Encode and send; params taken, bulk copied. With no peer (a native link
 * without a session) the message goes unsequenced to the routing id: then
 * it is only ever a notice (corr 0), the one unnumbered error clients
 * accept (docs/protocol.md 6.1). */
int broker_send_to(mdg_broker *b, const uint8_t *rid, size_t rid_len, peer *p, int kind,
                   uint64_t corr, uint32_t flags, const char *command, mdg_params *params,
                   const void *bulk, size_t bulk_len)
{
    mdg_header h = {.kind = (uint8_t)kind, .corr = p ? corr : 0, .flags = flags};
    zmq_msg_t pm, bm;
    uint8_t stack[MDG_PARAMS_STACK];
    int rc = mdg_header_set_command(&h, command);
    if (rc == 0)
        rc = mdg_params_encode_at(params, stack, sizeof stack, &pm);
    mdg_params_destroy(&params);
    if (rc)
        return rc;
    if (bulk_len) {
        zmq_msg_init_size(&bm, bulk_len);
        memcpy(zmq_msg_data(&bm), bulk, bulk_len);
    }
    if (p)
        return broker_send_frames(b, p, &h, &pm, bulk_len ? &bm : NULL);
    return broker_native_notice(b, rid, rid_len, &h, &pm, bulk_len ? &bm : NULL);
}

/* An error for the sender of a message: a reply when it waits for one
 * (corr), else a notice its error hook sees. */
void broker_send_error(mdg_broker *b, const uint8_t *rid, size_t rid_len, peer *p, uint64_t corr,
                       const char *command, const char *text)
{
    mdg_params *e = mdg_params_new();
    if (!e)
        return;
    mdg_params_set_str(e, "error", text);
    mdg_params_set_str(e, "command", command ? command : "");
    broker_send_to(b, rid, rid_len, p, MDG_K_ERROR, corr, 0, "", e, NULL, 0);
}

/* -------------------------------------------------------------- receiving */

/* Ask a peer whose link is fine to say hello again: the resume that
 * follows makes it resend what we have not taken (an unnumbered notice
 * outside its channel: it may have no room, and it is about the session
 * itself). */
static void ask_resend(mdg_broker *b, peer *p, const char *text)
{
    mdg_params *e = mdg_params_new();
    mdg_header h = {.kind = MDG_K_ERROR};
    zmq_msg_t pm;
    if (e && p->attached && mdg_params_set_str(e, "error", text) == 0 && mdg_params_set_bool(e, "resync", true) == 0 &&
        mdg_params_encode(e, &pm) == 0) {
        p->transport->send(b, p, &h, &pm, NULL);
        zmq_msg_close(&pm);
    }
    mdg_params_destroy(&e);
}

/* Process one numbered (or unnumbered) message of a peer in order. False
 * when it must wait because where it goes is full: it is then neither
 * counted nor acknowledged. Duplicates (resent after a resume) are dropped. */
static bool process(mdg_broker *b, peer *p, mdg_inbound *in, const char *who)
{
    const mdg_header *h = &in->h;
    /* a peer without acknowledgements numbers nothing; a numbered kind
     * without its number never gets here (handle_message refuses it) */
    int verdict = mdg_chan_check(&p->chan, h);
    bool numbered = verdict == MDG_CHAN_NEXT;
    if (verdict == MDG_CHAN_DUPLICATE) {
        mdg_log(MDG_LOG_DEBUG, "duplicate seq %llu from %s dropped", (unsigned long long)h->seq, who);
        return true;
    }
    if (verdict == MDG_CHAN_GAP) {
        /* something before it was lost: never skip it; the client is asked
         * to say hello again, which makes it resend from what we have */
        mdg_log(MDG_LOG_ERROR, "seq gap from %s: expected %llu, got %llu; dropped, asking for a resend", who,
                (unsigned long long)p->chan.rx_seq + 1, (unsigned long long)h->seq);
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
    if (p->chan.len >= broker_over_limit(b, 8) &&
        !(p->role == MDG_ROLE_NODE && (h->kind == MDG_K_REPLY || h->kind == MDG_K_ERROR)))
        return false;
    /* Counted as received before it is handled, so that what the handling
     * sends to this peer (a reply, a refusal) acknowledges it at once
     * instead of a separate ACK later. A message that must wait is taken
     * back below; nothing is sent to its sender in that case. */
    uint64_t prev_rx = p->chan.rx_seq;
    if (numbered)
        mdg_chan_received(&p->chan, h->seq);
    bool done = true;
    switch (h->kind) {
    case MDG_K_CMD:
        done = broker_dispatch_command(b, p, in);
        break;
    case MDG_K_REPLY:
    case MDG_K_ERROR:
        if (p->role == MDG_ROLE_NODE) {
            done = broker_route_node_reply(b, p, in);
        } else {
            mdg_log(MDG_LOG_WARN, "%s from user %s refused: users do not answer calls", mdg_kind_name(h->kind), who);
            broker_send_error(b, p->rid, p->rid_len, p, 0, "", "replies are only accepted from the node a call went to");
        }
        break;
    default:
        mdg_log(MDG_LOG_WARN, "unexpected %s from %s dropped", mdg_kind_name(h->kind), who);
    }
    if (!done)
        mdg_chan_received(&p->chan, prev_rx); /* taken back: it comes again */
    else if (numbered && mdg_chan_ack_due(&p->chan))
        /* at the end of this turn, unless what the turn sends p carries it
         * (an ACK now would send what p was given so far as a frame of its
         * own) */
        broker_list(b, b->to_flush, p);
    else if (numbered && mdg_chan_ack_owed(&p->chan)) /* not when a reply carried it */
        broker_list(b, b->owed_ack, p);
    return done;
}

/* A message that must wait: kept in order behind the others held. */
static void hold(mdg_broker *b, peer *p, mdg_inbound *in)
{
    if (p->transport->acks && p->held_len >= (size_t)b->hold_limit) {
        /* the broker's own bound, whatever the sender's queue_limit: not
         * taken nor acknowledged, asked for again once the held ones went
         * on (a peer without acknowledgements is bounded by its listener) */
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
    mdg_inbound_move(&hm->in, in);
    if (!p->held_head) {
        char who[MDG_KEY_B64_LEN + 1];
        pk_short(p->pk, who);
        mdg_log(MDG_LOG_DEBUG, "%s %s paused: where its %s '%s' goes is full", p->role == MDG_ROLE_NODE ? "node" : "user",
                who, mdg_kind_name(hm->in.h.kind), hm->in.h.command);
    }
    if (p->held_tail)
        p->held_tail->next = hm;
    else
        p->held_head = hm;
    p->held_tail = hm;
    p->held_len++;
    mdg_map_put(b->holding, p->session_id, SESSION_ID_BYTES, p);
}

/* A message of a session, decoded by its listener (what it holds is the
 * caller's, closed after): processed now, or held behind those already
 * waiting. */
void broker_receive(mdg_broker *b, peer *p, mdg_inbound *in, const char *who)
{
    broker_count_in(b, in);
    if (p->held_head || !process(b, p, in, who))
        hold(b, p, in);
}

/* Retry a peer's held messages, in order, until one must wait again. */
static void release_held(mdg_broker *b, peer *p)
{
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    while (p->held_head) {
        held *hm = p->held_head;
        if (!process(b, p, &hm->in, who))
            return;
        p->held_head = hm->next;
        if (!p->held_head)
            p->held_tail = NULL;
        p->held_len--;
        mdg_inbound_close(&hm->in);
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
void broker_release_ready(mdg_broker *b)
{
    peer *p;
    while ((p = mdg_map_pop(b->ready)) != NULL)
        if (mdg_map_get(b->holding, p->session_id, SESSION_ID_BYTES) == p)
            release_held(b, p);
}

/* ---------------------------------------------------------------- timers */

int broker_on_ack_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    peer *p;
    while ((p = broker_list_pop(b, b->owed_ack)) != NULL)
        if (p->attached && mdg_chan_ack_owed(&p->chan))
            broker_send_to(b, NULL, 0, p, MDG_K_ACK, 0, 0, "", NULL, NULL, 0);
    return 0;
}

static void collect(void *value, void *arg)
{
    mdg_ptrs_push(arg, value);
}

/* Peers that waited for room: their held messages, then what libzmq would
 * not take. Collected first: processing changes the maps. */
int broker_on_backlog_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    mdg_ptrs ps = {0};
    broker_release_ready(b);
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
            broker_flush_peer(b, ps.v[i]); /* puts it back if its pipe is still full */
    }
    mdg_ptrs_free(&ps);
    return 0;
}
