/* broker_route.c - where a message goes: a command to the broker's own
 * handler (checked against the application's table, stamped with who sent
 * it), or forwarded to a node; a node's reply routed back to the session
 * that called; the replies of the broker's handlers. Fairness: one session
 * has at most node_window messages at a node at once (its share), and a
 * caller that does not read has its nodes paused (MDG_FLOW_COMMAND), then its
 * calls ended. In a fleet (fleet.h), a node of another broker is reached
 * the same way through that broker's pair channel, and calls from other
 * brokers to our nodes come in here too. */
#include "broker_internal.h"
#include "fleet.h"
#include "params_view.h"

#include <stdlib.h>
#include <string.h>

#define PAUSE_OVERSHOOT 10000              /* replies a paused call may still bring: a client's default queue_limit */

/* ------------------------------------------------------- shares of nodes */

static void share_key(uint8_t key[SESSION_ID_BYTES + MDG_KEY_BYTES], const uint8_t *sid, const uint8_t *node_pk)
{
    memcpy(key, sid, SESSION_ID_BYTES);
    memcpy(key + SESSION_ID_BYTES, node_pk, MDG_KEY_BYTES);
}

/* A session alone at a node (no other session of this broker has given it a
 * message for SHARED_MS) may have SOLO_WINDOWS times node_window there:
 * nobody waits behind it, and a deep pipeline from one client is what
 * fills the node's frames. A message from any other session makes the
 * window node_window again for everyone, at once and for SHARED_MS after
 * that session's last. */
#define SOLO_WINDOWS 4
#define SHARED_MS 100

/* One more message of a session at a node (ns: who has lately given that
 * node messages; NULL when not known): 0, MDG_EAGAIN when its share is
 * full, or MDG_ENOMEM. */
