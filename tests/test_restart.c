/* test_restart.c - what survives a process restart (issue 5).
 *
 * The broker and a node run as processes of their own (proc_broker,
 * proc_node), so that they can be killed for real; the user is a
 * connection in this process.
 *
 *   a. A node is killed (SIGKILL) while the user streams from it and waits
 *      in a blocking call it never answers: both get an error, within the
 *      broker's node_grace_ms (plus its 250 ms check) when the node stays
 *      away, at once when a restarted node's new session replaces the old
 *      one. The restarted node (same keys) is back in service without a
 *      broker restart: calls work and new sessions are offered it.
 *   b. The broker is killed (SIGKILL) and started again on the same port
 *      with the same keys: the user reconnects by itself (DISCONNECTED,
 *      then LOST: sessions lived in the broker's memory); calls pending
 *      across the kill fail with MDG_ECLOSED when it is back; a call with a
 *      short timeout while it is down fails with MDG_ETIMEDOUT saying the
 *      link is down; the node process reconnects by itself; new calls to
 *      the broker and to the node work.
 *   d. (run before c) The broker is killed and restarted while user A
 *      streams from a node thread (mdg_msg_keep, mdg_msg_reply_more): A's
 *      stream fails with its lost session; user B, a new connection after
 *      the restart, calls the node and gets only its own answers, not a
 *      byte of A's stream; the node's streaming thread is told by
 *      mdg_msg_reply_more (MDG_ECLOSED) that its caller's session has
 *      ended, and stops.
 *   c. SIGTERM stops the broker, clients connected, with exit status 0
 *      within a bounded time; the node then stops cleanly too.
 *
 * Usage: test_restart [PROC_BROKER PROC_NODE] (default: next to this
 * program). Every child is killed on every way out (cleanup at exit, and
 * PR_SET_PDEATHSIG should this process die). */
#include "spawn.h"
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#define NODE_GRACE_MS 2000 /* the broker's node_grace_ms */
#define GRACE_CHECK_MS 250 /* how often the broker looks for expired sessions */


/* ------------------------------------------------------------ children */


static child broker_proc = {.name = "proc_broker", .out = -1};
static child node_proc = {.name = "proc_node", .out = -1};
static char broker_path[PATH_MAX], node_path[PATH_MAX];
static int port;
static char bpk[MDG_KEY_B64_LEN + 1], bsk[MDG_KEY_B64_LEN + 1];
static char npk[MDG_KEY_B64_LEN + 1], nsk[MDG_KEY_B64_LEN + 1];
static char upk[MDG_KEY_B64_LEN + 1], upk2[MDG_KEY_B64_LEN + 1]; /* users A and B */


/* Every way out: no child is left behind. */
static void cleanup(void)
{
    kill_hard(&node_proc);
    kill_hard(&broker_proc);
}

static void start_broker(void)
{
    char portarg[16];
    snprintf(portarg, sizeof portarg, "%d", port);
    char grace[16];
    snprintf(grace, sizeof grace, "%d", NODE_GRACE_MS);
    char *args[] = {"proc_broker", "--port", portarg, "--node-grace", grace, "--allow-user", upk,
                    "--allow-user", upk2, "--allow-node", npk, NULL};
    static char e_pk[80], e_sk[80];
    snprintf(e_pk, sizeof e_pk, "MDG_BROKER_PK=%s", bpk);
    snprintf(e_sk, sizeof e_sk, "MDG_BROKER_SK=%s", bsk);
    char *env[] = {e_pk, e_sk, NULL};
    spawn(&broker_proc, broker_path, args, env);
}

static void start_node(void)
{
    char portarg[16];
    snprintf(portarg, sizeof portarg, "%d", port);
    char *args[] = {"proc_node", "--port", portarg, NULL};
    static char e_pk[80], e_sk[80], e_bpk[80];
    snprintf(e_pk, sizeof e_pk, "MDG_NODE_PK=%s", npk);
    snprintf(e_sk, sizeof e_sk, "MDG_NODE_SK=%s", nsk);
    snprintf(e_bpk, sizeof e_bpk, "MDG_BROKER_PK=%s", bpk);
    char *env[] = {e_pk, e_sk, e_bpk, NULL};
    spawn(&node_proc, node_path, args, env);
}

