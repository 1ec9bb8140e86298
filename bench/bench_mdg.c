/* bench_mdg.c - the libmessidge side of every scenario.
 *
 * Layout (the raw libzmq baseline in bench_zmq.c copies it): the broker
 * runs in this process on its own thread (mdg_broker_start, its own zmq
 * context), on 127.0.0.1 and a free port. Each client and the node is an
 * mdg_conn with its own context and loop thread; the application thread
 * that calls is the benchmark's main thread (RTT) or one thread per client
 * (throughput).
 *
 * Broker path: user -> broker "echo" -> user.
 * Node path:   user -> broker -> node NODE_COMMAND -> broker -> user; the
 * user names the node with the param "node" (its public key, 32 bytes). */
#include "bench.h"

#include "messidge.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

/* ------------------------------------------------------------- handlers */

/* Echo "d" (when present) and the bulk frame. */
static void echo_reply(mdg_msg *m, bool mark)
{
    const uint8_t *d;
    size_t len, blen;
    const void *bulk = mdg_msg_bulk(m, &blen);
    mdg_params *r = mdg_params_new();
    if (r && mdg_params_get_bytes(mdg_msg_params(m), "d", &d, &len) == 0)
        mdg_params_set_bytes(r, "d", d, len);
    if (r && mark)
        mdg_params_set_str(r, "via", "node");
    mdg_msg_reply(m, r, bulk, blen);
}

static void h_broker_echo(mdg_msg *m, void *arg)
{
    (void)arg;
    echo_reply(m, false);
}

/* The node marks its reply to a probe, so that we know it was the node
 * (and not the broker) that answered. */
static void h_node_echo(mdg_msg *m, void *arg)
{
    (void)arg;
    echo_reply(m, mdg_params_has(mdg_msg_params(m), "probe"));
}

