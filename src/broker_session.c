/* broker_session.c - the session table: a session opened by a hello (or
 * resumed by one that names it, from the same key), attached to a link,
 * detached when its link drops or goes silent, and closed after its grace
 * period, by a goodbye, or when the broker stops. The link monitor says
 * when a connection drops; the grace timer closes what was not resumed. */
#include "broker_internal.h"
#include "fleet.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define MONITOR_FAILS_MAX 1000             /* accept failures read per call: libzmq may spin */

/* Routing ids are per socket: each listener's are looked up apart. */
static mdg_map *rids_of(const peer *p)
{
    return p->listener->rids;
}

static void free_state(const broker_transport *tp, void *state)
{
    if (tp->free_state && state)
        tp->free_state(state);
}

/* The counts other threads may read (mdg_broker_session_count and
 * mdg_broker_node_count), published whenever the tables change. */
static void publish_counts(mdg_broker *b)
{
    size_t nodes = mdg_map_size(b->nodes);
    __atomic_store_n(&b->node_count, nodes, __ATOMIC_RELAXED);
    __atomic_store_n(&b->user_count, mdg_map_size(b->sessions) - nodes, __ATOMIC_RELAXED);
}

/* A session ends for good: out of every table, the application's hook
 * called, its calls to nodes failed or ended, what it had not taken
 * dropped (loudly). */
void broker_close_session(mdg_broker *b, peer *p, const char *why)
{
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    mdg_log(MDG_LOG_INFO, "%s %s: session closed: %s", p->role == MDG_ROLE_NODE ? "node" : "user", who, why);
    if (broker_unlist(b, b->to_flush, p))
        broker_flush_peer(b, p); /* what this turn gave it still goes */
    mdg_map *rids = rids_of(p);
    if (mdg_map_get(rids, p->rid, p->rid_len) == p)
        mdg_map_take(rids, p->rid, p->rid_len);
    if (p->stale_rid_len && mdg_map_get(rids, p->stale_rid, p->stale_rid_len) == p)
        mdg_map_take(rids, p->stale_rid, p->stale_rid_len);
    if (p->attached && mdg_map_get(b->by_fd, &p->fd, sizeof p->fd) == p)
        mdg_map_take(b->by_fd, &p->fd, sizeof p->fd);
    mdg_map_take(b->sessions, p->session_id, SESSION_ID_BYTES);
    bool listed = p->role == MDG_ROLE_NODE && mdg_map_get(b->nodes, p->pk, MDG_KEY_BYTES) == p;
    if (listed)
        mdg_map_take(b->nodes, p->pk, MDG_KEY_BYTES);
    publish_counts(b);
    broker_unlist(b, b->owed_ack, p);
    mdg_map_take(b->backlog, p->session_id, SESSION_ID_BYTES);
    if (p->role == MDG_ROLE_NODE) {
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
        mdg_inbound_close(&hm->in);
        free(hm);
    }
    broker_drop_fwds(b, p);
    /* the other brokers withdraw it, told after the errors for their calls
     * to it (above): on the pair channel those come first and answer the
     * calls, instead of finding them failed by the withdrawal */
    if (listed && b->fleet)
        fleet_node_left(b->fleet, p->pk);
    if (p->chan.len)
        mdg_log(MDG_LOG_WARN, "%s %s: %zu queued message(s) not delivered: its session closed (%s)",
                p->role == MDG_ROLE_NODE ? "node" : "user", who, p->chan.len, why);
    broker_free_kept(b, p);
    free_state(p->transport, p->transport_state);
    free(p);
}

/* The link dropped: keep the session (and what it has not acknowledged)
 * for its grace period, so the client can resume it on a new link. */
void broker_detach(mdg_broker *b, peer *p, const char *why)
{
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    mdg_log(MDG_LOG_INFO, "%s %s: link lost (%s); session kept %d ms for a resume",
            p->role == MDG_ROLE_NODE ? "node" : "user", who, why,
            p->role == MDG_ROLE_NODE ? b->node_grace_ms : b->grace_ms);
    /* keep reading what the old link delivered (its rid stays mapped) */
    mdg_map *rids = rids_of(p);
    if (p->stale_rid_len && mdg_map_get(rids, p->stale_rid, p->stale_rid_len) == p &&
        (p->stale_rid_len != p->rid_len || memcmp(p->stale_rid, p->rid, p->rid_len) != 0))
        mdg_map_take(rids, p->stale_rid, p->stale_rid_len);
    memcpy(p->stale_rid, p->rid, p->rid_len);
    p->stale_rid_len = p->rid_len;
    if (mdg_map_get(b->by_fd, &p->fd, sizeof p->fd) == p)
        mdg_map_take(b->by_fd, &p->fd, sizeof p->fd);
    broker_unlist(b, b->owed_ack, p);
    mdg_map_take(b->backlog, p->session_id, SESSION_ID_BYTES);
    p->attached = false;
    p->silent = false;
    p->detached_at = mdg_now_ms();
    mdg_chan_rewind(&p->chan); /* whatever was not acknowledged goes again */
}