static void need(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "test_restart: cannot go on: %s\n", what);
        t_failed++;
        t_done("test_restart");
        exit(1); /* cleanup runs at exit */
    }
}

/* ---------------------------------------------------------------- the user */

/* Connection events, in order, with when they came. */
static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static int ev_kind[64];
static int64_t ev_at[64];
static int n_ev;

static void on_event(mdg_conn *c, int ev, const char *detail, void *arg)
{
    (void)c;
    (void)arg;
    pthread_mutex_lock(&ev_lock);
    if (n_ev < 64) {
        ev_kind[n_ev] = ev;
        ev_at[n_ev++] = now_ms();
    }
    pthread_mutex_unlock(&ev_lock);
    printf("  user event %d%s%s\n", ev, detail ? ": " : "", detail ? detail : "");
    fflush(stdout);
}

/* First event of kind at index >= from: its index, or -1. */
static int find_event(int kind, int from)
{
    pthread_mutex_lock(&ev_lock);
    int found = -1;
    for (int i = from; i < n_ev && found < 0; i++)
        if (ev_kind[i] == kind)
            found = i;
    pthread_mutex_unlock(&ev_lock);
    return found;
}

static int events_now(void)
{
    pthread_mutex_lock(&ev_lock);
    int n = n_ev;
    pthread_mutex_unlock(&ev_lock);
    return n;
}

static int64_t event_at(int i)
{
    pthread_mutex_lock(&ev_lock);
    int64_t t = ev_at[i];
    pthread_mutex_unlock(&ev_lock);
    return t;
}

/* Resource offers: how many came, and whether the last listed our node. */
typedef struct offers {
    atomic_int count;
    atomic_int n_nodes;
    atomic_int lists_node;
} offers;

static void on_offer(mdg_msg *m, void *arg)
{
    offers *o = arg;
    cbor_item_t *nodes = mdg_params_get(mdg_msg_params(m), "nodes");
    uint8_t node_pk[MDG_KEY_BYTES];
    mdg_pk_from_b64(node_pk, npk);
    int n = 0, listed = 0;
    if (nodes && cbor_isa_array(nodes)) {
        n = (int)cbor_array_size(nodes);
        for (int i = 0; i < n; i++) {
            cbor_item_t *k = cbor_array_get(nodes, (size_t)i);
            if (k && cbor_isa_bytestring(k) && cbor_bytestring_length(k) == MDG_KEY_BYTES &&
                memcmp(cbor_bytestring_handle(k), node_pk, MDG_KEY_BYTES) == 0)
                listed = 1;
            if (k)
                cbor_decref(&k);
        }
    }
    atomic_store(&o->n_nodes, n);
    atomic_store(&o->lists_node, listed);
    atomic_fetch_add(&o->count, 1);
}

static const mdg_cmd user_cmds[] = {
    {"resource_offer", on_offer, MDG_REQUIRE("nodes"), 0},
    MDG_CMD_END,
};

static mdg_keys *ukeys, *ukeys2;
static uint8_t broker_pk_raw[MDG_KEY_BYTES];

static mdg_conn *new_user(offers *o, bool events)
{
    mdg_conn *c = NULL;
    mdg_conn_options opts = {.port = port, .reconnect_min_ms = 50, .reconnect_max_ms = 500};
    need(mdg_conn_new_with_keys(&c, "127.0.0.1", broker_pk_raw, ukeys, &opts) == 0, "a user connection");
    mdg_conn_register_commands(c, user_cmds, o);
    if (events)
        mdg_conn_set_event_handler(c, on_event, NULL);
    need(mdg_conn_start(c) == 0, "starting the user connection");
    return c;
}

/* The offer a brand-new session of the user gets: -1 when none came,
 * else 1 when it lists the node, 0 when not; *n the number of nodes. */
