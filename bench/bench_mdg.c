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

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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
    mdg_keys_destroy(&e->bkeys);
    mdg_keys_destroy(&e->ukeys);
    mdg_keys_destroy(&e->nkeys);
}

static int conn_up(env *e, mdg_conn **c, const mdg_keys *keys, const mdg_cmd *cmds, void *arg)
{
    mdg_conn_options o = {.port = mdg_broker_port(e->b)};
    int rc = mdg_conn_new_with_keys(c, "127.0.0.1", mdg_keys_public(e->bkeys), keys, &o);
    if (!rc && cmds)
        rc = mdg_conn_register_commands(*c, cmds, arg);
    if (!rc)
        rc = mdg_conn_start(*c);
    if (!rc)
        rc = mdg_conn_wait_until_ready(*c, 10000);
    return rc;
}

/* A broker, a node when the path needs one, and nusers user sessions. */
static bres env_up(env *e, int path, int nusers)
{
    mdg_broker_options o = {.bind_address = "127.0.0.1", .port = 0};
    *e = (env){0};
    if (mdg_keys_new(&e->bkeys) || mdg_keys_new(&e->ukeys) || mdg_keys_new(&e->nkeys) ||
        mdg_broker_new(&e->b, e->bkeys, &o) || mdg_broker_set_commands(e->b, broker_cmds, NULL) ||
        mdg_broker_allow_any(e->b) ||
        mdg_broker_allow(e->b, mdg_keys_public(e->nkeys), MDG_ROLE_NODE) || mdg_broker_start(e->b))
        return na("cannot start a broker: %s", mdg_last_error());
    if (path == P_NODE && conn_up(e, &e->node, e->nkeys, node_cmds, NULL))
        return na("the node cannot connect: %s", mdg_last_error());
    for (; e->nusers < nusers; e->nusers++)
        if (conn_up(e, &e->user[e->nusers], e->ukeys, NULL, NULL))
            return na("a user cannot connect: %s", mdg_last_error());
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

static int one_call(env *e, int path, size_t bulk)
{
    mdg_msg *r = NULL;
    int rc = mdg_conn_call(e->user[0], command(path), request(e, path, !bulk, false),
                           bulk ? bulk_data() : NULL, bulk, CALL_TIMEOUT_MS, &r);
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
        if (one_call(e, s->path, s->bulk))
            return na("call failed: %s", mdg_last_error());
    lat l = {0};
    double t0 = now_s(), end = t0 + cfg.secs;
    while (now_s() < end) {
        uint64_t a = now_ns();
        if (one_call(e, s->path, s->bulk)) {
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
        int rc = conn_up(e, &c, e->ukeys, user_cmds, &w);
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
    int users = s->kind == K_TPUT ? s->clients : s->kind == K_RTT ? 1 : 0;
    bres r = env_up(&e, s->kind == K_CONNECT ? P_BROKER : s->path, users);
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
int mdg_serve_child(void)
{
    env e;
    mdg_set_log(quiet_log, NULL, MDG_LOG_ERROR);
    bres r = env_up(&e, P_BROKER, 0);
    if (!r.ok) {
        fprintf(stderr, "%s\n", r.why);
        env_down(&e);
        return 1;
    }
    char z85[41];
    zmq_z85_encode(z85, mdg_keys_public(e.bkeys), 32);
    printf("READY %d %s\n", mdg_broker_port(e.b), z85);
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