/* Attach a session to a (new) link. */
static int attach(mdg_broker *b, peer *p, const uint8_t *rid, size_t rid_len, int fd)
{
    memcpy(p->rid, rid, rid_len);
    p->rid_len = (uint8_t)rid_len;
    p->fd = fd;
    if (mdg_map_put(rids_of(p), rid, rid_len, p) || mdg_map_put(b->by_fd, &p->fd, sizeof p->fd, p)) {
        mdg_map_take(rids_of(p), rid, rid_len);
        return MDG_ENOMEM;
    }
    p->attached = true;
    p->silent = false;
    p->last_rx = mdg_now_ms();
    mdg_map_take(p->listener->stray, &fd, sizeof fd); /* should it lose the session, that is said again */
    return 0;
}

/* A message on a link without a session is answered each time but logged
 * once per link: a client that keeps on sending would fill the log. True
 * the first time on the link with socket fd (until it drops or has a
 * session), or when that cannot be told. */
bool broker_stray_first(broker_listener *l, int fd)
{
    if (fd < 0 || mdg_map_get(l->stray, &fd, sizeof fd))
        return fd < 0;
    mdg_map_put(l->stray, &fd, sizeof fd, l);
    return true;
}

static void collect_node(const uint8_t node_pk[MDG_KEY_BYTES], bool local, void *arg)
{
    cbor_item_t *list = arg;
    cbor_item_t *pk = cbor_build_bytestring(node_pk, MDG_KEY_BYTES);
    (void)local;
    if (pk) {
        cbor_array_push(list, pk);
        cbor_decref(&pk);
    }
}

/* The default resource offer: the keys of the connected nodes (in a
 * fleet, every broker's). */
static mdg_params *default_offer(mdg_broker *b)
{
    mdg_params *o = mdg_params_new();
    cbor_item_t *list = cbor_new_definite_array(mdg_broker_each_node(b, NULL, NULL));
    if (!o || !list) {
        mdg_params_destroy(&o);
        if (list)
            cbor_decref(&list);
        return NULL;
    }
    mdg_broker_each_node(b, collect_node, list);
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
        mdg_params_set_int(w, "ack", (int64_t)p->chan.rx_seq);
        /* the largest frame we take: a client refuses a larger message
         * itself (libzmq would drop its link, and it would send it again) */
        mdg_params_set_int(w, "max_message", b->max_message);
        mdg_params_set_int(w, "max_batch", MDG_MAX_BATCH);
    }
    broker_send_to(b, NULL, 0, p, MDG_K_WELCOME, 0, 0, "", w, NULL, 0);
}

/* l: the listener the hello came on; state: its transport's own state of
 * this peer (taken), or NULL. */
void broker_open_session(mdg_broker *b, broker_listener *l, const uint8_t *rid, size_t rid_len,
                         const char *user_id, int fd, const hello_terms *terms, void *state)
{
    const broker_transport *tp = l->ops->transport;
    peer *p = calloc(1, sizeof *p);
    if (!p || mdg_pk_from_b64(p->pk, user_id + 1) != 0) {
        mdg_log(MDG_LOG_ERROR, "cannot open a session: out of memory");
        free_state(tp, state);
        free(p);
        return;
    }
    p->listener = l;
    p->transport = tp;
    p->transport_state = state;
    p->broker = b;
    broker_chan_init(p);
    snprintf(p->user_id, sizeof p->user_id, "%s", user_id);
    p->role = user_id[0] == 'N' ? MDG_ROLE_NODE : MDG_ROLE_USER;
    p->silence_ms = terms->silence_ms;
    p->chan.batch_max = terms->max_batch;
    p->last_rx = mdg_now_ms();
    randombytes_buf(p->session_id, sizeof p->session_id);
    if (p->role == MDG_ROLE_NODE) {
        /* one live connection per node: a restarted node replaces it, and
         * calls waiting on the old one fail to their callers */
        peer *old = mdg_map_get(b->nodes, p->pk, MDG_KEY_BYTES);
        if (old)
            broker_close_session(b, old, "replaced by a new connection");
    }
    if (attach(b, p, rid, rid_len, fd) || mdg_map_put(b->sessions, p->session_id, SESSION_ID_BYTES, p) ||
        (p->role == MDG_ROLE_NODE && mdg_map_put(b->nodes, p->pk, MDG_KEY_BYTES, p))) {
        mdg_log(MDG_LOG_ERROR, "cannot open a session: out of memory");
        mdg_map_take(rids_of(p), rid, rid_len);
        mdg_map_take(b->by_fd, &p->fd, sizeof p->fd);
        mdg_map_take(b->sessions, p->session_id, SESSION_ID_BYTES);
        free_state(tp, state);
        free(p);
        return;
    }
    publish_counts(b);
    if (p->role == MDG_ROLE_NODE && b->fleet) /* the other brokers route to it */
        fleet_node_joined(b->fleet, p->pk);
    broker_count(&b->metrics.opened[p->role], 1);
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
        broker_send_to(b, NULL, 0, p, MDG_K_CMD, 0, 0, "resource_offer", offer, NULL, 0);
}