static int fresh_offer(int *n)
{
    offers o = {0};
    mdg_conn *c = new_user(&o, false);
    int rc = -1;
    if (mdg_conn_wait_until_ready(c, 10000) == 0) {
        WAIT_FOR(atomic_load(&o.count) > 0, 3000);
        if (atomic_load(&o.count) > 0) {
            rc = atomic_load(&o.lists_node);
            *n = atomic_load(&o.n_nodes);
        }
    }
    mdg_conn_destroy(&c);
    return rc;
}

static mdg_params *to_node(void)
{
    mdg_params *p = mdg_params_new();
    uint8_t pk[MDG_KEY_BYTES];
    mdg_pk_from_b64(pk, npk);
    mdg_params_set_bytes(p, "node", pk, MDG_KEY_BYTES);
    return p;
}

/* A blocking call on a thread of its own, so that the test can kill what
 * it waits for. */
/* The same, waited for here. */
static int call_now(mdg_conn *c, const char *command, mdg_params *p, int timeout_ms, t_call *j)
{
    t_call_start(j, c, command, p, timeout_ms);
    pthread_join(j->t, NULL);
    return j->rc;
}

/* A long-term channel's replies: numbers in order, then the end. */
typedef struct stream_state {
    atomic_long next; /* the number expected */
    atomic_long bad;  /* out of order */
    atomic_int failed, finished;
    char error[256];
    int64_t failed_at;
} stream_state;

static void on_stream(mdg_msg *r, void *arg)
{
    stream_state *s = arg;
    if (mdg_msg_is_error(r)) {
        snprintf(s->error, sizeof s->error, "%s", mdg_msg_error(r));
        s->failed_at = now_ms();
        atomic_store(&s->failed, 1);
        return;
    }
    int64_t i = -1;
    mdg_params_get_int(mdg_msg_params(r), "i", &i);
    if (i != atomic_load(&s->next))
        atomic_fetch_add(&s->bad, 1);
    atomic_store(&s->next, i + 1);
    if (!mdg_msg_more(r))
        atomic_store(&s->finished, 1);
}

/* A callback call's error (the session was lost). */
typedef struct cb_state {
    atomic_int failed, answered;
    char error[256];
} cb_state;

static void on_cb(mdg_msg *r, void *arg)
{
    cb_state *s = arg;
    if (mdg_msg_is_error(r)) {
        snprintf(s->error, sizeof s->error, "%s", mdg_msg_error(r));
        atomic_store(&s->failed, 1);
    } else {
        atomic_store(&s->answered, 1);
    }
}

/* --------------------------------------------------------------- part a */

/* Start a stream from the node and a call it never answers; wait until
 * the stream flows and the call has had time to reach the node. */
static void stream_and_hang(mdg_conn *user, stream_state *st, t_call *hang)
{
    memset(st, 0, sizeof *st);
    mdg_params *p = to_node();
    mdg_params_set_int(p, "n", 1000000);
    mdg_params_set_int(p, "interval_ms", 2);
    CHECK_RC(mdg_conn_send_cb(user, "stream", p, NULL, 0, on_stream, st), 0);
    WAIT_FOR(atomic_load(&st->next) >= 50, 5000);
    CHECK(atomic_load(&st->next) >= 50);
    t_call_start(hang, user, "hang", to_node(), 30000);
    usleep(300000);
    CHECK(!atomic_load(&hang->done));
}

