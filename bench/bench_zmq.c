/* bench_zmq.c - the raw libzmq baseline: what the same round trips cost
 * with nothing but libzmq, CURVE and a ZAP handler.
 *
 * The layout is libmessidge's (bench_mdg.c): the server runs in this
 * process on its own thread with its own context (ROUTER with
 * ZMQ_CURVE_SERVER on 127.0.0.1 and a free port, plus a ZAP handler, a REP
 * socket on inproc://zeromq.zap.01 answering 200, polled by the same
 * thread); each client and the worker has its own context; the calling
 * thread is the benchmark's main thread (RTT) or one thread per client.
 *
 * Broker path: DEALER -> ROUTER echo -> DEALER.
 * Node path:   DEALER -> ROUTER relay -> DEALER worker -> relay -> DEALER;
 * the relay puts the client's routing id in front, the worker sends the
 * frames back as they came. */
#include "bench.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* libmessidge sets 10,000 and queues what does not fit; this plain code
 * drops instead, and a libzmq pipe may report full at half its HWM (the
 * reader acknowledges in batches), which 8 x 1,000 calls in flight to one
 * worker reach. So the baseline's queues are larger: they are never the
 * limit of a run, as libmessidge's are not. */
#define HWM 100000
#define BATCH 256 /* messages handled per wake-up, as the broker */
#define MAX_FRAMES 4

typedef struct zkeys {
    char pk[41], sk[41]; /* Z85 text */
} zkeys;

static int zkeys_new(zkeys *k)
{
    return zmq_curve_keypair(k->pk, k->sk);
}

typedef struct zserver {
    void *ctx, *router, *zap;
    zkeys keys;
    int port;
    bool relay;
    pthread_t th;
    uint8_t worker[256]; /* the relay's worker routing id */
    size_t worker_len;
} zserver;

/* -------------------------------------------------------------- server */

/* RFC 27: version, request id, domain, address, identity, mechanism, key.
 * Everyone is welcome: the point is to pay for the round trip to ZAP. */
static void zap_handle(void *zap)
{
    zmq_msg_t part[8];
    int n = 0, more = 1;
    while (more && n < 8) {
        zmq_msg_init(&part[n]);
        if (zmq_msg_recv(&part[n], zap, 0) < 0) {
            zmq_msg_close(&part[n]);
            break;
        }
        more = zmq_msg_more(&part[n]);
        n++;
    }
    if (n >= 2) {
        zmq_send(zap, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(zap, zmq_msg_data(&part[1]), zmq_msg_size(&part[1]), ZMQ_SNDMORE);
        zmq_send(zap, "200", 3, ZMQ_SNDMORE);
        zmq_send(zap, "OK", 2, ZMQ_SNDMORE);
        zmq_send(zap, "", 0, ZMQ_SNDMORE);
        zmq_send(zap, "", 0, 0);
    }
    for (int i = 0; i < n; i++)
        zmq_msg_close(&part[i]);
}

/* Receive one whole message (non-blocking). Returns frames, 0 = none. */
static int recv_frames(void *s, zmq_msg_t *f, int flags)
{
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t tmp, *m = n < MAX_FRAMES ? &f[n] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, s, n ? 0 : flags) < 0) {
            zmq_msg_close(m);
            break;
        }
        more = zmq_msg_more(m);
        if (m == &tmp)
            zmq_msg_close(m);
        else
            n++;
    }
    return n;
}