/* A hello that names a session: resume it on this link when it belongs to
 * the same key (never another's: the id alone proves nothing), then send
 * what the client has not acknowledged. False when there is nothing to
 * resume (the client gets a new session). */
bool broker_resume_session(mdg_broker *b, broker_listener *l, const uint8_t *rid, size_t rid_len,
                           const char *uid, int fd, const uint8_t *sid, size_t sid_len, uint64_t ack,
                           const hello_terms *terms)
{
    peer *p = sid_len == SESSION_ID_BYTES ? mdg_map_get(b->sessions, sid, sid_len) : NULL;
    if (!p) {
        broker_count(&b->metrics.lost, 1); /* the client is told its session is lost */
        return false;
    }
    if (strcmp(p->user_id, uid) != 0) {
        mdg_log(MDG_LOG_WARN, "hello from %.12s names a session of another key: refused", uid + 1);
        broker_count(&b->metrics.refused[REFUSED_HELLO], 1);
        return false;
    }
    if (p->listener != l) {
        mdg_log(MDG_LOG_WARN, "hello from %.12s names a session of the other protocol: refused", uid + 1);
        broker_count(&b->metrics.refused[REFUSED_HELLO], 1);
        return false;
    }
    if (p->attached) /* the old link has not been seen to drop yet */
        broker_detach(b, p, "superseded by a new link");
    if (attach(b, p, rid, rid_len, fd) != 0) {
        broker_close_session(b, p, "out of memory");
        return false;
    }
    p->silence_ms = terms->silence_ms;
    p->chan.batch_max = terms->max_batch; /* before what goes again now */
    mdg_chan_resume(&p->chan, ack); /* everything kept goes again, but what the client has */
    broker_room_made(b, p);
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    mdg_log(MDG_LOG_INFO, "%s %s resumed its session; resending %zu message(s)",
            p->role == MDG_ROLE_NODE ? "node" : "user", who, p->chan.len);
    welcome(b, p, true);
    broker_count(&b->metrics.resumes, 1);
    broker_flush_peer(b, p);
    if (p->role == MDG_ROLE_USER && b->hooks.session_recovered)
        b->hooks.session_recovered(b, p->pk, p->data, b->hook_arg);
    return true;
}

/* Connection events: connections counted for the limit, listeners bound,
 * accepts failed, and drops: a dropped connection's session goes (the
 * reliability layer keeps it for a grace period instead). */
int broker_on_monitor(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    mdg_frames f;
    /* every listener's events; fds are unique across them */
    for (int i = 0; i < BROKER_LISTENERS; i++) {
        broker_listener *l = &b->listeners[i];
        int fails = 0;
        while (l->mon && fails < MONITOR_FAILS_MAX && mdg_frames_recv(l->mon, &f) == 0) {
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
                broker_listening(l, (int)fd);
            } else if (event == ZMQ_EVENT_ACCEPT_FAILED) {
                fails++;
                broker_accept_failed(b, l, (int)fd);
            } else if (event == ZMQ_EVENT_DISCONNECTED) {
                b->live_conns--;
                int ifd = (int)fd;
                mdg_map_take(l->stray, &ifd, sizeof ifd);
                peer *p = mdg_map_get(b->by_fd, &ifd, sizeof ifd);
                if (p)
                    broker_detach(b, p, "connection lost");
            }
        }
        if (fails >= MONITOR_FAILS_MAX) /* the rest next turn: it is a quiet socket */
            mdg_loop_look_again(b->loop, l->mon);
    }
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
    if (p->transport->resumable && !p->transport->resumable(p))
        grace = 0;
    if (p->attached && e->now - p->last_rx > p->silence_ms) {
        /* silent past its heartbeats: detached like a dropped link (no
         * libzmq heartbeats at the broker: their timers cost O(n) each) */
        char why[64];
        snprintf(why, sizeof why, "silent for %lld ms", (long long)(e->now - p->last_rx));
        broker_detach(e->b, p, why);
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
int broker_on_grace_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    expired e = {.b = b, .now = mdg_now_ms()};
    if (b->n_spare < SPARE_FDS)
        broker_take_spares(b); /* given up when descriptors ran out */
    mdg_map_each(b->sessions, find_expired, &e);
    for (size_t i = 0; i < e.found.n; i++)
        broker_close_session(b, e.found.v[i], "not resumed within its grace period");
    if (b->tombstones) {
        e.found.n = 0;
        mdg_map_each(b->fwds, find_old_tombstone, &e);
        for (size_t i = 0; i < e.found.n; i++)
            broker_fwd_free(b, e.found.v[i]);
    }
    mdg_ptrs_free(&e.found);
    return 0;
}
