/* broker.c - the broker's lifecycle and public API: making one, its
 * options, binding its sockets, running its loop (on the caller's thread
 * or one of its own), stopping, and the calls other threads may make
 * (sends and disconnects are queued to the loop thread, which owns every
 * socket and all state; libzmq's I/O threads do the encryption).
 *
 * The broker is its listeners (a ROUTER socket each: the native one with
 * CURVE, broker_native.c, and an optional one for older peers), a ZAP
 * handler that decides who may connect (broker_auth.c), sessions keyed by
 * routing id (broker_session.c, broker_channel.c), and validation of every
 * command against the application's table before its handler runs, or
 * its forwarding to a node (broker_route.c). */
#include "broker_internal.h"
#include "fleet.h"

#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BROKER_LINGER_MS 1000              /* bounded flush at shutdown */
#define NODE_WINDOW 64                     /* default: one session's messages at one node at once */

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

/* ------------------------------------------------------------------ set-up */

/* Each listener's module describes it; the first is the broker's own. */
static const broker_listener_ops *const listener_kinds[BROKER_LISTENERS] = {
    &broker_native_listener,
    &broker_legacy_listener,
};

/* Whether the broker has started binding: the first listener's socket is
 * made first. */
static bool started(const mdg_broker *b)
{
    return b->listeners[0].sock != NULL;
}

broker_listener *broker_listener_of(const mdg_broker *b, const broker_listener_ops *ops)
{
    for (int i = 0; i < BROKER_LISTENERS; i++)
        if (b->listeners[i].ops == ops)
            return (broker_listener *)&b->listeners[i];
    return NULL;
}

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
    b->grace_ms = opts && opts->session_grace_ms > 0 ? opts->session_grace_ms : 60000;
    b->node_grace_ms = opts && opts->node_grace_ms > 0 ? opts->node_grace_ms : 5000;
    b->queue_limit = opts && opts->queue_limit > 0 ? opts->queue_limit : 10000;
    b->node_window = opts && opts->node_window > 0 ? opts->node_window : NODE_WINDOW;
    b->hold_limit = opts && opts->hold_limit > 0 ? opts->hold_limit : b->queue_limit;
    b->max_message = opts && opts->max_message > 0 ? opts->max_message : MDG_MAX_FRAME;
    /* Forward ids count up from a random 63-bit start, so that two broker
     * processes (one restarted, say) do not hand out the same ids: a node
     * still answering a call of the old process never names a call of the
     * new one. 63 bits: counting up never wraps to 0 ("no reply wanted"). */
    randombytes_buf(&b->next_fwd, sizeof b->next_fwd);
    b->next_fwd >>= 1;
    b->max_conns_asked = opts && opts->max_connections > 0 ? opts->max_connections : 0;
    for (int i = 0; i < BROKER_LISTENERS; i++) {
        broker_listener *l = &b->listeners[i];
        *l = (broker_listener){.ops = listener_kinds[i], .broker = b, .listen_fd = -1};
        int rc = l->ops->configure(l, opts);
        if (rc) {
            free(b);
            return rc;
        }
    }
    pthread_mutex_init(&b->qlock, NULL);
    mdg_pool_init(&b->fwd_pool, sizeof(fwd), sizeof(fwd), 1024);
    mdg_pool_init(&b->kept_pool, sizeof(kept) + KEPT_POOLED_PARAMS, sizeof(kept), 1024); /* params written whole */
    bool maps = true;
    for (int i = 0; i < BROKER_LISTENERS; i++)
        maps = maps && (b->listeners[i].rids = mdg_map_new()) != NULL &&
               (b->listeners[i].stray = mdg_map_new()) != NULL;
    if (!maps || mdg_keys_copy(&b->keys, keys) != 0 ||
        !(b->allow = mdg_map_new()) || !(b->nodes = mdg_map_new()) || !(b->by_fd = mdg_map_new()) ||
        !(b->fwds = mdg_map_new()) || !(b->loop = mdg_loop_new()) || !(b->ctx = zmq_ctx_new()) ||
        /* keyed by our random session ids (shares: the session's, then a node's key) */
        !(b->sessions = mdg_map_new_own_keys()) || !(b->owed_ack = mdg_map_new_own_keys()) ||
        !(b->to_flush = mdg_map_new_own_keys()) || !(b->backlog = mdg_map_new_own_keys()) ||
        !(b->holding = mdg_map_new_own_keys()) || !(b->shares = mdg_map_new_own_keys()) ||
        !(b->ready = mdg_map_new_own_keys())) {
        mdg_broker_destroy(&b);
        return mdg_fail(MDG_ENOMEM, "cannot allocate the broker");
    }
    *out = b;
    return 0;
}

