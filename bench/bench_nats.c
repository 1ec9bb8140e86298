/* bench_nats.c - the NATS baseline: request/reply through Debian's
 * nats-server (started by run-bench.sh on loopback, plain and TLS) with
 * libnats.
 *
 * NATS has no server-side handlers: a request always goes requester ->
 * nats-server -> responder -> nats-server -> requester, which is the shape
 * of the node path. The responder is a second connection in this process
 * (libnats delivers on its own thread); each requester is a connection of
 * its own. Its figures are compared with both libmessidge paths. */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef HAVE_NATS

bres nats_run(const spec *s)
{
    (void)s;
    return na("libnats was not found at build time");
}

void nats_shutdown(void)
{
}

#else

#include <nats/nats.h>
#include <pthread.h>
#include <time.h>

static const char *status_text(natsStatus st)
{
    natsStatus last;
    const char *t = nats_GetLastError(&last);
    return t && *t ? t : natsStatus_GetText(st);
}

/* Requests go out at once (no batching by the flusher thread) for the
 * round-trip scenarios: the faster setting for them. */
static natsStatus nconnect(natsConnection **nc, bool tls, bool asap)
{
    natsOptions *o = NULL;
    natsStatus st = natsOptions_Create(&o);
    if (st == NATS_OK)
        st = natsOptions_SetURL(o, tls ? cfg.nats_tls_url : cfg.nats_url);
    if (st == NATS_OK && tls) {
        st = natsOptions_SetSecure(o, true);
        if (st == NATS_OK)
            st = natsOptions_LoadCATrustedCertificates(o, cfg.nats_ca);
    }
    if (st == NATS_OK)
        st = natsOptions_SetSendAsap(o, asap);
    if (st == NATS_OK)
        st = natsOptions_SetMaxPendingMsgs(o, 1 << 20);
    if (st == NATS_OK)
        st = natsConnection_Connect(nc, o);
    natsOptions_Destroy(o);
    return st;
}

/* The responder sends every request's data back to its reply subject. */
static void on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    (void)closure;
    natsConnection_Publish(nc, natsMsg_GetReply(msg), natsMsg_GetData(msg),
                           natsMsg_GetDataLength(msg));
    natsMsg_Destroy(msg);
}

typedef struct nenv {
    natsConnection *resp, *req[MAX_CLIENTS];
    natsSubscription *rsub, *sub[MAX_CLIENTS];
    int n;
    char subject[64];
} nenv;

static void nenv_down(nenv *e)
{
    for (int i = 0; i < e->n; i++) {
        natsSubscription_Destroy(e->sub[i]);
        natsConnection_Destroy(e->req[i]);
    }
    natsSubscription_Destroy(e->rsub);
    natsConnection_Destroy(e->resp);
    *e = (nenv){0};
}

static bres nenv_up(nenv *e, const spec *s, int n)
{
    static int runs;
    *e = (nenv){0};
    snprintf(e->subject, sizeof e->subject, "bench.echo.%d", ++runs);
    natsStatus st = nconnect(&e->resp, s->tls, s->kind == K_RTT);
    if (st == NATS_OK)
        st = natsConnection_Subscribe(&e->rsub, e->resp, e->subject, on_request, NULL);
    if (st == NATS_OK)
        st = natsSubscription_SetPendingLimits(e->rsub, -1, -1);
    if (st == NATS_OK)
        st = natsConnection_Flush(e->resp);
    for (; st == NATS_OK && e->n < n; e->n++)
        st = nconnect(&e->req[e->n], s->tls, s->kind == K_RTT);
    if (st != NATS_OK)
        return na("cannot connect to nats-server: %s", status_text(st));
    return (bres){.ok = true};
}

static bres run_rtt(nenv *e, const spec *s)
{
    const void *data = s->bulk ? bulk_data() : payload;
    int len = s->bulk ? (int)s->bulk : PARAMS_BYTES;
    lat l = {0};
    bres r = {0};
    double t0 = 0, end = now_s() + cfg.warm;
    for (int phase = 0; phase < 2; phase++) {
        while (now_s() < end) {
            natsMsg *reply = NULL;
            uint64_t a = now_ns();
            natsStatus st = natsConnection_Request(&reply, e->req[0], e->subject, data, len,
                                                   CALL_TIMEOUT_MS);
            double us = (double)(now_ns() - a) / 1e3;
            int got = reply ? natsMsg_GetDataLength(reply) : -1;
            natsMsg_Destroy(reply);
            if (st != NATS_OK || got != len) {
                free(l.us);
                return na("NATS request failed: %s", status_text(st));
            }
            if (phase)
                lat_add(&l, us);
        }
        if (phase == 0) {
            t0 = now_s();
            end = t0 + cfg.secs;
        }
    }
    lat_finish(&l, &r, now_s() - t0);
    if (s->bulk)
        r.rate = r.rate * (double)s->bulk / 1e6;
    return r;
}