static void part_a(mdg_conn *user)
{
    stream_state st;
    t_call hang, j;
    int n = -1;
    printf("a. node killed mid-stream, with a call pending (node_grace_ms %d)\n", NODE_GRACE_MS);

    /* a1: the node dies and stays away: the broker keeps its session for
     * the grace period, then fails what waits on it */
    stream_and_hang(user, &st, &hang);
    long before_kill = atomic_load(&st.next);
    int64_t t_kill = now_ms();
    kill_hard(&node_proc);
    WAIT_FOR(atomic_load(&hang.done) && atomic_load(&st.failed), NODE_GRACE_MS + GRACE_CHECK_MS + 5000);
    pthread_join(hang.t, NULL);
    int64_t hang_ms = hang.ended - t_kill, stream_ms = st.failed_at - t_kill;
    printf("a1: node SIGKILLed with %ld stream replies received; pending call failed after %lld ms "
           "(%s: %s), stream failed after %lld ms (%s); %ld replies in order, %ld out of order\n",
           before_kill, (long long)hang_ms, mdg_strerror(hang.rc), hang.text, (long long)stream_ms, st.error,
           atomic_load(&st.next), atomic_load(&st.bad));
    CHECK_RC(hang.rc, MDG_EREMOTE);
    CHECK(strstr(hang.text, "went away before answering") != NULL);
    CHECK(atomic_load(&st.failed) && strstr(st.error, "went away before answering") != NULL);
    CHECK(atomic_load(&st.bad) == 0 && !atomic_load(&st.finished));
    /* not before the grace period (the broker waits for a resume), and
     * within it plus the broker's check interval and a margin */
    CHECK(hang_ms >= NODE_GRACE_MS - 100 && hang_ms <= NODE_GRACE_MS + GRACE_CHECK_MS + 2000);
    CHECK(stream_ms >= NODE_GRACE_MS - 100 && stream_ms <= NODE_GRACE_MS + GRACE_CHECK_MS + 2000);

    /* gone for good: calls are refused at once, new sessions are not offered it */
    CHECK_RC(call_now(user, "ncall", to_node(), 5000, &j), MDG_EREMOTE);
    CHECK(strstr(j.text, "is not connected") != NULL);
    printf("a1: a call to the gone node: %s\n", j.text);
    CHECK(fresh_offer(&n) == 0 && n == 0);
    printf("a1: a new session's offer lists %d node(s)\n", n);

    /* a2: the node comes back (same keys): in service, no broker restart */
    int64_t t_start = now_ms();
    start_node();
    need(wait_ready(&node_proc, 15000) == 0, "the restarted node");
    int64_t up_ms = now_ms() - t_start;
    mdg_params *p = to_node();
    mdg_params_set_int(p, "i", 42);
    CHECK_RC(call_now(user, "ncall", p, 5000, &j), 0);
    CHECK(j.pid == node_proc.pid);
    n = -1;
    CHECK(fresh_offer(&n) == 1 && n == 1);
    printf("a2: node restarted (pid %d) and in service after %lld ms: a call answered by pid %lld, "
           "a new session's offer lists it (%d node)\n",
           (int)node_proc.pid, (long long)up_ms, (long long)j.pid, n);

    /* a3: killed and restarted at once: the new session replaces the old
     * one and what waited on the old one fails then, before the grace */
    stream_and_hang(user, &st, &hang);
    t_kill = now_ms();
    kill_hard(&node_proc);
    start_node();
    WAIT_FOR(atomic_load(&hang.done) && atomic_load(&st.failed), NODE_GRACE_MS + GRACE_CHECK_MS + 5000);
    pthread_join(hang.t, NULL);
    need(wait_ready(&node_proc, 15000) == 0, "the restarted node");
    int64_t ready_ms = now_ms() - t_kill;
    hang_ms = hang.ended - t_kill;
    stream_ms = st.failed_at - t_kill;
    printf("a3: node SIGKILLed and restarted at once (ready after %lld ms): pending call failed after %lld ms "
           "(%s), stream failed after %lld ms, both before the %d ms grace\n",
           (long long)ready_ms, (long long)hang_ms, hang.text, (long long)stream_ms, NODE_GRACE_MS);
    CHECK_RC(hang.rc, MDG_EREMOTE);
    CHECK(strstr(hang.text, "went away before answering") != NULL);
    CHECK(atomic_load(&st.failed) && strstr(st.error, "went away before answering") != NULL);
    CHECK(atomic_load(&st.bad) == 0);
    CHECK(hang_ms < NODE_GRACE_MS && stream_ms < NODE_GRACE_MS);
    p = to_node();
    mdg_params_set_int(p, "i", 43);
    CHECK_RC(call_now(user, "ncall", p, 5000, &j), 0);
    CHECK(j.pid == node_proc.pid);

    /* the user's own session was never touched */
    CHECK(find_event(MDG_EV_DISCONNECTED, 0) < 0 && find_event(MDG_EV_LOST, 0) < 0);
}