static int share_take(mdg_broker *b, const uint8_t *sid, const uint8_t *node_pk, node_sharing *ns)
{
    uint8_t key[SESSION_ID_BYTES + MDG_KEY_BYTES];
    share_key(key, sid, node_pk);
    int64_t now = ns ? mdg_now_ms() : 0;
    if (ns) { /* a message that waits for room counts too: its session is about */
        if (memcmp(ns->last_sharer, sid, SESSION_ID_BYTES) != 0) {
            ns->shared_until = ns->last_shared + SHARED_MS; /* the other was last here then */
            memcpy(ns->last_sharer, sid, SESSION_ID_BYTES);
        }
        ns->last_shared = now;
    }
    share *s = mdg_map_get(b->shares, key, sizeof key);
    if (s && s->used >= b->node_window &&
        (!ns || s->used >= b->node_window * SOLO_WINDOWS || now < ns->shared_until))
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
void broker_share_release(mdg_broker *b, const uint8_t *sid, const uint8_t *node_pk)
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

/* -------------------------------------------------------- forwarded calls */

/* Collect forwarded calls matching a predicate (the map cannot change
 * while it is walked). */
typedef struct fwd_scan {
    const uint8_t *key;
    bool by_node; /* match node_pk (and via), else session_id */
    const struct fleet_member *via; /* by_node: the node's broker (NULL: this one) */
    mdg_ptrs found;
} fwd_scan;

static void scan_one(void *value, void *arg)
{
    fwd *f = value;
    fwd_scan *s = arg;
    bool match = s->by_node ? f->via == s->via && memcmp(f->node_pk, s->key, MDG_KEY_BYTES) == 0
                            : memcmp(f->session_id, s->key, SESSION_ID_BYTES) == 0;
    if (match)
        mdg_ptrs_push(&s->found, f);
}

/* A forwarded call is over: forgotten, and its place in its caller's share
 * of the node freed (an ended one freed it when it ended). */
void broker_fwd_free(mdg_broker *b, fwd *f)
{
    mdg_map_take_u64(b->fwds, f->id);
    if (f->from)
        fleet_route_untrack(b->fleet, f);
    if (f->ended) {
        b->tombstones--;
    } else {
        peer *caller = f->paused ? mdg_map_get(b->sessions, f->session_id, SESSION_ID_BYTES) : NULL;
        if (caller)
            caller->paused_fwds--;
        broker_share_release(b, f->session_id, f->node_pk);
    }
    mdg_pool_free(&b->fwd_pool, f);
}

/* Tell a node about one of its calls (MDG_FLOW_COMMAND, numbered like any
 * command): "pause" its replies (the caller is not reading), "resume"
 * them, or "end" the call (the caller has gone or stopped reading for too
 * long: the node's further replies to it fail locally). Never refused for
 * lack of room: at most a few per call. Sent only to nodes whose transport
 * knows it (flow). */
static void send_flow(mdg_broker *b, peer *node, uint64_t id, const char *state, const char *reason)
{
    mdg_params *fp = node->transport->flow ? mdg_params_new() : NULL;
    mdg_header h = {.kind = MDG_K_CMD};
    zmq_msg_t pm;
    if (fp && mdg_params_set_int(fp, "call", (int64_t)id) == 0 && mdg_params_set_str(fp, "state", state) == 0 &&
        (!reason || mdg_params_set_str(fp, "reason", reason) == 0) && mdg_header_set_command(&h, MDG_FLOW_COMMAND) == 0 &&
        mdg_params_encode(fp, &pm) == 0)
        broker_send_frames_max(b, node, &h, &pm, NULL, SIZE_MAX, NULL);
    mdg_params_destroy(&fp);
}

/* The broker ends a call whose caller has gone or does not read: the
 * caller (if any) gets a final error, the node is told to stop, and the
 * record stays a while as a tombstone so that the replies already on their
 * way are dropped quietly instead of each drawing a refusal. */
static void end_fwd(mdg_broker *b, fwd *f, peer *caller, const char *why)
{
    if (caller)
        broker_send_error(b, caller->rid, caller->rid_len, caller, f->user_corr, f->command, why);
    peer *node = f->via ? NULL : mdg_map_get(b->nodes, f->node_pk, MDG_KEY_BYTES);
    if (node)
        send_flow(b, node, f->id, "end", why);
    else if (f->via && f->via->up) /* the node's broker ends it there */
        fleet_send_params(b->fleet, f->via, MDG_K_CMD, f->id, 0, FLEET_END, NULL);
    if (f->paused && caller)
        caller->paused_fwds--;
    f->paused = false;
    f->ended = true;
    f->ended_at = mdg_now_ms();
    b->tombstones++;
    broker_share_release(b, f->session_id, f->node_pk);
}

void broker_end_fwd(mdg_broker *b, fwd *f, const char *why)
{
    if (!f->ended)
        end_fwd(b, f, NULL, why);
}

/* Pause or resume call f at its node: a local node is told itself, one at
 * another broker through that broker (FLEET_FLOW). */
static void flow_fwd(mdg_broker *b, fwd *f, const char *state)
{
    if (f->via) {
        mdg_params *p = mdg_params_new();
        if (p && mdg_params_set_str(p, "state", state) == 0)
            fleet_send_params(b->fleet, f->via, MDG_K_CMD, f->id, 0, FLEET_FLOW, p);
        else
            mdg_params_destroy(&p);
        return;
    }
    peer *node = mdg_map_get(b->nodes, f->node_pk, MDG_KEY_BYTES);
    if (node && node->transport->flow)
        send_flow(b, node, f->id, state, NULL);
}

/* At the node's broker: the caller's broker pauses or resumes call f (one
 * that came from it) because its caller is not reading, or reads again. */
void broker_fleet_flow(mdg_broker *b, fwd *f, const char *state)
{
    peer *node = mdg_map_get(b->nodes, f->node_pk, MDG_KEY_BYTES);
    if (!f->ended && node && node->transport->flow)
        send_flow(b, node, f->id, state, NULL);
}

/* A session that was not reading has caught up: the nodes paused for it
 * may send its replies again. */
void broker_resume_paused_fwds(mdg_broker *b, peer *p)
{
    fwd_scan s = {.key = p->session_id};
    mdg_map_each(b->fwds, scan_one, &s);
    for (size_t i = 0; i < s.found.n; i++) {
        fwd *f = s.found.v[i];
        if (f->paused)
            flow_fwd(b, f, "resume");
        f->paused = false;
    }
    p->paused_fwds = 0;
    mdg_ptrs_free(&s.found);
}

/* A peer has gone. A node: calls waiting on it are failed to their
 * callers, so no one waits forever. A user: its calls to nodes are ended
 * (the nodes are told to stop their replies). */
void broker_drop_fwds(mdg_broker *b, peer *p)
{
    if (p->role == MDG_ROLE_NODE) {
        broker_drop_node_fwds(b, p->pk, NULL);
        return;
    }
    fwd_scan s = {.key = p->session_id};
    mdg_map_each(b->fwds, scan_one, &s);
    for (size_t i = 0; i < s.found.n; i++) {
        fwd *f = s.found.v[i];
        if (!f->ended)
            end_fwd(b, f, NULL, "the caller's session has closed");
    }
    mdg_ptrs_free(&s.found);
}

void broker_fail_fwd(mdg_broker *b, fwd *f, const char *why)
{
    peer *caller = f->ended || f->from ? NULL : mdg_map_get(b->sessions, f->session_id, SESSION_ID_BYTES);
    if (caller)
        broker_send_error(b, caller->rid, caller->rid_len, caller, f->user_corr, f->command, why);
    else if (f->from && !f->ended) /* the caller is at another broker */
        fleet_send_error(b->fleet, f->from, f->user_corr, f->command, why);
    broker_fwd_free(b, f);
}

void broker_drop_node_fwds(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], struct fleet_member *via)
{
    char who[MDG_KEY_B64_LEN + 1], why[160];
    mdg_pk_to_b64(pk, who);
    snprintf(why, sizeof why, "node %s went away before answering", who);
    fwd_scan s = {.key = pk, .by_node = true, .via = via};
    mdg_map_each(b->fwds, scan_one, &s);
    for (size_t i = 0; i < s.found.n; i++)
        broker_fail_fwd(b, s.found.v[i], why);
    mdg_ptrs_free(&s.found);
}