/* Pipelined: a window of WINDOW requests per requester, published with
 * a reply subject of its own; replies arrive on the subscription's thread. */
typedef struct npipe {
    natsConnection *nc;
    const char *subject;
    char inbox[96];
    double end;
    window w;
    natsStatus err;
} npipe;

static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    npipe *p = closure;
    natsMsg_Destroy(msg);
    window_reply(&p->w);
}

static void *npipe_thread(void *arg)
{
    npipe *p = arg;
    pthread_mutex_lock(&p->w.lock);
    while (now_s() < p->end && p->err == NATS_OK) {
        if (!window_wait(&p->w, false)) {
            p->err = NATS_TIMEOUT;
            break;
        }
        int n = WINDOW - p->w.inflight;
        p->w.inflight += n;
        pthread_mutex_unlock(&p->w.lock);
        natsStatus st = NATS_OK;
        for (int i = 0; i < n && st == NATS_OK; i++)
            st = natsConnection_PublishRequest(p->nc, p->subject, p->inbox, payload, PARAMS_BYTES);
        pthread_mutex_lock(&p->w.lock);
        if (st != NATS_OK)
            p->err = st;
    }
    if (p->err == NATS_OK && !window_wait(&p->w, true))
        p->err = NATS_TIMEOUT;
    pthread_mutex_unlock(&p->w.lock);
    return NULL;
}

static bres pipeline(nenv *e, npipe *p, double secs)
{
    pthread_t th[MAX_CLIENTS];
    double t0 = now_s();
    for (int i = 0; i < e->n; i++) {
        p[i].end = t0 + secs;
        p[i].w.done = 0;
        pthread_create(&th[i], NULL, npipe_thread, &p[i]);
    }
    long done = 0;
    natsStatus err = NATS_OK;
    for (int i = 0; i < e->n; i++) {
        pthread_join(th[i], NULL);
        done += p[i].w.done;
        if (p[i].err != NATS_OK)
            err = p[i].err;
    }
    if (err != NATS_OK)
        return na("NATS pipelined requests failed: %s", natsStatus_GetText(err));
    return (bres){.ok = true, .rate = (double)done / (now_s() - t0)};
}

static bres run_tput(nenv *e)
{
    npipe p[MAX_CLIENTS];
    natsStatus st = NATS_OK;
    int subs = 0;
    for (int i = 0; i < e->n; i++) {
        p[i] = (npipe){.nc = e->req[i], .subject = e->subject};
        snprintf(p[i].inbox, sizeof p[i].inbox, "%s.reply.%d", e->subject, i);
        window_init(&p[i].w);
    }
    for (; subs < e->n && st == NATS_OK; subs++) {
        st = natsConnection_Subscribe(&e->sub[subs], e->req[subs], p[subs].inbox, on_reply, &p[subs]);
        if (st == NATS_OK)
            st = natsSubscription_SetPendingLimits(e->sub[subs], -1, -1);
        if (st == NATS_OK)
            st = natsConnection_Flush(e->req[subs]);
    }
    bres r = st == NATS_OK ? pipeline(e, p, cfg.warm)
                           : na("cannot subscribe: %s", status_text(st));
    if (r.ok)
        r = pipeline(e, p, cfg.secs);
    /* No callback may run once p is gone. */
    for (int i = 0; i < subs; i++)
        if (e->sub[i])
            natsSubscription_Unsubscribe(e->sub[i]);
    for (int i = 0; i < subs; i++) {
        natsSubscription_Destroy(e->sub[i]);
        e->sub[i] = NULL;
        natsConnection_Close(e->req[i]); /* joins the delivery thread */
    }
    for (int i = 0; i < e->n; i++) {
        window_destroy(&p[i].w);
    }
    return r;
}

bres nats_run(const spec *s)
{
    if (!(s->tls ? cfg.nats_tls_url : cfg.nats_url))
        return na("nats-server is not running (see run-bench.sh)");
    if (s->kind == K_CONNECT)
        return na("not measured");
    nenv e;
    bres r = nenv_up(&e, s, s->kind == K_TPUT ? s->clients : 1);
    if (r.ok)
        r = s->kind == K_RTT ? run_rtt(&e, s) : run_tput(&e);
    nenv_down(&e);
    return r;
}

void nats_shutdown(void)
{
    nats_CloseAndWait(5000);
}

#endif