/* --------------------------------------------------------------- part b */

static void part_b(mdg_conn *user, offers *uo)
{
    t_call slow, hang, quick, j;
    cb_state cb = {0};
    printf("b. broker killed and restarted on port %d with the same keys\n", port);
    t_clear_log();
    size_t len = 0;
    uint8_t session_before[64];
    const uint8_t *sid = mdg_conn_session_id(user, &len);
    memcpy(session_before, sid, len < 64 ? len : 64);
    int offers_before = atomic_load(&uo->count), ev0 = events_now();
    int node_pid = node_proc.pid;

    /* pending across the kill: a blocking call to the broker, a callback
     * call to the broker, a blocking call to the node */
    mdg_params *p = mdg_params_new();
    mdg_params_set_int(p, "ms", 60000);
    t_call_start(&slow, user, "slow", p, 30000);
    p = mdg_params_new();
    mdg_params_set_int(p, "ms", 60000);
    CHECK_RC(mdg_conn_send_cb(user, "slow", p, NULL, 0, on_cb, &cb), 0);
    t_call_start(&hang, user, "hang", to_node(), 30000);
    usleep(300000);
    CHECK(!atomic_load(&slow.done) && !atomic_load(&hang.done));

    int64_t t_kill = now_ms();
    kill_hard(&broker_proc);
    WAIT_FOR(find_event(MDG_EV_DISCONNECTED, ev0) >= 0, 5000);
    int i_disc = find_event(MDG_EV_DISCONNECTED, ev0);
    CHECK(i_disc >= 0);
    int64_t disc_ms = i_disc >= 0 ? event_at(i_disc) - t_kill : -1;

    /* while it is down: a short timeout says the link is down */
    int64_t t0 = now_ms();
    p = mdg_params_new();
    mdg_params_set_int(p, "i", 1);
    CHECK_RC(call_now(user, "echo", p, 1000, &quick), MDG_ETIMEDOUT);
    CHECK(strstr(quick.text, "link to the broker is down") != NULL);
    printf("b: broker SIGKILLed; user saw DISCONNECTED after %lld ms; a 1000 ms call while it is down: "
           "%s after %lld ms (%s)\n",
           (long long)disc_ms, mdg_strerror(quick.rc), (long long)(quick.ended - t0), quick.text);
    CHECK(!atomic_load(&slow.done) && !atomic_load(&hang.done) && !atomic_load(&cb.failed));

    /* back after 1.5 s, same port, same keys */
    while (now_ms() < t_kill + 1500)
        usleep(10000);
    int64_t t_restart = now_ms();
    start_broker();
    need(wait_ready(&broker_proc, 15000) == 0, "the restarted broker");
    int64_t bound_ms = now_ms() - t_restart;
    WAIT_FOR(atomic_load(&slow.done) && atomic_load(&hang.done) && atomic_load(&cb.failed), 15000);
    pthread_join(slow.t, NULL);
    pthread_join(hang.t, NULL);
    int i_lost = find_event(MDG_EV_LOST, ev0);
    int64_t lost_ms = i_lost >= 0 ? event_at(i_lost) - t_restart : -1;
    printf("b: broker restarted (pid %d, bound after %lld ms); user saw LOST %lld ms after the restart\n",
           (int)broker_proc.pid, (long long)bound_ms, (long long)lost_ms);
    printf("b: pending blocking call to the broker: %s after %lld ms (%s)\n", mdg_strerror(slow.rc),
           (long long)(slow.ended - t_kill), slow.text);
    printf("b: pending blocking call to the node: %s (%s)\n", mdg_strerror(hang.rc), hang.text);
    printf("b: pending callback call: error '%s'\n", cb.error);
    CHECK_RC(slow.rc, MDG_ECLOSED);
    CHECK(strstr(slow.text, "not answered") != NULL);
    CHECK_RC(hang.rc, MDG_ECLOSED);
    CHECK(atomic_load(&cb.failed) && strstr(cb.error, "no longer knew our session") != NULL);
    /* DISCONNECTED, then LOST, never RECOVERED: the session was in the
     * broker's memory */
    CHECK(i_disc >= 0 && i_lost > i_disc);
    CHECK(find_event(MDG_EV_RECOVERED, ev0) < 0);
    sid = mdg_conn_session_id(user, &len);
    CHECK(len == 16 && memcmp(sid, session_before, 16) != 0);
    WAIT_FOR(atomic_load(&uo->count) > offers_before, 5000);
    CHECK(atomic_load(&uo->count) > offers_before);

    /* new calls: to the broker (the new one), and to the node once it has
     * reconnected by itself */
    p = mdg_params_new();
    mdg_params_set_int(p, "i", 2);
    CHECK_RC(call_now(user, "echo", p, 5000, &j), 0);
    CHECK(j.pid == broker_proc.pid);
    int64_t node_ms = -1;
    int tries = 0;
    for (int64_t deadline = now_ms() + 20000; now_ms() < deadline; tries++) {
        p = to_node();
        mdg_params_set_int(p, "i", 3);
        if (call_now(user, "ncall", p, 5000, &j) == 0) {
            node_ms = now_ms() - t_restart;
            break;
        }
        usleep(50000);
    }
    printf("b: after the restart: echo answered by broker pid %d; the node (pid %lld, not restarted) "
           "answered %lld ms after the broker restart (%d tries refused before: not reconnected yet)\n",
           (int)broker_proc.pid, (long long)j.pid, (long long)node_ms, tries);
    CHECK(node_ms >= 0 && j.pid == node_pid);
    /* the call that timed out while the broker was down had stayed queued:
     * it went to the new broker, whose late reply found no one waiting */
    WAIT_FOR(t_logged("no one waits for"), 3000);
    CHECK(t_logged("no one waits for"));
}