/* -------------------------------------------------------------- dispatch */

/* A message not taken: logged, and its sender told why. */
static void refuse(mdg_broker *b, peer *p, const mdg_header *h, const char *why)
{
    char who[MDG_KEY_B64_LEN + 1];
    pk_short(p->pk, who);
    mdg_log(MDG_LOG_WARN, "'%s' from %s %s refused: %s", h->command,
            p->role == MDG_ROLE_NODE ? "node" : "user", who, why);
    broker_send_error(b, p->rid, p->rid_len, p, h->corr, h->command, why);
    broker_count(&b->metrics.refused[REFUSED_COMMAND], 1);
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
    if (!broker_on_loop(b))
        return broker_queue_send(b, false, m->session_id, SESSION_ID_BYTES, &h, results, bulk, bulk_len);
    peer *p = mdg_map_get(b->sessions, m->session_id, SESSION_ID_BYTES);
    if (!p) {
        mdg_params_destroy(&results);
        return mdg_fail(MDG_ECLOSED, "the session that sent '%s' has closed", m->h.command);
    }
    return broker_send_to(b, NULL, 0, p, kind, m->h.corr, flags, "", results, bulk, bulk_len);
}

/* The provenance params (docs/protocol.md section 7). Every command a peer
 * sends, user or node, whatever protocol it speaks, to a broker handler or
 * forwarded to a node, passes here: whatever the sender wrote under these
 * names is removed, then the broker writes its own values, by the sender's
 * role:
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

/* The peer has queue_limit messages unacknowledged: it takes no more. */
static bool peer_full(const mdg_broker *b, const peer *p)
{
    return p->chan.len >= (size_t)b->queue_limit;
}

/* A forward record for call m of session p to node_pk: in b->fwds under
 * the next id, or NULL when out of memory. */
static fwd *new_fwd(mdg_broker *b, const uint8_t *node_pk, const uint8_t *session_id, uint64_t corr,
                    const char *command)
{
    fwd *f = mdg_pool_alloc(&b->fwd_pool);
    if (!f || mdg_map_put_u64(b->fwds, b->next_fwd + 1, f) != 0) {
        mdg_pool_free(&b->fwd_pool, f);
        return NULL;
    }
    f->id = ++b->next_fwd;
    memcpy(f->node_pk, node_pk, MDG_KEY_BYTES);
    memcpy(f->session_id, session_id, SESSION_ID_BYTES);
    f->user_corr = corr;
    size_t n = strnlen(command, sizeof f->command - 1); /* f is zeroed: NUL-terminated */
    memcpy(f->command, command, n);
    return f;
}

