/* broker_metrics.c - the broker's counters and gauges, and their
 * Prometheus text (mdg_broker_metrics_text) for the metrics server.
 *
 * Counters are bumped where things happen (broker_count_in/out at the
 * channel, refusals, handshakes, resumes); gauges (sessions, held senders,
 * queue depths, node calls in flight) are taken by a loop timer every
 * METRICS_REFRESH_MS, since only the loop thread may walk the session
 * table. /healthz is healthy while the loop runs and that timer keeps
 * coming round: a stuck loop shows as stale. */
#include "broker_internal.h"
#include "fleet.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define METRICS_REFRESH_MS 250
#define METRICS_STALE_MS 5000

static void set_gauge(_Atomic uint64_t *g, uint64_t v)
{
    atomic_store_explicit(g, v, memory_order_relaxed);
}

static uint64_t get(const _Atomic uint64_t *c)
{
    return atomic_load_explicit((_Atomic uint64_t *)c, memory_order_relaxed);
}

void broker_count_in(mdg_broker *b, const mdg_inbound *in)
{
    unsigned k = in->h.kind <= MDG_K_MAX ? in->h.kind : 0;
    size_t bytes = (in->has_encoded ? in->params_len : 0) + (in->has_bulk ? zmq_msg_size((zmq_msg_t *)&in->bulk) : 0);
    broker_count(&b->metrics.msgs_in[k], 1);
    broker_count(&b->metrics.bytes_in[k], bytes);
}

void broker_count_out(mdg_broker *b, int kind, const zmq_msg_t *params, const zmq_msg_t *bulk)
{
    unsigned k = kind > 0 && kind <= MDG_K_MAX ? (unsigned)kind : 0;
    size_t bytes = (params ? zmq_msg_size((zmq_msg_t *)params) : 0) + (bulk ? zmq_msg_size((zmq_msg_t *)bulk) : 0);
    broker_count(&b->metrics.msgs_out[k], 1);
    broker_count(&b->metrics.bytes_out[k], bytes);
}

typedef struct tally {
    uint64_t sessions[3][2], held_senders, held_msgs, queued, queue_max;
} tally;

static void tally_peer(void *value, void *arg)
{
    const peer *p = value;
    tally *t = arg;
    t->sessions[p->role == MDG_ROLE_NODE ? MDG_ROLE_NODE : MDG_ROLE_USER][p->attached ? 1 : 0]++;
    if (p->held_len) {
        t->held_senders++;
        t->held_msgs += p->held_len;
    }
    t->queued += p->chan.len;
    if (p->chan.len > t->queue_max)
        t->queue_max = p->chan.len;
}

static int refresh(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    broker_metrics *m = &b->metrics;
    tally t = {0};
    mdg_map_each(b->sessions, tally_peer, &t);
    for (int r = 1; r < 3; r++)
        for (int a = 0; a < 2; a++)
            set_gauge(&m->sessions[r][a], t.sessions[r][a]);
    set_gauge(&m->held_senders, t.held_senders);
    set_gauge(&m->held_msgs, t.held_msgs);
    set_gauge(&m->queued, t.queued);
    set_gauge(&m->queue_max, t.queue_max);
    set_gauge(&m->in_flight, mdg_map_size(b->fwds) - b->tombstones);
    set_gauge(&m->conns, b->live_conns > 0 ? (uint64_t)b->live_conns : 0);
    if (b->fleet) {
        uint64_t up, down, nodes;
        bool nats;
        fleet_gauges(b->fleet, &up, &down, &nodes, &nats);
        set_gauge(&m->fleet_up, up);
        set_gauge(&m->fleet_down, down);
        set_gauge(&m->fleet_nodes, nodes);
        set_gauge(&m->fleet_nats, nats);
    }
    atomic_store(&m->refreshed_ms, mdg_now_ms());
    return 0;
}

int broker_metrics_start(mdg_broker *b)
{
    atomic_store(&b->metrics.started_ms, mdg_now_ms());
    refresh(b->loop, b, 0);
    return mdg_loop_timer(b->loop, METRICS_REFRESH_MS, true, refresh, b) < 0 ? MDG_ENOMEM : 0;
}

bool mdg_broker_healthy(const mdg_broker *b)
{
    /* running, and not stuck: its timer came round lately */
    int64_t at = b ? atomic_load(&b->metrics.refreshed_ms) : 0;
    return at > 0 && __atomic_load_n(&b->loop_running, __ATOMIC_ACQUIRE) && mdg_now_ms() - at < METRICS_STALE_MS;
}

/* ------------------------------------------------------------- the text */

typedef struct text {
    char *buf;
    size_t len, cap;
    bool failed;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...)
{
    va_list ap;
    for (int tries = 0; tries < 2 && !t->failed; tries++) {
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
        } else if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        } else {
            size_t cap = (t->cap + (size_t)n) * 2;
            char *grown = realloc(t->buf, cap);
            if (!grown)
                t->failed = true;
            else {
                t->buf = grown;
                t->cap = cap;
            }
        }
    }
}

static void head(text *t, const char *name, const char *type, const char *help)
{
    put(t, "# HELP messidge_%s %s\n# TYPE messidge_%s %s\n", name, help, name, type);
}

/* A metric of one value, without labels. */
static void single(text *t, const char *name, const char *type, const char *help, const _Atomic uint64_t *v)
{
    head(t, name, type, help);
    put(t, "messidge_%s %llu\n", name, (unsigned long long)get(v));
}