/* --------------------------------------------------------------- part d */

/* One of user B's calls: it must get exactly its own answer. */
typedef struct own_call {
    int64_t want;
    atomic_int replies, finals, more, foreign;
} own_call;

static void on_own(mdg_msg *r, void *arg)
{
    own_call *o = arg;
    int64_t i = -1, pid = 0;
    const mdg_params *p = mdg_msg_params(r);
    if (mdg_msg_is_error(r) || mdg_params_get_int(p, "i", &i) != 0 || i != o->want ||
        mdg_params_get_int(p, "pid", &pid) != 0)
        atomic_fetch_add(&o->foreign, 1);
    if (mdg_msg_more(r))
        atomic_fetch_add(&o->more, 1);
    else
        atomic_fetch_add(&o->finals, 1);
    atomic_fetch_add(&o->replies, 1);
}

#define B_CALLS 20

static bool all_final(own_call *calls)
{
    for (int k = 0; k < B_CALLS; k++)
        if (!atomic_load(&calls[k].finals))
            return false;
    return true;
}

/* The node's count of streams stopped by MDG_ECLOSED (-1: no answer), and
 * of its replies the broker refused. */
static int64_t node_streams_closed(mdg_conn *c, char *last, size_t len, int64_t *refused)
{
    mdg_msg *r = NULL;
    int64_t n = -1;
    const char *t = "";
    if (mdg_conn_call(c, "streams", to_node(), NULL, 0, 5000, &r) == 0) {
        mdg_params_get_int(mdg_msg_params(r), "closed", &n);
        mdg_params_get_int(mdg_msg_params(r), "refused", refused);
        mdg_params_get_str(mdg_msg_params(r), "last_end", &t);
        snprintf(last, len, "%s", t);
    }
    mdg_msg_destroy(&r);
    return n;
}