/* A user's call to a node of another broker of the fleet (home): stamped
 * here as for a local node, with "node" put back for the home broker to
 * know which of its nodes (it takes it out again), and sent on the pair
 * channel. The caller's share of the node is counted here, as for a local
 * one. */
static bool forward_to_fleet(mdg_broker *b, peer *p, mdg_msg *m, fleet_member *home, const uint8_t *pk)
{
    uint8_t node_pk[MDG_KEY_BYTES];
    char why[200], who[MDG_KEY_B64_LEN + 1];
    memcpy(node_pk, pk, MDG_KEY_BYTES); /* pk points into the params the stamp changes */
    if (strncmp(m->h.command, "mdg.", 4) == 0) {
        refuse(b, p, &m->h, "command names beginning 'mdg.' are reserved");
        return true;
    }
    int rc = share_take(b, p->session_id, node_pk, fleet_node_sharing(b->fleet, node_pk));
    if (rc == MDG_EAGAIN)
        return false;
    zmq_msg_t pm, bm;
    uint8_t stack[MDG_PARAMS_STACK]; /* fleet_send copies the params */
    fwd *f = NULL;
    if (rc || stamp_identity(m, p, true) != 0 || mdg_params_set_bytes(m->params, "node", node_pk, MDG_KEY_BYTES) ||
        mdg_params_encode_at(m->params, stack, sizeof stack, &pm) != 0) {
        if (rc == 0)
            broker_share_release(b, p->session_id, node_pk);
        refuse(b, p, &m->h, "broker out of memory");
        return true;
    }
    if (m->h.corr && !(f = new_fwd(b, node_pk, p->session_id, m->h.corr, m->h.command))) {
        zmq_msg_close(&pm);
        broker_share_release(b, p->session_id, node_pk);
        refuse(b, p, &m->h, "broker out of memory");
        return true;
    }
    if (f)
        f->via = home;
    mdg_header h = {.kind = MDG_K_CMD, .corr = f ? f->id : 0};
    mdg_header_set_command(&h, m->h.command);
    if (m->has_bulk) {
        zmq_msg_init(&bm);
        zmq_msg_move(&bm, &m->bulk);
    }
    rc = fleet_send(b->fleet, home, &h, &pm, m->has_bulk ? &bm : NULL);
    zmq_msg_close(&pm);
    if (rc != 0 || !f) /* a fire-and-forget command is done once on the channel */
        broker_share_release(b, p->session_id, node_pk);
    if (rc != 0) {
        if (f) {
            f->ended = true; /* its share was released just above */
            b->tombstones++;
            broker_fwd_free(b, f);
        }
        snprintf(why, sizeof why, "node %s cannot take the call: %s", pk_short(node_pk, who), mdg_last_error());
        refuse(b, p, &m->h, why);
    }
    return true;
}

/* A user's call to a node: check the node, stamp who calls, remember who
 * may answer, and pass it on (the bulk frame is moved, not copied).
 * Returns false when the node cannot take more now: the call waits. */
