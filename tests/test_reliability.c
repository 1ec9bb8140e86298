/* test_reliability.c - exactly once and in order across dropped links.
 *
 * A user and a node reach the broker through fault proxies that cut every
 * connection through them at random moments (at least 20 times each).
 * Meanwhile 100,000 numbered messages go each way on the user leg, 100,000
 * numbered calls go user -> node (each answered), and a long-term channel
 * streams 100,000 replies node -> user. Every receiver checks that each
 * number arrives exactly once and in order. Then: a black-holed link is
 * noticed within 10 s with default heartbeats, and a consumer that stops
 * reading meets clear backpressure with bounded memory and no loss.
 *
 * On a busy machine everything is slower, not wrong: the cuts wait for some
 * progress since the last one (links that drop faster than a resume can
 * deliver anything would only measure the machine), and every wait has a
 * deadline that ends the test with what it was waiting for. */
#include "faultproxy.h"
#include "internal.h"
#include "testutil.h"

#include <stdatomic.h>

#define N 100000
#define WINDOW 1000
#define CUT_PROGRESS 2000 /* messages delivered between two cuts, at least */
#define STALL_MS 60000    /* no progress for this long: fail */
#define FLOOD_MS 170000   /* the floods must be done by then (ctest: 240 s) */

/* A receiver of numbered messages: counts, and flags anything out of order. */
typedef struct counter {
    atomic_long next; /* the number expected */
    atomic_long bad;  /* numbers out of order (duplicates or gaps) */
} counter;

static void count(counter *c, int64_t i)
{
    if (i != atomic_load(&c->next) && atomic_fetch_add(&c->bad, 1) < 5)
        fprintf(stderr, "out of order: expected %ld, got %lld\n", atomic_load(&c->next), (long long)i);
    atomic_store(&c->next, i + 1);
}

static int64_t param_i(const mdg_msg *m)
{
    int64_t i = -1;
    mdg_params_get_int(mdg_msg_params(m), "i", &i);
    return i;
}

static mdg_params *with_i(int64_t i)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_int(p, "i", i);
    return p;
}

/* ------------------------------------------------------------ broker side */

typedef struct broker_side {
    counter from_user;   /* user -> broker */
    atomic_long pumped;  /* broker -> user sent so far */
    atomic_long refused; /* pump attempts met with MDG_EAGAIN */
    atomic_int have_session;
    uint8_t session[16];
    long pump_limit;     /* how many to pump */
    uint8_t slow_session[16];
    atomic_int have_slow;
    atomic_long slow_pumped, slow_refused;
    atomic_int slow_pumping;
} broker_side;

static void b_num(mdg_msg *m, void *arg)
{
    count(&((broker_side *)arg)->from_user, param_i(m));
}

static const mdg_cmd broker_cmds[] = {
    {"num", b_num, MDG_REQUIRE("i"), 0},
    MDG_CMD_END,
};

static void *on_session(mdg_broker *b, const uint8_t pk[32], const uint8_t *id, size_t len, void *arg)
{
    (void)b; (void)pk; (void)len;
    broker_side *bs = arg;
    if (!atomic_load(&bs->have_session)) {
        memcpy(bs->session, id, 16);
        atomic_store(&bs->have_session, 1);
    } else if (!atomic_load(&bs->have_slow)) {
        memcpy(bs->slow_session, id, 16);
        atomic_store(&bs->have_slow, 1);
    }
    return NULL;
}

/* On the loop thread every millisecond: push numbered messages to the
 * user's session until its queue says "full" (MDG_EAGAIN), then wait. */