/* Send frames first..n-1 (moved), after an optional extra routing id. */
static void send_frames(void *s, const void *rid, size_t rid_len, zmq_msg_t *f, int first, int n)
{
    if (rid && zmq_send(s, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return;
    for (int i = first; i < n; i++)
        if (zmq_msg_send(&f[i], s, (i < n - 1 ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0)
            return;
}

static void serve_one(zserver *z, zmq_msg_t *f, int n)
{
    if (!z->relay) { /* [client, payload] back as it came */
        send_frames(z->router, NULL, 0, f, 0, n);
        return;
    }
    const void *rid = zmq_msg_data(&f[0]);
    size_t rid_len = zmq_msg_size(&f[0]);
    if (!z->worker_len && n == 2 && zmq_msg_size(&f[1]) == 1) { /* the worker says hello */
        memcpy(z->worker, rid, rid_len);
        z->worker_len = rid_len;
        zmq_send(z->router, rid, rid_len, ZMQ_SNDMORE);
        zmq_send(z->router, "K", 1, 0);
    } else if (z->worker_len == rid_len && memcmp(rid, z->worker, rid_len) == 0) {
        send_frames(z->router, NULL, 0, f, 1, n); /* [worker, client, payload] */
    } else if (z->worker_len) {
        send_frames(z->router, z->worker, z->worker_len, f, 0, n);
    }
}

static void *server_thread(void *arg)
{
    zserver *z = arg;
    zmq_pollitem_t items[2] = {{z->router, 0, ZMQ_POLLIN, 0}, {z->zap, 0, ZMQ_POLLIN, 0}};
    for (;;) {
        if (zmq_poll(items, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break; /* ETERM: the context is shutting down */
        }
        int events = 0;
        size_t len = sizeof events;
        while (zmq_getsockopt(z->zap, ZMQ_EVENTS, &events, &len) == 0 && (events & ZMQ_POLLIN))
            zap_handle(z->zap);
        for (int i = 0; i < BATCH; i++) {
            zmq_msg_t f[MAX_FRAMES];
            int n = recv_frames(z->router, f, ZMQ_DONTWAIT);
            if (!n)
                break;
            serve_one(z, f, n);
            for (int j = 0; j < n; j++)
                zmq_msg_close(&f[j]);
        }
    }
    zmq_close(z->router);
    zmq_close(z->zap);
    return NULL;
}

/* For the profile notes (bench/README.md): BENCH_ZMQ_HEARTBEAT_MS=2000
 * gives the raw server ZMTP heartbeats like the broker's (interval, and
 * 3 intervals timeout). Off by default. */
static int set_heartbeat(void *s)
{
    const char *e = getenv("BENCH_ZMQ_HEARTBEAT_MS");
    int ivl = e ? atoi(e) : 0, timeout = 3 * ivl;
    if (ivl <= 0)
        return 0;
    return zmq_setsockopt(s, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl) ||
           zmq_setsockopt(s, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout);
}

/* Bind on the caller's thread (as mdg_broker_start does), then serve on a
 * new one. */
static int server_start(zserver *z, bool relay)
{
    int one = 1, hwm = HWM;
    char ep[256];
    size_t len = sizeof ep;
    *z = (zserver){.relay = relay};
    if (zkeys_new(&z->keys) || !(z->ctx = zmq_ctx_new()))
        return -1;
    z->zap = zmq_socket(z->ctx, ZMQ_REP);
    z->router = zmq_socket(z->ctx, ZMQ_ROUTER);
    if (!z->zap || !z->router || zmq_bind(z->zap, "inproc://zeromq.zap.01") ||
        zmq_setsockopt(z->router, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(z->router, ZMQ_CURVE_SECRETKEY, z->keys.sk, 40) ||
        zmq_setsockopt(z->router, ZMQ_ZAP_DOMAIN, "bench", 5) ||
        zmq_setsockopt(z->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
        zmq_setsockopt(z->router, ZMQ_SNDHWM, &hwm, sizeof hwm) ||
        zmq_setsockopt(z->router, ZMQ_RCVHWM, &hwm, sizeof hwm) ||
        set_heartbeat(z->router) || zmq_bind(z->router, "tcp://127.0.0.1:*") ||
        zmq_getsockopt(z->router, ZMQ_LAST_ENDPOINT, ep, &len))
        return -1;
    z->port = atoi(strrchr(ep, ':') + 1);
    return pthread_create(&z->th, NULL, server_thread, z) ? -1 : 0;
}

static void server_stop(zserver *z)
{
    if (!z->ctx)
        return;
    if (z->th) {
        zmq_ctx_shutdown(z->ctx);
        pthread_join(z->th, NULL);
    } else {
        if (z->router)
            zmq_close(z->router);
        if (z->zap)
            zmq_close(z->zap);
    }
    zmq_ctx_term(z->ctx);
    z->ctx = NULL;
}

/* -------------------------------------------------------------- clients */

typedef struct zclient {
    void *ctx, *sock;
} zclient;

/* A CURVE DEALER in a context of its own, like an mdg_conn. */
static int client_up(zclient *c, const zserver *z, const zkeys *k)
{
    int hwm = HWM, linger = 0, tmo = CALL_TIMEOUT_MS;
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", z->port);
    *c = (zclient){0};
    if (!(c->ctx = zmq_ctx_new()) || !(c->sock = zmq_socket(c->ctx, ZMQ_DEALER)))
        return -1;
    if (zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, z->keys.pk, 40) ||
        zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, k->pk, 40) ||
        zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, k->sk, 40) ||
        zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm) ||
        zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof hwm) ||
        zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(c->sock, ZMQ_RCVTIMEO, &tmo, sizeof tmo) || zmq_connect(c->sock, ep))
        return -1;
    return 0;
}

static void client_down(zclient *c)
{
    if (c->sock)
        zmq_close(c->sock);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    *c = (zclient){0};
}

/* One round trip of len bytes; 0 when the same length came back. */
static int round_trip(zclient *c, const void *data, size_t len)
{
    zmq_msg_t m;
    if (zmq_send(c->sock, data, len, 0) < 0)
        return -1;
    zmq_msg_init(&m);
    int n = zmq_msg_recv(&m, c->sock, 0);
    zmq_msg_close(&m);
    return n == (int)len ? 0 : -1;
}

/* --------------------------------------------------------------- worker */

typedef struct zworker {
    zclient c;
    pthread_t th;
} zworker;

static void *worker_thread(void *arg)
{
    zworker *w = arg;
    for (;;) {
        zmq_msg_t f[MAX_FRAMES];
        int n = recv_frames(w->c.sock, f, 0);
        if (!n) {
            if (errno == EAGAIN)
                continue; /* RCVTIMEO while idle */
            break;        /* ETERM */
        }
        send_frames(w->c.sock, NULL, 0, f, 0, n);
        for (int j = 0; j < n; j++)
            zmq_msg_close(&f[j]);
    }
    zmq_close(w->c.sock);
    return NULL;
}

static int worker_start(zworker *w, const zserver *z)
{
    zkeys k;
    char ok;
    *w = (zworker){0};
    if (zkeys_new(&k) || client_up(&w->c, z, &k) || zmq_send(w->c.sock, "W", 1, 0) != 1 ||
        zmq_recv(w->c.sock, &ok, 1, 0) != 1)
        return -1;
    return pthread_create(&w->th, NULL, worker_thread, w) ? -1 : 0;
}

static void worker_stop(zworker *w)
{
    if (!w->c.ctx)
        return;
    if (w->th) {
        zmq_ctx_shutdown(w->c.ctx);
        pthread_join(w->th, NULL);
        zmq_ctx_term(w->c.ctx);
        w->c = (zclient){0};
    } else {
        client_down(&w->c);
    }
}

/* ------------------------------------------------------------ scenarios */

static bres run_rtt(zclient *c, const spec *s)
{
    const void *data = s->bulk ? bulk_data() : payload;
    size_t len = s->bulk ? s->bulk : PARAMS_BYTES;
    for (double end = now_s() + cfg.warm; now_s() < end;)
        if (round_trip(c, data, len))
            return na("raw round trip failed: %s", zmq_strerror(errno));
    lat l = {0};
    bres r = {0};
    double t0 = now_s(), end = t0 + cfg.secs;
    while (now_s() < end) {
        uint64_t a = now_ns();
        if (round_trip(c, data, len)) {
            free(l.us);
            return na("raw round trip failed: %s", zmq_strerror(errno));
        }
        lat_add(&l, (double)(now_ns() - a) / 1e3);
    }
    lat_finish(&l, &r, now_s() - t0);
    if (s->bulk)
        r.rate = r.rate * (double)s->bulk / 1e6;
    return r;
}

typedef struct zpipe {
    zclient *c;
    double end;
    long done;
    int err;
} zpipe;

/* The same window as the libmessidge client: top up to WINDOW whenever
 * no more than WINDOW - REFILL are in flight, else wait for replies. */
static void *zpipe_thread(void *arg)
{
    zpipe *p = arg;
    int inflight = 0;
    char buf[PARAMS_BYTES];
    while (now_s() < p->end || inflight > 0) {
        if (inflight <= WINDOW - REFILL && now_s() < p->end)
            for (; inflight < WINDOW; inflight++)
                if (zmq_send(p->c->sock, payload, PARAMS_BYTES, 0) != PARAMS_BYTES) {
                    p->err = errno;
                    return NULL;
                }
        int flags = 0;
        for (;;) {
            int n = zmq_recv(p->c->sock, buf, sizeof buf, flags);
            if (n < 0) {
                if (flags && errno == EAGAIN)
                    break;
                p->err = errno;
                return NULL;
            }
            if (n != PARAMS_BYTES) {
                p->err = EPROTO;
                return NULL;
            }
            inflight--;
            p->done++;
            flags = ZMQ_DONTWAIT;
            if (inflight == 0)
                break;
        }
    }
    return NULL;
}

static bres pipeline(zclient *c, int nc, double secs)
{
    zpipe p[MAX_CLIENTS];
    pthread_t th[MAX_CLIENTS];
    double t0 = now_s();
    for (int i = 0; i < nc; i++) {
        p[i] = (zpipe){.c = &c[i], .end = t0 + secs};
        pthread_create(&th[i], NULL, zpipe_thread, &p[i]);
    }
    long done = 0;
    int err = 0;
    for (int i = 0; i < nc; i++) {
        pthread_join(th[i], NULL);
        done += p[i].done;
        if (p[i].err)
            err = p[i].err;
    }
    if (err)
        return na("raw pipelined calls failed: %s", zmq_strerror(err));
    return (bres){.ok = true, .rate = (double)done / (now_s() - t0)};
}

/* New context + DEALER + CURVE handshake + ZAP + one round trip, as an
 * mdg_conn's start-until-ready. Teardown is not timed. */
static bres run_connect(const zserver *z, const zkeys *k)
{
    lat l = {0};
    double spent = 0, end = now_s() + cfg.secs;
    for (int i = 0; i < CONNECT_MAX + 1 && now_s() < end; i++) {
        zclient c;
        uint64_t a = now_ns();
        int rc = client_up(&c, z, k);
        if (!rc)
            rc = round_trip(&c, payload, PARAMS_BYTES);
        double us = (double)(now_ns() - a) / 1e3;
        client_down(&c);
        if (rc) {
            free(l.us);
            return na("raw handshake failed: %s", zmq_strerror(errno));
        }
        if (i == 0)
            continue;
        lat_add(&l, us);
        spent += us / 1e6;
    }
    bres r = {0};
    lat_finish(&l, &r, spent);
    return r;
}

bres zmq_run(const spec *s)
{
    zserver z;
    zworker w = {0};
    zclient c[MAX_CLIENTS] = {{0}};
    zkeys k;
    bres r = {0};
    int nc = s->kind == K_TPUT ? s->clients : s->kind == K_RTT ? 1 : 0;
    bool relay = s->kind != K_CONNECT && s->path == P_NODE;
    if (server_start(&z, relay) || zkeys_new(&k)) {
        r = na("cannot start the raw server: %s", zmq_strerror(errno));
        goto out;
    }
    if (relay && worker_start(&w, &z)) {
        r = na("the raw worker cannot connect: %s", zmq_strerror(errno));
        goto out;
    }
    for (int i = 0; i < nc; i++)
        if (client_up(&c[i], &z, &k) || round_trip(&c[i], payload, PARAMS_BYTES)) {
            r = na("a raw client cannot connect: %s", zmq_strerror(errno));
            goto out;
        }
    switch (s->kind) {
    case K_RTT: r = run_rtt(&c[0], s); break;
    case K_TPUT:
        r = pipeline(c, nc, cfg.warm);
        if (r.ok)
            r = pipeline(c, nc, cfg.secs);
        break;
    default: r = run_connect(&z, &k); break;
    }
out:
    for (int i = 0; i < nc; i++)
        client_down(&c[i]);
    worker_stop(&w);
    server_stop(&z);
    return r;
}

/* ---------------------------------------------- the scale child (raw) */

/* Serve the raw echo until stdin closes; used by bench_scale.c to find
 * what libzmq itself holds per idle CURVE connection. */
int zmq_serve_child(void)
{
    zserver z;
    if (server_start(&z, false)) {
        fprintf(stderr, "cannot start the raw server: %s\n", zmq_strerror(errno));
        return 1;
    }
    printf("READY %d %s\n", z.port, z.keys.pk);
    fflush(stdout);
    char buf[64];
    while (fgets(buf, sizeof buf, stdin))
        ;
    server_stop(&z);
    return 0;
}