static bool forward_to_node(mdg_broker *b, peer *p, mdg_msg *m)
{
    char why[200], who[MDG_KEY_B64_LEN + 1];
    /* read without a lend (mdg_params_get_bytes would make the stamp below
     * copy the params first): pk is not used once the stamp changes them */
    mdg_cbor_value v;
    if (mdg_params_lookup(m->params, "node", &v) != 0 || v.kind != MDG_CBOR_BYTES || v.len != MDG_KEY_BYTES) {
        refuse(b, p, &m->h, "param 'node' must be a node's public key (32 bytes)");
        return true;
    }
    const uint8_t *pk = v.data;
    peer *node = mdg_map_get(b->nodes, pk, MDG_KEY_BYTES);
    fleet_member *home = node || !b->fleet ? NULL : fleet_node_home(b->fleet, pk);
    if (home)
        return forward_to_fleet(b, p, m, home, pk);
    if (!node) {
        mdg_pk_to_b64(pk, who);
        snprintf(why, sizeof why, "node %s is not connected", who);
        refuse(b, p, &m->h, why);
        return true;
    }
    /* commands named mdg.* are the broker's own word to a node (MDG_FLOW_COMMAND):
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
    int rc = share_take(b, p->session_id, node->pk, &node->sharing);
    if (rc == MDG_EAGAIN)
        return false;
    zmq_msg_t pm, bm;
    uint8_t stack[MDG_PARAMS_STACK];
    if (rc || stamp_identity(m, p, true) != 0 || /* which removes "node": pk is no longer valid */
        mdg_params_encode_at(m->params, stack, sizeof stack, &pm) != 0) {
        if (rc == 0)
            broker_share_release(b, p->session_id, node->pk);
        refuse(b, p, &m->h, "broker out of memory");
        return true;
    }
    fwd *f = NULL;
    if (m->h.corr && !(f = new_fwd(b, node->pk, p->session_id, m->h.corr, m->h.command))) {
        zmq_msg_close(&pm);
        broker_share_release(b, p->session_id, node->pk);
        refuse(b, p, &m->h, "broker out of memory");
        return true;
    }
    mdg_header h = {.kind = MDG_K_CMD, .corr = f ? f->id : 0};
    mdg_header_set_command(&h, m->h.command);
    if (m->has_bulk) {
        zmq_msg_init(&bm);
        zmq_msg_move(&bm, &m->bulk);
    }
    /* a call counts in the share while its forward lives, a
     * fire-and-forget command until the node acknowledges it */
    if (broker_send_frames_max(b, node, &h, &pm, m->has_bulk ? &bm : NULL, (size_t)b->queue_limit,
                        f ? NULL : p->session_id) != 0) {
        if (f)
            broker_fwd_free(b, f);
        else
            broker_share_release(b, p->session_id, node->pk);
        pk_short(node->pk, who);
        snprintf(why, sizeof why, "node %s cannot take the call: %s", who, mdg_last_error());
        refuse(b, p, &m->h, why);
    }
    return true;
}

static void relay_to_fleet(mdg_broker *b, fwd *fw, mdg_inbound *in);
static void deliver_reply(mdg_broker *b, fwd *fw, mdg_inbound *in, peer *node);

/* A node's reply: only the node the call went to may answer, and the reply
 * goes to the calling session only. Its params are passed on as they came
 * (a native node's never decoded), its bulk moved. */
bool broker_route_node_reply(mdg_broker *b, peer *node, mdg_inbound *in)
{
    const mdg_header *h = &in->h;
    char who[MDG_KEY_B64_LEN + 1]; /* made only for a log line: this is the reply path */
    if (h->corr == 0) { /* the node reports an error about a fire-and-forget call */
        mdg_log(MDG_LOG_WARN, "node %s reports an error it cannot route (no caller waits)", pk_short(node->pk, who));
        return true;
    }
    fwd *fw = mdg_map_get_u64(b->fwds, h->corr);
    if (!fw || memcmp(fw->node_pk, node->pk, MDG_KEY_BYTES) != 0) {
        mdg_log(MDG_LOG_WARN, "reply from node %s to call %llu, not pending for it (never sent, or its caller left): refused", pk_short(node->pk, who),
                (unsigned long long)h->corr);
        broker_send_error(b, node->rid, node->rid_len, node, 0, "", "reply refused: no such call pending for this node");
        return true;
    }
    if (fw->from) { /* the caller is at another broker of the fleet */
        relay_to_fleet(b, fw, in);
        return true;
    }
    deliver_reply(b, fw, in, node);
    return true;
}

/* A reply from a member of the fleet to a call we forwarded to one of its
 * nodes: only the broker the call went to may answer it. */