static void by_kind(text *t, const char *name, const char *help, const _Atomic uint64_t *v)
{
    head(t, name, "counter", help);
    for (int k = 1; k <= MDG_K_MAX; k++)
        put(t, "messidge_%s{kind=\"%s\"} %llu\n", name, mdg_kind_name(k), (unsigned long long)get(&v[k]));
}

char *mdg_broker_metrics_text(const mdg_broker *b)
{
    static const char *const refusal[REFUSED_REASONS] = {
        [REFUSED_ZAP_UNKNOWN_KEY] = "unknown_key", [REFUSED_ZAP_BUSY] = "connection_limit",
        [REFUSED_ZAP_NOT_CURVE] = "not_curve",     [REFUSED_COMMAND] = "command",
        [REFUSED_QUEUE_FULL] = "queue_full",       [REFUSED_HELLO] = "hello",
    };
    static const char *const role[3] = {"", "user", "node"};
    const broker_metrics *m;
    text t = {.cap = 8192};

    if (!b || !(t.buf = malloc(t.cap)))
        return NULL;
    m = &b->metrics;
    int64_t started = atomic_load(&m->started_ms);
    head(&t, "uptime_seconds", "gauge", "Seconds since the broker started serving.");
    put(&t, "messidge_uptime_seconds %.3f\n", started ? (double)(mdg_now_ms() - started) / 1000.0 : 0.0);
    head(&t, "sessions", "gauge", "Sessions by role and state (detached: within their grace period).");
    for (int r = 1; r < 3; r++)
        for (int a = 1; a >= 0; a--)
            put(&t, "messidge_sessions{role=\"%s\",state=\"%s\"} %llu\n", role[r], a ? "attached" : "detached",
                (unsigned long long)get(&m->sessions[r][a]));
    single(&t, "connections", "gauge", "Connections open on the broker's listeners.", &m->conns);
    by_kind(&t, "messages_in_total", "Messages taken from peers, by kind.", m->msgs_in);
    by_kind(&t, "bytes_in_total", "Params and bulk bytes of the messages taken from peers, by kind.", m->bytes_in);
    by_kind(&t, "messages_out_total", "Messages given to peers, by kind.", m->msgs_out);
    by_kind(&t, "bytes_out_total", "Params and bulk bytes of the messages given to peers, by kind.", m->bytes_out);
    head(&t, "refusals_total", "counter", "Messages and hellos refused, by reason.");
    for (int r = REFUSED_COMMAND; r < REFUSED_REASONS; r++)
        put(&t, "messidge_refusals_total{reason=\"%s\"} %llu\n", refusal[r], (unsigned long long)get(&m->refused[r]));
    single(&t, "handshakes_total", "counter", "CURVE handshakes the broker's ZAP handler admitted.", &m->handshakes);
    head(&t, "zap_refusals_total", "counter", "CURVE handshakes refused, by reason.");
    for (int r = REFUSED_ZAP_UNKNOWN_KEY; r <= REFUSED_ZAP_NOT_CURVE; r++)
        put(&t, "messidge_zap_refusals_total{reason=\"%s\"} %llu\n", refusal[r],
            (unsigned long long)get(&m->refused[r]));
    head(&t, "sessions_opened_total", "counter", "New sessions, by role.");
    for (int r = 1; r < 3; r++)
        put(&t, "messidge_sessions_opened_total{role=\"%s\"} %llu\n", role[r], (unsigned long long)get(&m->opened[r]));
    single(&t, "resumes_total", "counter", "Sessions resumed on a new link.", &m->resumes);
    single(&t, "sessions_lost_total", "counter", "Hellos naming a session the broker no longer had.", &m->lost);
    single(&t, "held_senders", "gauge", "Peers with messages held unprocessed (where they go is full).", &m->held_senders);
    single(&t, "held_messages", "gauge", "Messages held unprocessed, all peers.", &m->held_msgs);
    single(&t, "queued_messages", "gauge", "Messages sent and not yet acknowledged, all peers.", &m->queued);
    single(&t, "queue_depth_max", "gauge", "The longest queue of unacknowledged messages to one peer.", &m->queue_max);
    single(&t, "node_calls_in_flight", "gauge", "Calls forwarded to nodes and not yet finally answered.", &m->in_flight);
    if (b->fleet) { /* set before start, so safe to read from this thread */
        static const char *const fleet_refusal[FLEET_REFUSALS] = {
            [FLEET_REFUSED_GARBAGE] = "garbage", [FLEET_REFUSED_STRANGER] = "not_a_member",
            [FLEET_REFUSED_FORGED] = "forged",   [FLEET_REFUSED_CONTENT] = "content",
        };
        head(&t, "fleet_members", "gauge", "Other brokers of the fleet, heard within silence_ms (up) or not (down).");
        put(&t, "messidge_fleet_members{state=\"up\"} %llu\n", (unsigned long long)get(&m->fleet_up));
        put(&t, "messidge_fleet_members{state=\"down\"} %llu\n", (unsigned long long)get(&m->fleet_down));
        single(&t, "fleet_remote_nodes", "gauge", "Nodes of the other brokers of the fleet, as listed here.", &m->fleet_nodes);
        single(&t, "fleet_nats_connected", "gauge", "1 while the broker is connected to NATS.", &m->fleet_nats);
        head(&t, "fleet_refusals_total", "counter", "Messages on the broker's fleet subject refused, by reason.");
        for (int r = 0; r < FLEET_REFUSALS; r++)
            put(&t, "messidge_fleet_refusals_total{reason=\"%s\"} %llu\n", fleet_refusal[r],
                (unsigned long long)get(&m->fleet_refused[r]));
    }
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}