static void part_d(mdg_conn *a)
{
    stream_state st;
    t_call j;
    char last[512] = "";
    printf("d. broker killed and restarted under a live stream from a node thread to user A\n");
    int64_t refused_before = -1, refused = -1;
    int64_t closed_before = node_streams_closed(a, last, sizeof last, &refused_before);
    CHECK(closed_before >= 0);
    memset(&st, 0, sizeof st);
    mdg_params *p = to_node();
    mdg_params_set_int(p, "n", 1000000);
    mdg_params_set_int(p, "interval_ms", 2);
    CHECK_RC(mdg_conn_send_cb(a, "stream", p, NULL, 0, on_stream, &st), 0);
    WAIT_FOR(atomic_load(&st.next) >= 50, 5000);
    CHECK(atomic_load(&st.next) >= 50);

    int64_t t_kill = now_ms();
    kill_hard(&broker_proc);
    start_broker();
    need(wait_ready(&broker_proc, 15000) == 0, "the restarted broker");
    WAIT_FOR(atomic_load(&st.failed), 15000);
    CHECK(atomic_load(&st.failed) && strstr(st.error, "no longer knew our session") != NULL);
    CHECK(atomic_load(&st.bad) == 0);

    /* user B: another user, a new connection after the restart; first
     * wait for the node, which reconnects by itself */
    mdg_conn *b = NULL;
    mdg_conn_options opts = {.port = port, .reconnect_min_ms = 50, .reconnect_max_ms = 500};
    need(mdg_conn_new_with_keys(&b, "127.0.0.1", broker_pk_raw, ukeys2, &opts) == 0 && mdg_conn_start(b) == 0,
         "user B's connection");
    need(mdg_conn_wait_until_ready(b, 10000) == 0, "user B's session");
    int64_t node_back = -1;
    for (int64_t deadline = now_ms() + 20000; now_ms() < deadline; usleep(50000)) {
        p = to_node();
        mdg_params_set_int(p, "i", 7);
        if (call_now(b, "ncall", p, 5000, &j) == 0) {
            node_back = now_ms() - t_kill;
            break;
        }
    }
    CHECK(node_back >= 0 && j.pid == node_proc.pid);

    /* B's calls, all open at once and each answered 200 ms later: anything
     * the node still sent for A's call would have time to reach them */
    own_call calls[B_CALLS];
    memset(calls, 0, sizeof calls);
    for (int k = 0; k < B_CALLS; k++) {
        calls[k].want = 1000 + k;
        p = to_node();
        mdg_params_set_int(p, "i", calls[k].want);
        mdg_params_set_int(p, "ms", 200);
        CHECK_RC(mdg_conn_send_cb(b, "later", p, NULL, 0, on_own, &calls[k]), 0);
    }
    WAIT_FOR(all_final(calls), 10000);
    int replies = 0, more = 0, foreign = 0, finals = 0;
    for (int k = 0; k < B_CALLS; k++) {
        replies += atomic_load(&calls[k].replies);
        finals += atomic_load(&calls[k].finals);
        more += atomic_load(&calls[k].more);
        foreign += atomic_load(&calls[k].foreign);
    }
    CHECK(finals == B_CALLS && replies == B_CALLS && more == 0 && foreign == 0);

    /* the node's streaming thread learnt from mdg_msg_reply_more that its
     * caller's session had ended, and stopped */
    int64_t closed = -1;
    for (int64_t deadline = now_ms() + 5000; now_ms() < deadline; usleep(20000))
        if ((closed = node_streams_closed(b, last, sizeof last, &refused)) > closed_before)
            break;
    CHECK(closed == closed_before + 1); /* counts MDG_ECLOSED only */
    CHECK(strstr(last, "the session this call came in on has ended") != NULL);
    /* what it had queued for A while the broker was down never went out on
     * its new session either: the broker refused none of its replies */
    CHECK(refused_before >= 0 && refused == refused_before);
    printf("d: A had %ld stream replies in order when the broker was SIGKILLed and restarted; A's stream: '%s'; "
           "the node was back %lld ms after the kill\n",
           atomic_load(&st.next), st.error, (long long)node_back);
    printf("d: user B's %d calls to the node: %d replies, %d final, %d with MORE, %d not its own\n", B_CALLS, replies,
           finals, more, foreign);
    printf("d: the node's streaming thread stopped: %s; the broker refused %lld of its replies\n", last,
           (long long)(refused - refused_before));
    mdg_conn_destroy(&b);
}