void broker_route_fleet_reply(mdg_broker *b, fleet_member *m, mdg_inbound *in)
{
    fwd *fw = mdg_map_get_u64(b->fwds, in->h.corr);
    if (!fw || fw->via != m) {
        fleet_refuse(b->fleet, FLEET_REFUSED_CONTENT, "%s to call %llu from a broker it was not sent to (or not pending): refused",
                     mdg_kind_name(in->h.kind), (unsigned long long)in->h.corr);
        return;
    }
    deliver_reply(b, fw, in, NULL);
}

/* A reply of one of our nodes to a call from another broker: back there,
 * under that broker's forward id. */
static void relay_to_fleet(mdg_broker *b, fwd *fw, mdg_inbound *in)
{
    bool final = !(in->h.flags & MDG_F_MORE);
    zmq_msg_t pm, bm;
    if (!fw->ended && mdg_inbound_encoded_params(in, &pm) == 0) {
        mdg_header out = {.kind = in->h.kind, .corr = fw->user_corr, .flags = in->h.flags};
        bool has_bulk = mdg_inbound_take_bulk(in, &bm);
        if (fleet_send(b->fleet, fw->from, &out, &pm, has_bulk ? &bm : NULL) != 0) {
            char why[300];
            snprintf(why, sizeof why, "reply to '%s' not delivered: %s", fw->command, mdg_last_error());
            mdg_log(MDG_LOG_ERROR, "%s", why);
            fleet_send_error(b->fleet, fw->from, fw->user_corr, fw->command, why); /* the caller still hears */
            final = true;
        }
        zmq_msg_close(&pm);
    } else if (!fw->ended) {
        fleet_send_error(b->fleet, fw->from, fw->user_corr, fw->command, "the node's reply was malformed");
        final = true;
    }
    if (final)
        broker_fwd_free(b, fw);
}

/* A reply for call fw, from its node (local) or from the broker of its
 * node (node NULL), to the calling session. */
static void deliver_reply(mdg_broker *b, fwd *fw, mdg_inbound *in, peer *node)
{
    const mdg_header *h = &in->h;
    char who[MDG_KEY_B64_LEN + 1]; /* the node's name, made only for a log line */
    if (fw->ended) { /* on its way before the node heard that the call was ended */
        if (!(h->flags & MDG_F_MORE))
            broker_fwd_free(b, fw);
        return;
    }
    zmq_msg_t pm, bm;
    if (mdg_inbound_encoded_params(in, &pm) != 0) {
        /* the caller hears it too: its call is over, not left to time out */
        char why[400];
        snprintf(why, sizeof why, "the reply of node %s to '%s' was refused: %s", pk_short(fw->node_pk, who), fw->command, mdg_last_error());
        mdg_log(MDG_LOG_WARN, "%s", why);
        if (node)
            broker_send_error(b, node->rid, node->rid_len, node, 0, fw->command, why);
        if (h->flags & MDG_F_MORE)
            end_fwd(b, fw, mdg_map_get(b->sessions, fw->session_id, SESSION_ID_BYTES), why);
        else
            broker_fail_fwd(b, fw, why);
        return;
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
        zmq_msg_close(&pm);
        broker_fwd_free(b, fw);
        return;
    }
    if (!final && fw->paused && ++fw->since_pause > overshoot) {
        char why[300];
        snprintf(why, sizeof why, "the broker ended '%s': its caller is not reading (%zu messages wait for it)",
                 fw->command, caller->chan.len);
        mdg_log(MDG_LOG_WARN, "from node %s: %s", pk_short(fw->node_pk, who), why);
        zmq_msg_close(&pm);
        end_fwd(b, fw, caller, why);
        return;
    }
    mdg_header out = {.kind = h->kind, .corr = fw->user_corr, .flags = h->flags};
    bool has_bulk = mdg_inbound_take_bulk(in, &bm);
    if (broker_send_frames_max(b, caller, &out, &pm, has_bulk ? &bm : NULL, SIZE_MAX, NULL) != 0) {
        char why[300];
        snprintf(why, sizeof why, "reply to '%s' not delivered: %s", fw->command, mdg_last_error());
        mdg_log(MDG_LOG_ERROR, "from node %s: %s", pk_short(fw->node_pk, who), why);
        if (node)
            broker_send_error(b, node->rid, node->rid_len, node, 0, fw->command, why);
    }
    if (final) {
        broker_fwd_free(b, fw);
    } else if (caller->chan.len >= broker_over_limit(b, 6) && !fw->paused &&
               (fw->via || node->transport->flow)) {
        fw->paused = true;
        fw->since_pause = 0;
        caller->paused_fwds++;
        flow_fwd(b, fw, "pause");
    }
}