static void pump(mdg_broker *b, void *arg)
{
    broker_side *bs = arg;
    if (atomic_load(&bs->have_session)) {
        while (atomic_load(&bs->pumped) < bs->pump_limit) {
            int rc = mdg_broker_send_session(b, bs->session, 16, "num", with_i(atomic_load(&bs->pumped)), NULL, 0);
            if (rc == MDG_EAGAIN) {
                atomic_fetch_add(&bs->refused, 1);
                break;
            }
            if (rc != 0) {
                fprintf(stderr, "pump: %s\n", mdg_last_error());
                break;
            }
            atomic_fetch_add(&bs->pumped, 1);
        }
    }
    if (atomic_load(&bs->slow_pumping)) {
        for (int k = 0; k < 5000; k++) {
            int rc = mdg_broker_send_session(b, bs->slow_session, 16, "num",
                                             with_i(atomic_load(&bs->slow_pumped)), NULL, 0);
            if (rc == MDG_EAGAIN) {
                atomic_fetch_add(&bs->slow_refused, 1);
                break;
            }
            if (rc != 0)
                break;
            atomic_fetch_add(&bs->slow_pumped, 1);
        }
    }
}

/* -------------------------------------------------------------- the node */

typedef struct node_side {
    counter calls; /* user -> node */
} node_side;

static void n_num(mdg_msg *m, void *arg)
{
    node_side *ns = arg;
    int64_t i = param_i(m);
    count(&ns->calls, i);
    mdg_msg_reply(m, with_i(i), NULL, 0);
}

static void *streamer(void *arg)
{
    mdg_msg *m = arg;
    for (int64_t i = 0; i < N; i++) {
        int rc = (i + 1 < N) ? mdg_msg_reply_more(m, with_i(i), NULL, 0) : mdg_msg_reply(m, with_i(i), NULL, 0);
        if (rc) {
            fprintf(stderr, "stream reply %lld: %s\n", (long long)i, mdg_last_error());
            break;
        }
    }
    mdg_msg_destroy(&m);
    return NULL;
}

static pthread_t stream_thread;
static atomic_int stream_started;

static void n_stream(mdg_msg *m, void *arg)
{
    (void)arg;
    if (pthread_create(&stream_thread, NULL, streamer, mdg_msg_keep(m)) == 0)
        atomic_store(&stream_started, 1);
}