/* --------------------------------------------------------------- part c */

static void part_c(void)
{
    printf("c. SIGTERM to the broker with a user and a node connected\n");
    int ev0 = events_now();
    int64_t t0 = now_ms();
    kill(broker_proc.pid, SIGTERM);
    int status = reap(&broker_proc, 10000);
    int64_t took = now_ms() - t0;
    bool exited = status >= 0 && WIFEXITED(status);
    printf("c: broker exited after %lld ms, %s %d\n", (long long)took, exited ? "status" : "wait status",
           exited ? WEXITSTATUS(status) : status);
    CHECK(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(took < 5000);
    WAIT_FOR(find_event(MDG_EV_DISCONNECTED, ev0) >= 0, 5000);
    CHECK(find_event(MDG_EV_DISCONNECTED, ev0) >= 0);

    /* the node, its broker gone, stops cleanly too */
    t0 = now_ms();
    kill(node_proc.pid, SIGTERM);
    status = reap(&node_proc, 10000);
    took = now_ms() - t0;
    printf("c: node (broker gone) exited on SIGTERM after %lld ms, status %d\n", (long long)took,
           status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    CHECK(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(took < 5000);
}

/* -------------------------------------------------------------------- main */

/* argv[i], or NAME next to this program. */
static void helper_path(char *out, const char *arg, const char *name)
{
    if (arg) {
        snprintf(out, PATH_MAX, "%s", arg);
        return;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(self, '/');
    if (slash)
        slash[1] = '\0';
    snprintf(out, PATH_MAX, "%.*s%s", PATH_MAX - 32, slash ? self : "./", name);
}

int main(int argc, char **argv)
{
    helper_path(broker_path, argc > 1 ? argv[1] : NULL, "proc_broker");
    helper_path(node_path, argc > 2 ? argv[2] : NULL, "proc_node");
    need(access(broker_path, X_OK) == 0 && access(node_path, X_OK) == 0, "the helper programs");
    signal(SIGPIPE, SIG_IGN);
    atexit(cleanup);
    t_capture_log();
    int64_t t_begin = now_ms();

    mdg_keys *bkeys = NULL, *nkeys = NULL;
    need(mdg_keys_new(&bkeys) == 0 && mdg_keys_new(&nkeys) == 0 && mdg_keys_new(&ukeys) == 0 &&
             mdg_keys_new(&ukeys2) == 0,
         "keys");
    mdg_pk_to_b64(mdg_keys_public(bkeys), bpk);
    mdg_pk_to_b64(mdg_keys_secret(bkeys), bsk);
    mdg_pk_to_b64(mdg_keys_public(nkeys), npk);
    mdg_pk_to_b64(mdg_keys_secret(nkeys), nsk);
    mdg_pk_to_b64(mdg_keys_public(ukeys), upk);
    mdg_pk_to_b64(mdg_keys_public(ukeys2), upk2);
    memcpy(broker_pk_raw, mdg_keys_public(bkeys), MDG_KEY_BYTES);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&nkeys);

    port = t_free_port();
    need(port > 0, "no free port");
    start_broker();
    need(wait_ready(&broker_proc, 15000) == 0, "the broker");
    start_node();
    need(wait_ready(&node_proc, 15000) == 0, "the node");
    offers uo = {0};
    mdg_conn *user = new_user(&uo, true);
    need(mdg_conn_wait_until_ready(user, 10000) == 0, "the user's session");
    printf("broker pid %d and node pid %d on port %d; user connected\n", (int)broker_proc.pid,
           (int)node_proc.pid, port);

    part_a(user);
    part_b(user, &uo);
    part_d(user);
    part_c();

    int64_t t_destroy = now_ms();
    mdg_conn_destroy(&user);
    printf("user connection destroyed in %lld ms (broker gone); whole test %lld ms\n",
           (long long)(now_ms() - t_destroy), (long long)(now_ms() - t_begin));
    mdg_keys_destroy(&ukeys);
    mdg_keys_destroy(&ukeys2);
    cleanup();
    return t_done("test_restart");
}