/* A call from a member of the fleet to one of our nodes: its params were
 * stamped by that broker (user, session) and name the node; they go to the
 * node as they are but for "node", taken out as a local call's is. */
void broker_route_fleet_call(mdg_broker *b, fleet_member *m, mdg_inbound *in)
{
    const mdg_header *h = &in->h;
    mdg_params *params = NULL;
    uint8_t node_pk[MDG_KEY_BYTES], sid[SESSION_ID_BYTES] = {0};
    char why[200], who[MDG_KEY_B64_LEN + 1];
    /* read without a lend, as forward_to_node does: the remove below
     * then changes the params in place, not a copy of them */
    mdg_cbor_value v;
    if (mdg_inbound_take_params(in, &params) != 0 || mdg_params_lookup(params, "node", &v) != 0 ||
        v.kind != MDG_CBOR_BYTES || v.len != MDG_KEY_BYTES) {
        fleet_refuse(b->fleet, FLEET_REFUSED_CONTENT, "call '%s' from a broker without a node's key: refused", h->command);
        if (h->corr)
            fleet_send_error(b->fleet, m, h->corr, h->command, "param 'node' must be a node's public key (32 bytes)");
        mdg_params_destroy(&params);
        return;
    }
    memcpy(node_pk, v.data, MDG_KEY_BYTES);
    if (mdg_params_lookup(params, "session", &v) == 0 && v.kind == MDG_CBOR_BYTES && v.len == SESSION_ID_BYTES)
        memcpy(sid, v.data, SESSION_ID_BYTES);
    peer *node = mdg_map_get(b->nodes, node_pk, MDG_KEY_BYTES);
    zmq_msg_t pm, bm;
    uint8_t stack[MDG_PARAMS_STACK]; /* the node's channel copies the params */
    fwd *f = NULL;
    if (!node) {
        snprintf(why, sizeof why, "node %s is not connected", pk_short(node_pk, who));
    } else if (mdg_params_remove(params, "node") != 0 || mdg_params_encode_at(params, stack, sizeof stack, &pm) != 0) {
        snprintf(why, sizeof why, "broker out of memory");
        node = NULL;
    } else if (h->corr && (!(f = new_fwd(b, node_pk, sid, h->corr, h->command)) ||
                           fleet_route_track(b->fleet, m, f) != 0)) {
        if (f)
            broker_fwd_free(b, f);
        zmq_msg_close(&pm);
        snprintf(why, sizeof why, "broker out of memory");
        node = NULL;
    }
    mdg_params_destroy(&params);
    if (!node) {
        if (h->corr)
            fleet_send_error(b->fleet, m, h->corr, h->command, why);
        return;
    }
    mdg_header out = {.kind = MDG_K_CMD, .corr = f ? f->id : 0};
    mdg_header_set_command(&out, h->command);
    bool has_bulk = mdg_inbound_take_bulk(in, &bm);
    /* past queue_limit too: the calling broker bounds what each of its
     * sessions has at a node (node_window) */
    if (broker_send_frames_max(b, node, &out, &pm, has_bulk ? &bm : NULL, SIZE_MAX, NULL) != 0) {
        snprintf(why, sizeof why, "node %s cannot take the call: %s", pk_short(node_pk, who), mdg_last_error());
        if (f) {
            fleet_send_error(b->fleet, m, h->corr, h->command, why);
            broker_fwd_free(b, f);
        }
    }
}

/* Returns false when the message must wait (its node is full). */
bool broker_dispatch_command(mdg_broker *b, peer *p, mdg_inbound *in)
{
    const mdg_header *h = &in->h;
    char why[512];
    mdg_msg *m = NULL;
    int rc = mdg_msg_from_inbound(&m, in);
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
        if (!done) /* it waits: tried again later */
            mdg_msg_give_back(m, in);
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