/* Configuration is only taken before the broker binds. */
int broker_before_start(const mdg_broker *b, const char *what)
{
    if (!b)
        return mdg_fail(MDG_EINVAL, "no broker");
    if (started(b))
        return mdg_fail(MDG_ESTATE, "%s before the broker starts", what);
    return 0;
}

int mdg_broker_set_commands(mdg_broker *b, const mdg_cmd *table, void *arg)
{
    int rc = broker_before_start(b, "set commands");
    if (rc)
        return rc;
    b->cmds = table;
    b->cmd_arg = arg;
    return 0;
}

int mdg_broker_set_hooks(mdg_broker *b, const mdg_broker_hooks *hooks, void *arg)
{
    int rc = broker_before_start(b, "set hooks");
    if (rc)
        return rc;
    if (!hooks)
        return mdg_fail(MDG_EINVAL, "no hooks");
    b->hooks = *hooks;
    b->hook_arg = arg;
    return 0;
}

/* ---------------------------------------------------- from any thread */

/* Whether the caller is the loop thread (else it queues). */
bool broker_on_loop(const mdg_broker *b)
{
    return __atomic_load_n(&b->loop_running, __ATOMIC_ACQUIRE) &&
           pthread_equal(pthread_self(), b->loop_thread);
}

/* Other threads queue; the loop thread sends (it owns the socket). */
int broker_queue_send(mdg_broker *b, bool to_node, const uint8_t *key, size_t key_len,
                      mdg_header *h, mdg_params *params, const void *bulk, size_t bulk_len)
{
    queued *q = calloc(1, sizeof *q);
    int rc = q ? mdg_params_encode(params, &q->params) : MDG_ENOMEM;
    mdg_params_destroy(&params);
    if (rc) {
        free(q);
        return rc;
    }
    q->to_node = to_node;
    memcpy(q->key, key, key_len);
    q->key_len = key_len;
    mdg_header_copy(&q->h, h);
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
            broker_send_frames(b, p, &q->h, &q->params, q->has_bulk ? &q->bulk : NULL);
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
    if (!broker_on_loop(b))
        return broker_queue_send(b, to_node, key, key_len, &h, params, bulk, bulk_len);
    peer *p = mdg_map_get(to_node ? b->nodes : b->sessions, key, key_len);
    if (!p) {
        mdg_params_destroy(&params);
        return mdg_fail(MDG_ENOTFOUND, "no such %s connected", to_node ? "node" : "session");
    }
    return broker_send_to(b, NULL, 0, p, MDG_K_CMD, 0, 0, command, params, bulk, bulk_len);
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

/* Counts kept by the loop thread (publish_counts): safe from any thread. */
size_t mdg_broker_session_count(const mdg_broker *b)
{
    return b ? __atomic_load_n(&b->user_count, __ATOMIC_RELAXED) : 0;
}

size_t mdg_broker_forward_count(const mdg_broker *b)
{
    return b ? mdg_map_size(b->fwds) - b->tombstones : 0; /* ended calls are not open */
}

size_t mdg_broker_node_count(const mdg_broker *b)
{
    return b ? __atomic_load_n(&b->node_count, __ATOMIC_RELAXED) : 0;
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
    if (!broker_on_loop(b)) {
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
        broker_send_to(b, NULL, 0, k.found.v[i], MDG_K_BYE, 0, 0, "", why, NULL, 0);
        broker_close_session(b, k.found.v[i], reason);
    }
    int closed = (int)k.found.n;
    mdg_ptrs_free(&k.found);
    return closed;
}

/* ---------------------------------------------------------------- timers */

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
    int rc = broker_before_start(b, "add timers");
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

/* ------------------------------------------------------------ run / stop */

int broker_setsock(void *s, int opt, const void *v, size_t len, const char *name)
{
    if (zmq_setsockopt(s, opt, v, len) != 0)
        return mdg_fail(MDG_ESYS, "cannot set %s: %s", name, zmq_strerror(errno));
    return 0;
}

/* A ROUTER with what both listeners share. No receive limit in libzmq:
 * with heartbeats on, libzmq 4.3.4 aborts (assert !_io_error,
 * zeromq/libzmq#4364) when a link drops while its receive pipe is full.
 * Each native client keeps at most its queue_limit messages
 * unacknowledged, and the messages of a sender without acknowledgements
 * wait in numbers its listener bounds, which bounds what can queue here. */
int broker_new_router(mdg_broker *b, void **out, int64_t maxmsg)
{
    int one = 1, hwm = MDG_SEND_HWM, unlimited = 0, linger = BROKER_LINGER_MS, rc;
    void *s = *out = zmq_socket(b->ctx, ZMQ_ROUTER);
    if (!s)
        return mdg_fail(MDG_ESYS, "cannot make a ROUTER: %s", zmq_strerror(errno));
    if ((rc = broker_setsock(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one, "ROUTER_MANDATORY")) ||
        (rc = broker_setsock(s, ZMQ_SNDHWM, &hwm, sizeof hwm, "SNDHWM")) ||
        (rc = broker_setsock(s, ZMQ_RCVHWM, &unlimited, sizeof unlimited, "RCVHWM")) ||
        (rc = broker_setsock(s, ZMQ_LINGER, &linger, sizeof linger, "LINGER")) ||
        (rc = broker_setsock(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg, "MAXMSGSIZE")))
        return rc;
    return 0;
}

/* Watch a listener's connections, bind its socket (port 0: a free one) and
 * watch it (on_input gets the listener). ep gets the endpoint asked for,
 * l->bound_port the port got. */
int broker_listen_on(mdg_broker *b, broker_listener *l, mdg_loop_fn on_input, char ep[160])
{
    char mon_ep[80], last[256];
    size_t len = sizeof last;
    const char *tag = l->ops->name;
    int rc;
    snprintf(mon_ep, sizeof mon_ep, "inproc://mdg-broker-%d-monitor-%p", (int)(l - b->listeners), (void *)b);
    if (zmq_socket_monitor(l->sock, mon_ep,
                           ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_ACCEPT_FAILED |
                               ZMQ_EVENT_LISTENING) != 0 ||
        !(l->mon = zmq_socket(b->ctx, ZMQ_PAIR)) ||
        zmq_connect(l->mon, mon_ep) != 0)
        return mdg_fail(MDG_ESYS, "cannot monitor the %s ROUTER: %s", tag, zmq_strerror(errno));
    if (l->port)
        snprintf(ep, 160, "tcp://%s:%d", b->bind_address, l->port);
    else
        snprintf(ep, 160, "tcp://%s:*", b->bind_address);
    if (zmq_bind(l->sock, ep) != 0)
        return mdg_fail(MDG_ESYS, "cannot bind the %s listener %s: %s", tag, ep, zmq_strerror(errno));
    if (zmq_getsockopt(l->sock, ZMQ_LAST_ENDPOINT, last, &len) == 0) {
        const char *colon = strrchr(last, ':');
        l->bound_port = colon ? atoi(colon + 1) : l->port;
    }
    if ((rc = mdg_loop_watch(b->loop, l->mon, -1, ZMQ_POLLIN, broker_on_monitor, b)) ||
        (rc = mdg_loop_watch(b->loop, l->sock, -1, ZMQ_POLLIN, on_input, l)))
        return rc;
    /* broker_on_monitor reads it dry (or says to look again): not a
     * ZMQ_EVENTS system call before every sleep */
    mdg_loop_set_quiet(b->loop, l->mon);
    return 0;
}

static int bind_sockets(mdg_broker *b)
{
    int rc;
    if (started(b))
        return 0;
    /* The ZAP handler must be bound before a listener accepts anyone. */
    b->zap = zmq_socket(b->ctx, ZMQ_REP);
    if (!b->zap || zmq_bind(b->zap, "inproc://zeromq.zap.01") != 0)
        return mdg_fail(MDG_ESYS, "cannot bind the ZAP handler: %s", zmq_strerror(errno));
    if ((rc = mdg_loop_watch(b->loop, b->zap, -1, ZMQ_POLLIN, broker_on_zap, b)))
        return rc;
    mdg_loop_set_quiet(b->loop, b->zap); /* broker_on_zap reads it dry */
    for (int i = 0; i < BROKER_LISTENERS; i++)
        if (b->listeners[i].on && (rc = b->listeners[i].ops->bind(b, &b->listeners[i])))
            return rc;
    if (mdg_loop_timer(b->loop, MDG_CHAN_ACK_DELAY_MS, true, broker_on_ack_timer, b) < 0 ||
        mdg_loop_timer(b->loop, BACKLOG_RETRY_MS, true, broker_on_backlog_timer, b) < 0 ||
        mdg_loop_timer(b->loop, GRACE_CHECK_MS, true, broker_on_grace_timer, b) < 0 ||
        broker_metrics_start(b) != 0)
        return mdg_fail(MDG_ENOMEM, "no room for the broker's timers");
    mdg_loop_on_wake(b->loop, on_wake, b);
    mdg_loop_on_turn(b->loop, broker_flush_turn, b);
    broker_set_budget(b);
    return b->fleet ? fleet_start(b->fleet) : 0;
}

/* The loop has ended: every session is closed (hooks fired), once. */
static void close_all_sessions(mdg_broker *b)
{
    peer *p;
    for (int i = 0; i < BROKER_LISTENERS; i++)
        if (!b->listeners[i].rids)
            return; /* a broker that failed half-way through mdg_broker_new */
    if (!b->sessions || !b->nodes || !b->by_fd || !b->fwds || !b->loop || !b->owed_ack ||
        !b->backlog || !b->holding || !b->shares || !b->ready)
        return; /* a broker that failed half-way through mdg_broker_new */
    while ((p = mdg_map_pop(b->sessions)) != NULL) {
        mdg_map_put(b->sessions, p->session_id, SESSION_ID_BYTES, p); /* broker_close_session takes it out */
        broker_close_session(b, p, "broker stopping");
    }
    on_wake(b->loop, b, 0); /* log what other threads queued too late */
}

static int run_loop(mdg_broker *b)
{
    b->loop_thread = pthread_self();
    __atomic_store_n(&b->loop_running, true, __ATOMIC_RELEASE);
    int rc = mdg_loop_run(b->loop);
    fleet_leave(b->fleet); /* first: the others withdraw our nodes at once, not after a silence */
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
    pthread_setname_np(pthread_self(), "mdg-broker"); /* as top -H and perf show it */
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
    } else if (b->sessions) {
        fleet_leave(b->fleet);
        close_all_sessions(b);
    }
    fleet_destroy(&b->fleet); /* before the loop it watches goes */
    for (int i = BROKER_LISTENERS - 1; i >= 0; i--) {
        if (b->listeners[i].mon)
            zmq_close(b->listeners[i].mon);
        if (b->listeners[i].sock)
            zmq_close(b->listeners[i].sock);
    }
    if (b->zap)
        zmq_close(b->zap);
    if (b->ctx)
        zmq_ctx_term(b->ctx);
    while (b->n_spare)
        close(b->spare[--b->n_spare]);
    fwd *f;
    while (b->fwds && (f = mdg_map_pop(b->fwds)) != NULL)
        mdg_pool_free(&b->fwd_pool, f);
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
    for (int i = 0; i < BROKER_LISTENERS; i++) {
        mdg_map_destroy(&b->listeners[i].rids);
        mdg_map_destroy(&b->listeners[i].stray);
    }
    mdg_map_destroy(&b->sessions);
    mdg_map_destroy(&b->nodes);
    mdg_map_destroy(&b->by_fd);
    mdg_map_destroy(&b->fwds);
    mdg_map_destroy(&b->owed_ack);
    mdg_map_destroy(&b->to_flush);
    mdg_map_destroy(&b->backlog);
    mdg_map_destroy(&b->holding);
    mdg_map_destroy(&b->shares);
    mdg_map_destroy(&b->ready);
    mdg_map_destroy(&b->allow);
    mdg_keys_destroy(&b->keys);
    mdg_pool_clear(&b->fwd_pool);
    mdg_pool_clear(&b->kept_pool);
    free(b);
    *pb = NULL;
}