static const mdg_cmd broker_cmds[] = {
    {"echo", h_broker_echo, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

static const mdg_cmd node_cmds[] = {
    {NODE_COMMAND, h_node_echo, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* The broker pushes "resource_offer" to every new session; the connect
 * scenario's handshake ends when it has arrived. */
typedef struct offer_wait {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool got;
} offer_wait;

static void h_resource_offer(mdg_msg *m, void *arg)
{
    (void)m;
    offer_wait *w = arg;
    pthread_mutex_lock(&w->lock);
    w->got = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static const mdg_cmd user_cmds[] = {
    {"resource_offer", h_resource_offer, NULL, 0},
    MDG_CMD_END,
};

/* ------------------------------------------------------------ set-up */

typedef struct env {
    mdg_keys *bkeys, *ukeys, *nkeys;
    mdg_broker *b;
    /* the fleet scenario: the node's broker, another one of the fleet */
    mdg_keys *hkeys;
    mdg_broker *home;
    mdg_conn *node;
    mdg_conn *user[MAX_CLIENTS];
    int nusers;
} env;

static void env_down(env *e)
{
    for (int i = 0; i < e->nusers; i++)
        mdg_conn_destroy(&e->user[i]);
    mdg_conn_destroy(&e->node);
    mdg_broker_destroy(&e->b);
    mdg_broker_destroy(&e->home);
    mdg_keys_destroy(&e->bkeys);
    mdg_keys_destroy(&e->hkeys);
    mdg_keys_destroy(&e->ukeys);
    mdg_keys_destroy(&e->nkeys);
}

/* A client of broker b; on_error: where the broker's error notices go
 * (NULL: logged). */
static int conn_up_at(const mdg_broker *b, const mdg_keys *bkeys, mdg_conn **c, const mdg_keys *keys,
                      const mdg_cmd *cmds, void *arg, mdg_error_fn on_error)
{
    mdg_conn_options o = {.port = mdg_broker_port(b)};
    int rc = mdg_conn_new_with_keys(c, "127.0.0.1", mdg_keys_public(bkeys), keys, &o);
    if (!rc && cmds)
        rc = mdg_conn_register_commands(*c, cmds, arg);
    if (!rc && on_error)
        rc = mdg_conn_set_error_handler(*c, on_error, arg);
    if (!rc)
        rc = mdg_conn_start(*c);
    if (!rc)
        rc = mdg_conn_wait_until_ready(*c, 10000);
    return rc;
}

/* A client of the users' broker. */
static int conn_up(env *e, mdg_conn **c, const mdg_keys *keys, const mdg_cmd *cmds, void *arg,
                   mdg_error_fn on_error)
{
    return conn_up_at(e->b, e->bkeys, c, keys, cmds, arg, on_error);
}

/* A broker on a free loopback port that admits anyone, and the node; in
 * the fleet through cfg.nats_url when fleet. */
static int broker_up(mdg_broker **b, const mdg_keys *keys, const mdg_keys *nkeys, bool fleet)
{
    mdg_broker_options o = {.bind_address = "127.0.0.1", .port = 0};
    mdg_fleet_options fo = {.url = cfg.nats_url, .name = "bench"};
    return mdg_broker_new(b, keys, &o) || mdg_broker_set_commands(*b, broker_cmds, NULL) ||
           mdg_broker_allow_any(*b) || mdg_broker_allow(*b, mdg_keys_public(nkeys), MDG_ROLE_NODE) ||
           (fleet && mdg_broker_join_fleet(*b, &fo));
}

#define FLEET_READY_MS 10000 /* until the users' broker routes to the other's node */

/* The fleet scenario: the node at another broker (e->home) of a fleet
 * over the plain nats-server; ready once a call through e->b reaches it. */
static bres fleet_up(env *e)
{
    if (broker_up(&e->home, e->hkeys, e->nkeys, true) || mdg_broker_fleet_member(e->home, mdg_keys_public(e->bkeys)) || mdg_broker_start(e->home))
        return na("cannot start the node's broker: %s", mdg_last_error());
    if (conn_up_at(e->home, e->hkeys, &e->node, e->nkeys, node_cmds, NULL, NULL))
        return na("the node cannot connect: %s", mdg_last_error());
    return (bres){.ok = true};
}

static mdg_params *request(const env *e, int path, bool with_d, bool probe);

/* A broker, a node when the path needs one (with fleet, at a second
 * broker of a fleet), and nusers user sessions. */
static bres env_up(env *e, int path, int nusers, bool fleet)
{
    *e = (env){0};
    if (fleet && !cfg.nats_url)
        return na("no nats-server (--nats URL)");
    if (mdg_keys_new(&e->bkeys) || mdg_keys_new(&e->ukeys) || mdg_keys_new(&e->nkeys) ||
        (fleet && mdg_keys_new(&e->hkeys)) || broker_up(&e->b, e->bkeys, e->nkeys, fleet) ||
        (fleet && mdg_broker_fleet_member(e->b, mdg_keys_public(e->hkeys))) || mdg_broker_start(e->b))
        return na("cannot start a broker: %s", mdg_last_error());
    if (fleet) {
        bres r = fleet_up(e);
        if (!r.ok)
            return r;
    } else if (path == P_NODE && conn_up(e, &e->node, e->nkeys, node_cmds, NULL, NULL)) {
        return na("the node cannot connect: %s", mdg_last_error());
    }
    for (; e->nusers < nusers; e->nusers++)
        if (conn_up(e, &e->user[e->nusers], e->ukeys, NULL, NULL, NULL))
            return na("a user cannot connect: %s", mdg_last_error());
    /* the fleet's directory: the users' broker learns of the node */
    for (uint64_t until = now_ns() + FLEET_READY_MS * 1000000ull; fleet && nusers > 0;) {
        mdg_msg *r = NULL;
        int rc = mdg_conn_call(e->user[0], NODE_COMMAND, request(e, P_NODE, true, false), NULL, 0, 1000, &r);
        mdg_msg_destroy(&r);
        if (rc == 0)
            break;
        if (now_ns() > until)
            return na("the node at the other broker was not reachable within %d ms", FLEET_READY_MS);
        usleep(20000); /* polling the directory, with the deadline above */
    }
    return (bres){.ok = true};
}

/* The request: "d" (59 bytes, so that the map is 64 bytes) unless it is a
 * bulk call, plus "node" on the node path. */
static mdg_params *request(const env *e, int path, bool with_d, bool probe)
{
    mdg_params *p = mdg_params_new();
    if (!p)
        return NULL;
    if (with_d)
        mdg_params_set_bytes(p, "d", payload, PARAMS_BYTES - 5);
    if (path == P_NODE)
        mdg_params_set_bytes(p, "node", mdg_keys_public(e->nkeys), 32);
    if (probe)
        mdg_params_set_bool(p, "probe", true);
    return p;
}

static const char *command(int path)
{
    return path == P_NODE ? NODE_COMMAND : "echo";
}

/* The first call: does the path work at all, and does it echo faithfully? */
static bres probe(env *e, int path, size_t bulk)
{
    mdg_msg *r = NULL;
    const void *data = bulk ? bulk_data() : NULL;
    int rc = mdg_conn_call(e->user[0], command(path), request(e, path, !bulk, true), data, bulk,
                           CALL_TIMEOUT_MS, &r);
    if (rc) {
        if (path == P_NODE)
            return na("nodes not available: %s", mdg_last_error());
        return na("the first call failed: %s", mdg_last_error());
    }
    bres res = {.ok = true};
    size_t blen = 0, dlen = 0;
    const void *b = mdg_msg_bulk(r, &blen);
    const uint8_t *d = NULL;
    mdg_params_get_bytes(mdg_msg_params(r), "d", &d, &dlen);
    if (path == P_NODE && !mdg_params_has(mdg_msg_params(r), "via"))
        res = na("nodes not available: the broker answered, not the node");
    else if (bulk ? (blen != bulk || memcmp(b, data, bulk) != 0)
                  : (dlen != PARAMS_BYTES - 5 || memcmp(d, payload, dlen) != 0))
        res = na("the echo came back changed");
    mdg_msg_destroy(&r);
    return res;
}

/* ----------------------------------------------------------------- RTT */

static int one_call(env *e, int path, size_t bulk, int timeout_ms)
{
    mdg_msg *r = NULL;
    int rc = mdg_conn_call(e->user[0], command(path), request(e, path, !bulk, false),
                           bulk ? bulk_data() : NULL, bulk, timeout_ms, &r);
    if (rc == 0 && bulk) {
        size_t blen = 0;
        mdg_msg_bulk(r, &blen);
        if (blen != bulk)
            rc = -1;
    }
    mdg_msg_destroy(&r);
    return rc;
}

static bres run_rtt(env *e, const spec *s)
{
    bres r = probe(e, s->path, s->bulk);
    if (!r.ok)
        return r;
    for (double end = now_s() + cfg.warm; now_s() < end;)
        if (one_call(e, s->path, s->bulk, CALL_TIMEOUT_MS))
            return na("call failed: %s", mdg_last_error());
    lat l = {0};
    double t0 = now_s(), end = t0 + cfg.secs;
    while (now_s() < end) {
        uint64_t a = now_ns();
        if (one_call(e, s->path, s->bulk, CALL_TIMEOUT_MS)) {
            free(l.us);
            return na("call failed: %s", mdg_last_error());
        }
        lat_add(&l, (double)(now_ns() - a) / 1e3);
    }
    lat_finish(&l, &r, now_s() - t0);
    if (s->bulk) /* MB/s of payload each way */
        r.rate = r.rate * (double)s->bulk / 1e6;
    return r;
}

/* ----------------------------------------------------------- throughput */

/* One client's window: its thread sends while fewer than WINDOW - REFILL
 * calls are in flight; reply callbacks (on the connection's loop thread)
 * count down and wake it. */
typedef struct pipe_client {
    env *e;
    mdg_conn *c;
    int path;
    double end;
    window w;
    atomic_int errors;
    int send_err;
} pipe_client;

static void on_reply(mdg_msg *reply, void *arg)
{
    pipe_client *p = arg;
    size_t len = 0;
    const uint8_t *d;
    if (mdg_msg_is_error(reply) ||
        mdg_params_get_bytes(mdg_msg_params(reply), "d", &d, &len) != 0 || len != PARAMS_BYTES - 5)
        atomic_fetch_add(&p->errors, 1);
    window_reply(&p->w);
}

static void *pipe_thread(void *arg)
{
    pipe_client *p = arg;
    pthread_mutex_lock(&p->w.lock);
    while (now_s() < p->end && !p->send_err) {
        if (!window_wait(&p->w, false)) {
            p->send_err = -1;
            break;
        }
        int n = WINDOW - p->w.inflight;
        p->w.inflight += n;
        pthread_mutex_unlock(&p->w.lock);
        for (int i = 0; i < n; i++) {
            int rc = mdg_conn_send_cb(p->c, command(p->path), request(p->e, p->path, true, false),
                                      NULL, 0, on_reply, p);
            if (rc) {
                pthread_mutex_lock(&p->w.lock);
                p->w.inflight -= n - i; /* never sent */
                p->send_err = rc;
                pthread_mutex_unlock(&p->w.lock);
                break;
            }
        }
        pthread_mutex_lock(&p->w.lock);
    }
    if (!window_wait(&p->w, true) && !p->send_err)
        p->send_err = -1;
    pthread_mutex_unlock(&p->w.lock);
    return NULL;
}

/* All clients pipeline for `secs`; replies per second, all clients. */
static bres pipeline(env *e, int path, double secs)
{
    pipe_client pc[MAX_CLIENTS];
    pthread_t th[MAX_CLIENTS];
    double t0 = now_s();
    for (int i = 0; i < e->nusers; i++) {
        pc[i] = (pipe_client){.e = e, .c = e->user[i], .path = path, .end = t0 + secs};
        window_init(&pc[i].w);
        pthread_create(&th[i], NULL, pipe_thread, &pc[i]);
    }
    long done = 0;
    int errors = 0, send_err = 0;
    for (int i = 0; i < e->nusers; i++) {
        pthread_join(th[i], NULL);
        done += pc[i].w.done;
        errors += atomic_load(&pc[i].errors);
        if (pc[i].send_err)
            send_err = pc[i].send_err;
        window_destroy(&pc[i].w);
    }
    double elapsed = now_s() - t0;
    if (send_err)
        return na("pipelined calls failed (%d): %s", send_err,
                  send_err == -1 ? "replies stopped coming" : mdg_strerror(send_err));
    if (errors)
        return na("%d replies were errors or changed", errors);
    return (bres){.ok = true, .rate = (double)done / elapsed};
}

static bres run_tput(env *e, const spec *s)
{
    bres r = probe(e, s->path, 0);
    if (!r.ok)
        return r;
    r = pipeline(e, s->path, cfg.warm);
    return r.ok ? pipeline(e, s->path, cfg.secs) : r;
}

/* ------------------------------------------------------------ connect */

/* Handshakes: new connection -> CURVE -> ZAP -> HELLO/WELCOME -> resource
 * offer received. Teardown is not timed. */
static bres run_connect(env *e)
{
    lat l = {0};
    double spent = 0, end = now_s() + cfg.secs;
    for (int i = 0; i < CONNECT_MAX + 1 && now_s() < end; i++) {
        offer_wait w = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
        mdg_conn *c = NULL;
        uint64_t a = now_ns();
        int rc = conn_up(e, &c, e->ukeys, user_cmds, &w, NULL);
        pthread_mutex_lock(&w.lock);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 10;
        while (rc == 0 && !w.got)
            if (pthread_cond_timedwait(&w.cond, &w.lock, &ts))
                rc = -1;
        pthread_mutex_unlock(&w.lock);
        double us = (double)(now_ns() - a) / 1e3;
        mdg_conn_destroy(&c);
        if (rc) {
            free(l.us);
            return na("handshake failed: %s", mdg_last_error());
        }
        if (i == 0) /* the first one warms up */
            continue;
        lat_add(&l, us);
        spent += us / 1e6;
    }
    bres r = {0};
    lat_finish(&l, &r, spent);
    return r;
}

/* ----------------------------------------------------------- fairness */

/* One node, a normal user measuring blocking node_echo calls, and another
 * user that misbehaves on the same node (bench/README.md, "Fairness"):
 *
 * - O_FLOOD: a client that sends FLOOD_CALLS node_echo calls as fast as its
 *   link takes them and never reads a reply. It is a raw CURVE DEALER that
 *   speaks the native protocol (bench_scale.c), not an mdg_conn: an
 *   mdg_conn's loop thread both sends and reads, so an application that
 *   stops reading also stops sending, and its queue_limit window stops it
 *   long before FLOOD_CALLS.
 * - O_STALL: an mdg_conn that calls node_stream and whose reply callback
 *   does not return after the first reply, so that its loop thread stops
 *   reading (an application stuck in a callback). The node streams with
 *   mdg_msg_reply_more from a thread of its own until that fails, the
 *   broker reports an error, or the run ends.
 *
 * Every wait is bounded, and the teardown releases what a misbehaving side
 * holds (the stuck callback first) before the connections go. */
#define FAIR_WAIT_S 10.0 /* set-up steps that should take milliseconds */

typedef struct fair {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* any change below; always broadcast */
    bool stop;           /* the run is over: stop streaming and flooding, release the reader */
    /* the node's stream */
    mdg_msg *kept;     /* the node_stream call, kept by its handler */
    bool streaming;    /* the stream thread was started */
    bool stream_done;  /* ...and has ended */
    long stream_sent;  /* replies mdg_msg_reply_more took */
    long node_errors;  /* error notices the broker sent the node */
    double block_ms;   /* the longest one mdg_msg_reply_more took */
    pthread_t stream_th;
    /* the stalled reader */
    bool stalled; /* its callback has the first reply and holds its loop thread */
    /* the flooder */
    void *ctx, *sock;
    unsigned char *params; /* its calls' params, encoded once */
    size_t plen;
    bool flooding, flood_done;
    long flood_sent;
    double flood_secs;
    pthread_t flood_th;
} fair;

/* A misbehaving user can make the library log an error per message (e.g.
 * one per reply the broker can no longer deliver): the first few lines of
 * a run are shown, the rest counted and summed up at its end. */
#define FAIR_LOG_LINES 3
static atomic_long fair_errors;

static void fair_log(int level, const char *text, void *arg)
{
    (void)arg;
    if (level <= MDG_LOG_ERROR && atomic_fetch_add(&fair_errors, 1) < FAIR_LOG_LINES)
        fprintf(stderr, "  [messidge] %s\n", text);
}

static void deadline_in(struct timespec *ts, double secs)
{
    clock_gettime(CLOCK_REALTIME, ts);
    double ns = (double)ts->tv_nsec + secs * 1e9;
    ts->tv_sec += (time_t)(ns / 1e9);
    ts->tv_nsec = (long)(ns - (double)(time_t)(ns / 1e9) * 1e9);
}

/* With F->lock held: wait until *flag, at most `secs`. */
static bool fair_wait(fair *F, const bool *flag, double secs)
{
    struct timespec ts;
    deadline_in(&ts, secs);
    while (!*flag)
        if (pthread_cond_timedwait(&F->cond, &F->lock, &ts))
            return *flag;
    return true;
}

static void fair_set(fair *F, bool *flag)
{
    pthread_mutex_lock(&F->lock);
    *flag = true;
    pthread_cond_broadcast(&F->cond);
    pthread_mutex_unlock(&F->lock);
}

/* node_stream: the handler keeps the call; the stream thread answers. */
static void h_node_stream(mdg_msg *m, void *arg)
{
    fair *F = arg;
    pthread_mutex_lock(&F->lock);
    bool take = !F->kept && !F->stop;
    if (take) {
        F->kept = mdg_msg_keep(m);
        pthread_cond_broadcast(&F->cond);
    }
    pthread_mutex_unlock(&F->lock);
    if (!take)
        mdg_msg_fail(m, "one stream at a time");
}

static void on_node_error(const char *command, const char *text, void *arg)
{
    (void)command;
    (void)text;
    fair *F = arg;
    pthread_mutex_lock(&F->lock);
    F->node_errors++;
    pthread_mutex_unlock(&F->lock);
}

static const mdg_cmd fair_node_cmds[] = {
    {NODE_COMMAND, h_node_echo, NULL, MDG_CMD_NEEDS_REPLY},
    {STREAM_COMMAND, h_node_stream, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* Replies of 64-byte params as fast as mdg_msg_reply_more takes them,
 * timing each call; then the final reply. */
static void *stream_thread(void *arg)
{
    fair *F = arg;
    struct timespec ts;
    deadline_in(&ts, FAIR_WAIT_S);
    pthread_mutex_lock(&F->lock);
    while (!F->kept && !F->stop && pthread_cond_timedwait(&F->cond, &F->lock, &ts) == 0)
        ;
    mdg_msg *m = F->kept;
    F->kept = NULL;
    pthread_mutex_unlock(&F->lock);
    bool failed = false;
    for (bool go = m != NULL; go;) {
        mdg_params *p = mdg_params_new();
        if (p)
            mdg_params_set_bytes(p, "d", payload, PARAMS_BYTES - 5);
        uint64_t a = now_ns();
        failed = mdg_msg_reply_more(m, p, NULL, 0) != 0;
        double ms = (double)(now_ns() - a) / 1e6;
        pthread_mutex_lock(&F->lock);
        F->stream_sent += !failed;
        F->block_ms = ms > F->block_ms ? ms : F->block_ms;
        go = !failed && !F->stop && !F->node_errors;
        pthread_mutex_unlock(&F->lock);
    }
    if (m && !failed)
        mdg_msg_reply(m, NULL, NULL, 0); /* closes the channel */
    mdg_msg_destroy(&m);
    fair_set(F, &F->stream_done);
    return NULL;
}

/* The stalled reader's callback: the first reply holds the loop thread
 * until the run is over; later ones (after the release) just return. */
static void on_stalled_reply(mdg_msg *reply, void *arg)
{
    (void)reply;
    fair *F = arg;
    pthread_mutex_lock(&F->lock);
    if (!F->stalled) {
        F->stalled = true;
        pthread_cond_broadcast(&F->cond);
        while (!F->stop)
            pthread_cond_wait(&F->cond, &F->lock);
    }
    pthread_mutex_unlock(&F->lock);
}

static bres stall_start(env *e, fair *F)
{
    mdg_keys *keys = NULL; /* a user of its own */
    if (pthread_create(&F->stream_th, NULL, stream_thread, F) != 0)
        return na("cannot start the node's stream thread");
    F->streaming = true;
    int rc = mdg_keys_new(&keys);
    if (!rc)
        rc = conn_up(e, &e->user[e->nusers++], keys, NULL, NULL, NULL);
    mdg_keys_destroy(&keys);
    if (!rc)
        rc = mdg_conn_send_cb(e->user[1], STREAM_COMMAND, request(e, P_NODE, false, false), NULL, 0,
                              on_stalled_reply, F);
    if (rc)
        return na("the stalled reader cannot call %s: %s", STREAM_COMMAND, mdg_last_error());
    pthread_mutex_lock(&F->lock);
    bool stalled = fair_wait(F, &F->stalled, FAIR_WAIT_S);
    pthread_mutex_unlock(&F->lock);
    return stalled ? (bres){.ok = true} : na("the node's stream did not start");
}

/* The head frame of a message from a client (docs/protocol.md): the
 * header [version 2, kind, seq, ack 0 (never reads), corr = seq, command,
 * flags 0], then the params. Its length, or 0 when cap is too small. */
static size_t raw_head(uint8_t *buf, size_t cap, int kind, uint64_t seq, const char *command, const void *params,
                       size_t plen)
{
    size_t n = cbor_encode_array_start(7, buf, cap), len = strlen(command);
    if (cap < 64 + len + plen)
        return 0;
    n += cbor_encode_uint(2, buf + n, cap - n);
    n += cbor_encode_uint((uint64_t)kind, buf + n, cap - n);
    n += cbor_encode_uint(seq, buf + n, cap - n);
    n += cbor_encode_uint(0, buf + n, cap - n);
    n += cbor_encode_uint(seq, buf + n, cap - n);
    n += cbor_encode_string_start(len, buf + n, cap - n);
    memcpy(buf + n, command, len);
    n += len;
    n += cbor_encode_uint(0, buf + n, cap - n);
    memcpy(buf + n, params, plen);
    return n + plen;
}

/* FLOOD_CALLS calls, sequenced from 1, as fast as the socket takes them. */
static void *flood_thread(void *arg)
{
    fair *F = arg;
    uint8_t h[1024];
    long sent = 0;
    bool stop = false;
    double t0 = now_s();
    while (sent < FLOOD_CALLS && !stop) {
        size_t hl = raw_head(h, sizeof h, 3 /* command */, (uint64_t)sent + 1, NODE_COMMAND, F->params, F->plen);
        bool full = false;
        if (hl && zmq_send(F->sock, h, hl, ZMQ_DONTWAIT) >= 0) {
            sent++;
        } else if (errno == EAGAIN) { /* the pipe is full: wait, but look at stop */
            zmq_pollitem_t it = {F->sock, 0, ZMQ_POLLOUT, 0};
            zmq_poll(&it, 1, 10);
            full = true;
        } else {
            break;
        }
        if (full || sent % 256 == 0) {
            pthread_mutex_lock(&F->lock);
            stop = F->stop;
            pthread_mutex_unlock(&F->lock);
        }
    }
    pthread_mutex_lock(&F->lock);
    F->flood_sent = sent;
    F->flood_secs = now_s() - t0;
    F->flood_done = true;
    pthread_cond_broadcast(&F->cond);
    pthread_mutex_unlock(&F->lock);
    return NULL;
}

/* A session for the flooder (HELLO, WELCOME), then the flood; returns once
 * the flood is handed to its socket (or after FAIR_WAIT_S). */
static bres flood_start(env *e, fair *F)
{
    char pk[41], sk[41], spk[41], ep[64];
    int rc = 1;
    zmq_z85_encode(spk, mdg_keys_public(e->bkeys), 32);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", mdg_broker_port(e->b));
    if (zmq_curve_keypair(pk, sk) || !(F->ctx = zmq_ctx_new()) ||
        !(F->sock = raw_dealer(F->ctx, ep, spk, pk, sk, 1000, 0)) || raw_hello(F->sock))
        return na("the flooder cannot connect: %s", zmq_strerror(errno));
    for (double end = now_s() + FAIR_WAIT_S; (rc = raw_first_reply(F->sock, true)) == 1 && now_s() < end;) {
        zmq_pollitem_t it = {F->sock, 0, ZMQ_POLLIN, 0};
        zmq_poll(&it, 1, 100);
    }
    if (rc)
        return na("the flooder got no welcome");
    mdg_params *p = request(e, P_NODE, true, false);
    size_t cap = 0;
    F->plen = p ? cbor_serialize_alloc(mdg_params_map(p), &F->params, &cap) : 0;
    mdg_params_destroy(&p);
    if (!F->plen)
        return na("cannot encode the flooder's params");
    if (pthread_create(&F->flood_th, NULL, flood_thread, F) != 0)
        return na("cannot start the flooder");
    F->flooding = true;
    pthread_mutex_lock(&F->lock);
    fair_wait(F, &F->flood_done, FAIR_WAIT_S);
    pthread_mutex_unlock(&F->lock);
    return (bres){.ok = true};
}

/* The run is over: release and stop the other side, then wait for its
 * threads. A stream thread blocked in mdg_msg_reply_more after the reader
 * was released (the broker never lets it through) is let go by
 * disconnecting the node, which fails what waits for room. */
static void fair_down(env *e, fair *F, bres *r)
{
    fair_set(F, &F->stop);
    if (F->streaming) {
        pthread_mutex_lock(&F->lock);
        bool done = fair_wait(F, &F->stream_done, FAIR_WAIT_S);
        pthread_mutex_unlock(&F->lock);
        if (!done)
            mdg_conn_disconnect(e->node);
        pthread_join(F->stream_th, NULL);
        mdg_msg_destroy(&F->kept); /* a call that came after the thread gave up waiting */
    }
    if (F->flooding)
        pthread_join(F->flood_th, NULL);
    if (F->sock) { /* say goodbye, so that the broker drops what it keeps for us */
        uint8_t h[128];
        static const uint8_t empty_map[] = {0xa0};
        int ms = 1000;
        size_t hl = raw_head(h, sizeof h, 6 /* bye */, 0, "", empty_map, 1);
        zmq_setsockopt(F->sock, ZMQ_SNDTIMEO, &ms, sizeof ms);
        zmq_send(F->sock, h, hl, 0);
        zmq_close(F->sock);
    }
    if (F->ctx)
        zmq_ctx_term(F->ctx);
    free(F->params);
    r->other_sent = F->flood_sent + F->stream_sent;
    r->flood_secs = F->flood_secs;
    r->block_ms = F->block_ms;
}

/* The normal user: blocking node_echo calls, warm-up then cfg.secs. A call
 * not answered within FAIR_TIMEOUT_MS failed, and its wait is a sample; a
 * refused one failed and is not (it was not served). */
static bres fair_measure(env *e)
{
    lat l = {0};
    bres r = {.ok = true, .p50 = NAN, .p99 = NAN};
    for (double end = now_s() + cfg.warm; now_s() < end;)
        one_call(e, P_NODE, 0, FAIR_TIMEOUT_MS);
    double t0 = now_s(), end = t0 + cfg.secs;
    while (now_s() < end) {
        uint64_t a = now_ns();
        int rc = one_call(e, P_NODE, 0, FAIR_TIMEOUT_MS);
        r.calls++;
        r.failed += rc != 0;
        if (rc == 0 || rc == MDG_ETIMEDOUT)
            lat_add(&l, (double)(now_ns() - a) / 1e3);
    }
    lat_finish(&l, &r, now_s() - t0);
    r.ok = true; /* a run where every call failed is a result too */
    return r;
}

static bres run_fair(const spec *s)
{
    env e;
    fair F = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    atomic_store(&fair_errors, 0);
    mdg_set_log(fair_log, NULL, MDG_LOG_ERROR);
    bres r = env_up(&e, P_BROKER, 1, false);
    if (r.ok && conn_up(&e, &e.node, e.nkeys, fair_node_cmds, &F, on_node_error))
        r = na("the node cannot connect: %s", mdg_last_error());
    if (r.ok)
        r = probe(&e, P_NODE, 0);
    if (r.ok && s->other == O_FLOOD)
        r = flood_start(&e, &F);
    else if (r.ok && s->other == O_STALL)
        r = stall_start(&e, &F);
    if (r.ok)
        r = fair_measure(&e);
    fair_down(&e, &F, &r);
    env_down(&e);
    long n = atomic_load(&fair_errors);
    if (n > FAIR_LOG_LINES)
        fprintf(stderr, "  [messidge] ...and %ld more error lines in this run\n", n - FAIR_LOG_LINES);
    return r;
}

/* ------------------------------------------------------------ entry */

static void quiet_log(int level, const char *text, void *arg)
{
    (void)arg;
    if (level <= MDG_LOG_ERROR)
        fprintf(stderr, "  [messidge] %s\n", text);
}

bres mdg_run(const spec *s)
{
    env e;
    mdg_set_log(quiet_log, NULL, MDG_LOG_ERROR);
    if (s->kind == K_FAIR)
        return run_fair(s);
    int users = s->kind == K_TPUT ? s->clients : s->kind == K_RTT ? 1 : 0;
    bres r = env_up(&e, s->kind == K_CONNECT ? P_BROKER : s->path, users, s->fleet);
    if (r.ok) {
        switch (s->kind) {
        case K_RTT: r = run_rtt(&e, s); break;
        case K_TPUT: r = run_tput(&e, s); break;
        default: r = run_connect(&e); break;
        }
    }
    env_down(&e);
    return r;
}

/* ------------------------------------------- scale: the broker child */

/* A broker serving "echo" until stdin closes; prints "READY port pk-z85". */
/* serve-mdg: a broker; serve-mdg-node: a broker and a node serving
 * node_echo, for clients in other processes (the Python client rows). */
int mdg_serve_child(bool with_node)
{
    env e;
    mdg_set_log(quiet_log, NULL, MDG_LOG_ERROR);
    bres r = env_up(&e, with_node ? P_NODE : P_BROKER, 0, false);
    if (!r.ok) {
        fprintf(stderr, "%s\n", r.why);
        env_down(&e);
        return 1;
    }
    if (with_node) {
        char bpk[MDG_KEY_B64_LEN + 1], npk[MDG_KEY_B64_LEN + 1];
        mdg_pk_to_b64(mdg_keys_public(e.bkeys), bpk);
        mdg_pk_to_b64(mdg_keys_public(e.nkeys), npk);
        printf("READY %d %s %s\n", mdg_broker_port(e.b), bpk, npk);
    } else {
        char z85[41];
        zmq_z85_encode(z85, mdg_keys_public(e.bkeys), 32);
        printf("READY %d %s\n", mdg_broker_port(e.b), z85);
    }
    fflush(stdout);
    char buf[64];
    while (fgets(buf, sizeof buf, stdin))
        ;
    env_down(&e);
    return 0;
}

/* The active client of the scale scenario: an env without a broker. */
void *mdg_ext_connect(int port, const uint8_t server_pk[32])
{
    env *e = calloc(1, sizeof *e);
    mdg_conn_options o = {.port = port};
    mdg_set_log(quiet_log, NULL, MDG_LOG_ERROR);
    if (!e || mdg_keys_new(&e->ukeys) ||
        mdg_conn_new_with_keys(&e->user[0], "127.0.0.1", server_pk, e->ukeys, &o) ||
        mdg_conn_start(e->user[0]) || mdg_conn_wait_until_ready(e->user[0], 10000)) {
        fprintf(stderr, "active client: %s\n", mdg_last_error());
        if (e) {
            e->nusers = 1;
            env_down(e);
        }
        free(e);
        return NULL;
    }
    e->nusers = 1;
    return e;
}

bres mdg_ext_rtt(void *conn)
{
    spec s = {.kind = K_RTT, .path = P_BROKER};
    return conn ? run_rtt(conn, &s) : na("no active client");
}

void mdg_ext_close(void **conn)
{
    if (conn && *conn) {
        env_down(*conn);
        free(*conn);
        *conn = NULL;
    }
}