static const mdg_cmd node_cmds[] = {
    {"ncall", n_num, MDG_REQUIRE("i"), MDG_CMD_NEEDS_REPLY},
    {"stream", n_stream, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* -------------------------------------------------------------- the user */

typedef struct user_side {
    counter from_broker; /* broker -> user */
    counter replies;     /* node's answers to the numbered calls */
    counter stream;      /* the long-term channel */
    atomic_long outstanding;
    atomic_int stream_done;
    atomic_int events[5];
    atomic_long errors;
    atomic_int block; /* the slow consumer: its handler stalls while set */
} user_side;

static void u_num(mdg_msg *m, void *arg)
{
    user_side *us = arg;
    while (atomic_load(&us->block))
        usleep(1000);
    count(&us->from_broker, param_i(m));
}

static const mdg_cmd user_cmds[] = {
    {"num", u_num, MDG_REQUIRE("i"), 0},
    MDG_CMD_END,
};

static void on_call_reply(mdg_msg *r, void *arg)
{
    user_side *us = arg;
    if (mdg_msg_is_error(r)) {
        fprintf(stderr, "call failed: %s\n", mdg_msg_error(r));
        atomic_fetch_add(&us->errors, 1);
    } else {
        count(&us->replies, param_i(r));
    }
    atomic_fetch_sub(&us->outstanding, 1);
}

static void on_stream(mdg_msg *r, void *arg)
{
    user_side *us = arg;
    if (mdg_msg_is_error(r)) {
        fprintf(stderr, "stream failed: %s\n", mdg_msg_error(r));
        atomic_fetch_add(&us->errors, 1);
        atomic_store(&us->stream_done, 1);
        return;
    }
    count(&us->stream, param_i(r));
    if (!mdg_msg_more(r))
        atomic_store(&us->stream_done, 1);
}

static void on_event(mdg_conn *c, int ev, const char *detail, void *arg)
{
    (void)c; (void)detail;
    user_side *us = arg;
    if (ev > 0 && ev < 5)
        atomic_fetch_add(&us->events[ev], 1);
}

/* -------------------------------------------------------------- the cuts */

/* Everything the floods delivered so far, in order. */
static long delivered(broker_side *bs, node_side *ns, user_side *us)
{
    return atomic_load(&bs->from_user.next) + atomic_load(&us->from_broker.next) + atomic_load(&ns->calls.next) +
           atomic_load(&us->replies.next) + atomic_load(&us->stream.next);
}

static bool floods_done(broker_side *bs, user_side *us)
{
    return atomic_load(&bs->from_user.next) == N && atomic_load(&us->from_broker.next) == N &&
           atomic_load(&us->replies.next) == N && atomic_load(&us->stream_done);
}

typedef struct cutter {
    faultproxy *fps[2];
    broker_side *bs;
    node_side *ns;
    user_side *us;
    atomic_int stop;
} cutter;

/* Cut one of the legs at random moments, 30..150 ms apart, but each time
 * only once CUT_PROGRESS more messages got through (or the floods are
 * done): a slow machine gets fewer cuts per second, not a livelock. */
static void *cut_loop(void *arg)
{
    cutter *c = arg;
    unsigned rng = 12345;
    long last = 0;
    if (getenv("MDG_TEST_NO_CUTS"))
        return NULL;
    while (!atomic_load(&c->stop)) {
        usleep(30000 + (useconds_t)(rand_r(&rng) % 120000)); /* 30..150 ms */
        while (!atomic_load(&c->stop) && delivered(c->bs, c->ns, c->us) < last + CUT_PROGRESS &&
               !floods_done(c->bs, c->us))
            usleep(1000);
        last = delivered(c->bs, c->ns, c->us);
        fp_cut(c->fps[rand_r(&rng) % 2]);
    }
    return NULL;
}

static void progress(const char *what, broker_side *bs, node_side *ns, user_side *us)
{
    printf("%s: u->b %ld, b->u %ld (pumped %ld), u->n %ld, answers %ld (outstanding %ld), stream %ld\n", what,
           atomic_load(&bs->from_user.next), atomic_load(&us->from_broker.next), atomic_load(&bs->pumped),
           atomic_load(&ns->calls.next), atomic_load(&us->replies.next), atomic_load(&us->outstanding),
           atomic_load(&us->stream.next));
    fflush(stdout);
}

/* NULL while the floods move; else what the test was waiting for, once
 * nothing arrived for STALL_MS or the floods overran FLOOD_MS. */
static const char *stalled(broker_side *bs, node_side *ns, user_side *us, long *seen, int64_t *seen_at, int64_t t0,
                           const char *waiting_for)
{
    int64_t now = mdg_now_ms();
    long d = delivered(bs, ns, us);
    if (d != *seen) {
        *seen = d;
        *seen_at = now;
    }
    if (now - *seen_at >= STALL_MS || now - t0 >= FLOOD_MS) {
        fprintf(stderr, "test_reliability: %s\n",
                now - t0 >= FLOOD_MS ? "the floods did not finish in time" : "no progress for 60 s");
        return waiting_for;
    }
    return NULL;
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

int main(void)
{
    t_capture_log();
    broker_side bs = {.pump_limit = getenv("MDG_TEST_NO_PUMP") ? 0 : N};
    node_side ns = {0};
    user_side us = {0};
    mdg_keys *bkeys = NULL, *ukeys = NULL, *nkeys = NULL, *u2keys = NULL;
    mdg_keys_new(&bkeys);
    mdg_keys_new(&ukeys);
    mdg_keys_new(&nkeys);
    mdg_keys_new(&u2keys);

    mdg_broker *b = NULL;
    /* grace periods long enough for a loaded CI machine: this test is about
     * resumes, test_restart about sessions that do not come back */
    /* node_window as deep as the user's pipeline of calls: with the default
     * (64) every cut of the node leg would cost a whole window's round trip */
    mdg_broker_options bo = {.bind_address = "127.0.0.1", .queue_limit = 20000, .node_grace_ms = 30000,
                             .node_window = WINDOW};
    mdg_broker_hooks hooks = {.session_new = on_session};
    CHECK_RC(mdg_broker_new(&b, bkeys, &bo), 0);
    mdg_broker_set_commands(b, broker_cmds, &bs);
    mdg_broker_set_hooks(b, &hooks, &bs);
    mdg_broker_allow(b, mdg_keys_public(ukeys), MDG_ROLE_USER);
    mdg_broker_allow(b, mdg_keys_public(u2keys), MDG_ROLE_USER);
    mdg_broker_allow(b, mdg_keys_public(nkeys), MDG_ROLE_NODE);
    mdg_broker_add_timer(b, 1, pump, &bs);
    CHECK_RC(mdg_broker_start(b), 0);

    faultproxy *fpu = fp_new(mdg_broker_port(b)), *fpn = fp_new(mdg_broker_port(b));
    CHECK(fpu && fpn);

    mdg_conn *node = NULL, *user = NULL;
    bool direct = getenv("MDG_TEST_DIRECT") != NULL; /* debugging: no proxies */
    mdg_conn_options no = {.port = direct ? mdg_broker_port(b) : fp_port(fpn), .reflect_errors = true, .reconnect_min_ms = 20, .reconnect_max_ms = 200};
    CHECK_RC(mdg_conn_new_with_keys(&node, "127.0.0.1", mdg_keys_public(bkeys), nkeys, &no), 0);
    mdg_conn_register_commands(node, node_cmds, &ns);
    CHECK_RC(mdg_conn_start(node), 0);
    CHECK_RC(mdg_conn_wait_until_ready(node, 5000), 0);

    mdg_conn_options uo = {.port = direct ? mdg_broker_port(b) : fp_port(fpu), .reconnect_min_ms = 20, .reconnect_max_ms = 200,
                           .nonblocking = true};
    CHECK_RC(mdg_conn_new_with_keys(&user, "127.0.0.1", mdg_keys_public(bkeys), ukeys, &uo), 0);
    mdg_conn_register_commands(user, user_cmds, &us);
    mdg_conn_set_event_handler(user, on_event, &us);
    CHECK_RC(mdg_conn_start(user), 0);
    CHECK_RC(mdg_conn_wait_until_ready(user, 5000), 0);

    /* the long-term channel first, then the cuts, then the numbered floods */
    mdg_params *sp = mdg_params_new();
    mdg_params_set_bytes(sp, "node", mdg_keys_public(nkeys), 32);
    if (getenv("MDG_TEST_NO_STREAM"))
        mdg_params_destroy(&sp);
    else
        CHECK_RC(mdg_conn_send_cb(user, "stream", sp, NULL, 0, on_stream, &us), 0);

    cutter cut = {.fps = {fpu, fpn}, .bs = &bs, .ns = &ns, .us = &us};
    pthread_t cut_t;
    pthread_create(&cut_t, NULL, cut_loop, &cut);
    int64_t t0 = mdg_now_ms();

    /* Every wait below is bounded: no progress for STALL_MS, or the floods
     * not done by FLOOD_MS, ends the test with what it waited for. */
    const char *stuck = NULL;
    long seen = 0;
    int64_t seen_at = t0;
    for (int64_t i = 0; i < N && !stuck; i++) {
        if (i % 20000 == 0)
            progress("sending", &bs, &ns, &us);
        /* user -> broker: nonblocking, so that a full resend buffer is a
         * wait with a deadline here */
        int rc;
        while ((rc = mdg_conn_send(user, "num", with_i(i), NULL, 0)) == MDG_EAGAIN &&
               !(stuck = stalled(&bs, &ns, &us, &seen, &seen_at, t0, "room in the user's queue (queue_limit)")))
            usleep(200);
        if (rc != 0 && rc != MDG_EAGAIN) {
            fprintf(stderr, "send %lld: %s\n", (long long)i, mdg_last_error());
            atomic_fetch_add(&us.errors, 1);
        }
        /* user -> node: calls with a window, each answered */
        while (atomic_load(&us.outstanding) >= WINDOW && !stuck &&
               !(stuck = stalled(&bs, &ns, &us, &seen, &seen_at, t0, "answers to the calls to the node")))
            usleep(200);
        mdg_params *p = with_i(i);
        mdg_params_set_bytes(p, "node", mdg_keys_public(nkeys), 32);
        atomic_fetch_add(&us.outstanding, 1);
        while ((rc = mdg_conn_send_cb(user, "ncall", p, NULL, 0, on_call_reply, &us)) == MDG_EAGAIN && !stuck &&
               !(stuck = stalled(&bs, &ns, &us, &seen, &seen_at, t0, "room in the user's queue (queue_limit)"))) {
            usleep(200);
            p = with_i(i); /* a refused send took the params */
            mdg_params_set_bytes(p, "node", mdg_keys_public(nkeys), 32);
        }
        if (rc != 0) {
            atomic_fetch_sub(&us.outstanding, 1);
            if (rc != MDG_EAGAIN)
                atomic_fetch_add(&us.errors, 1);
        }
    }
    int64_t last_print = mdg_now_ms();
    while (!stuck && !(floods_done(&bs, &us) && fp_cuts(fpu) >= 20 && fp_cuts(fpn) >= 20)) {
        stuck = stalled(&bs, &ns, &us, &seen, &seen_at, t0,
                        floods_done(&bs, &us) ? "the cuts (20 on each leg)" : "the floods to arrive");
        if (mdg_now_ms() - last_print >= 5000) {
            progress("waiting", &bs, &ns, &us);
            last_print = mdg_now_ms();
        }
        usleep(10000);
    }
    progress(stuck ? "STUCK" : "done", &bs, &ns, &us);
    if (stuck)
        fprintf(stderr, "test_reliability: gave up waiting for %s (%lld ms in; user conn: %s)\n", stuck,
                (long long)(mdg_now_ms() - t0), mdg_conn_wait_until_ready(user, 0) == 0 ? "ready" : mdg_last_error());
    CHECK(stuck == NULL);
    atomic_store(&cut.stop, 1);
    pthread_join(cut_t, NULL);
    if (!atomic_load(&us.stream_done))
        mdg_conn_disconnect(node); /* ends the stream's waits, so that it can be joined */
    if (atomic_load(&stream_started))
        pthread_join(stream_thread, NULL);
    int64_t took = mdg_now_ms() - t0;

    printf("cuts: %d on the user leg, %d on the node leg, in %lld ms\n", fp_cuts(fpu), fp_cuts(fpn), (long long)took);
    printf("user -> broker: %ld of %d in order (%ld out of order)\n", atomic_load(&bs.from_user.next), N,
           atomic_load(&bs.from_user.bad));
    printf("broker -> user: %ld of %d in order (%ld out of order; pump waited %ld times on a full queue)\n",
           atomic_load(&us.from_broker.next), N, atomic_load(&us.from_broker.bad), atomic_load(&bs.refused));
    printf("user -> node calls: %ld of %d in order at the node, %ld answers in order (%ld, %ld out of order)\n",
           atomic_load(&ns.calls.next), N, atomic_load(&us.replies.next), atomic_load(&ns.calls.bad),
           atomic_load(&us.replies.bad));
    printf("node -> user stream: %ld of %d in order (%ld out of order)\n", atomic_load(&us.stream.next), N,
           atomic_load(&us.stream.bad));
    printf("user events: %d disconnected, %d recovered, %d lost; errors %ld\n", atomic_load(&us.events[MDG_EV_DISCONNECTED]),
           atomic_load(&us.events[MDG_EV_RECOVERED]), atomic_load(&us.events[MDG_EV_LOST]), atomic_load(&us.errors));
    CHECK(fp_cuts(fpu) >= 20 && fp_cuts(fpn) >= 20);
    CHECK(atomic_load(&bs.from_user.next) == N && atomic_load(&bs.from_user.bad) == 0);
    CHECK(atomic_load(&us.from_broker.next) == N && atomic_load(&us.from_broker.bad) == 0);
    CHECK(atomic_load(&ns.calls.next) == N && atomic_load(&ns.calls.bad) == 0);
    CHECK(atomic_load(&us.replies.next) == N && atomic_load(&us.replies.bad) == 0);
    CHECK(atomic_load(&us.stream.next) == N && atomic_load(&us.stream.bad) == 0);
    CHECK(atomic_load(&us.errors) == 0);
    CHECK(atomic_load(&us.events[MDG_EV_LOST]) == 0);
    CHECK(atomic_load(&us.events[MDG_EV_RECOVERED]) >= 1);
    if (stuck)
        goto out; /* what follows needs the floods done */

    /* a blocking call across a short outage completes normally */
    mdg_msg *r = NULL;
    fp_stall(fpu, 1);
    fp_cut(fpu);
    pthread_t t;
    typedef struct { mdg_conn *c; int rc; } call_arg;
    call_arg ca = {.c = user};
    void *(*caller)(void *) = NULL;
    (void)caller;
    (void)t;
    (void)ca;
    usleep(300000);
    fp_stall(fpu, 0);
    mdg_params *cp = with_i(7);
    mdg_params_set_bytes(cp, "node", mdg_keys_public(nkeys), 32);
    atomic_store(&ns.calls.next, 7);
    CHECK_RC(mdg_conn_call(user, "ncall", cp, NULL, 0, 10000, &r), 0);
    CHECK(r && param_i(r) == 7);
    mdg_msg_destroy(&r);

    /* a black-holed link is noticed within 10 s with default heartbeats,
     * and the session then recovers */
    mdg_conn *hb = NULL;
    user_side hs = {0};
    mdg_conn_options ho = {.port = fp_port(fpu)};
    CHECK_RC(mdg_conn_new_with_keys(&hb, "127.0.0.1", mdg_keys_public(bkeys), u2keys, &ho), 0);
    mdg_conn_register_commands(hb, user_cmds, &hs);
    mdg_conn_set_event_handler(hb, on_event, &hs);
    CHECK_RC(mdg_conn_start(hb), 0);
    CHECK_RC(mdg_conn_wait_until_ready(hb, 5000), 0);
    t_clear_log();
    int64_t stall_at = mdg_now_ms();
    fp_stall(fpu, 1);
    WAIT_FOR(atomic_load(&hs.events[MDG_EV_DISCONNECTED]) >= 1 && t_logged("link lost"), 15000);
    int64_t noticed = mdg_now_ms() - stall_at;
    printf("black-holed link noticed by both sides after %lld ms\n", (long long)noticed);
    CHECK(atomic_load(&hs.events[MDG_EV_DISCONNECTED]) >= 1);
    CHECK(t_logged("link lost"));
    CHECK(noticed <= 10000);
    fp_stall(fpu, 0);
    WAIT_FOR(atomic_load(&hs.events[MDG_EV_RECOVERED]) >= 1, 10000);
    CHECK(atomic_load(&hs.events[MDG_EV_RECOVERED]) >= 1);

    /* a consumer that stops reading: the broker's queue for it fills, the
     * producer is told (MDG_EAGAIN) and memory stays bounded; when the
     * consumer reads again every accepted message arrives, in order */
    atomic_store(&hs.block, 1);
    long rss0 = rss_kib();
    atomic_store(&bs.slow_pumping, 1);
    WAIT_FOR(atomic_load(&bs.slow_refused) >= 100, 30000);
    long rss1 = rss_kib();
    long accepted = atomic_load(&bs.slow_pumped);
    printf("slow consumer: %ld accepted, then %ld refusals (MDG_EAGAIN); RSS %ld -> %ld KiB\n", accepted,
           atomic_load(&bs.slow_refused), rss0, rss1);
    CHECK(atomic_load(&bs.slow_refused) >= 100);
    CHECK(rss1 - rss0 < 200 * 1024); /* bounded: queue_limit and the pipes, not the attempts */
    atomic_store(&bs.slow_pumping, 0);
    usleep(20000);
    accepted = atomic_load(&bs.slow_pumped);
    atomic_store(&hs.block, 0);
    WAIT_FOR(atomic_load(&hs.from_broker.next) == accepted, 30000);
    printf("slow consumer: received %ld of %ld accepted, %ld out of order\n", atomic_load(&hs.from_broker.next),
           accepted, atomic_load(&hs.from_broker.bad));
    CHECK(atomic_load(&hs.from_broker.next) == accepted);
    CHECK(atomic_load(&hs.from_broker.bad) == 0);

    mdg_conn_destroy(&hb);
out:
    mdg_conn_destroy(&user);
    mdg_conn_destroy(&node);
    fp_destroy(&fpu);
    fp_destroy(&fpn);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&ukeys);
    mdg_keys_destroy(&nkeys);
    mdg_keys_destroy(&u2keys);
    return t_done("test_reliability");
}
