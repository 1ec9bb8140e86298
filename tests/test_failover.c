/* test_failover.c - clients given several brokers of a fleet move to
 * another when theirs dies (docs/guarantees.md, "What survives what").
 * Broker A runs in a process of its own (proc_broker --fleet) and is
 * killed with SIGKILL; broker B runs in this process; both on a nats-server
 * of the test's own.
 *   - a user given [A, B], its call to a node of B pending when A dies:
 *     the call fails with MDG_ECLOSED naming both brokers, the user gets
 *     MDG_EV_LOST then MDG_EV_CONNECTED, and its calls to the node of B
 *     work again within seconds
 *   - a node given [A, B] whose broker A dies re-registers on B: a user of
 *     B calls it again, and a new user of B is offered it
 *   - a user given [A, B] while A is dead gets its first session at B, and
 *     one given B under a wrong broker key first, then the right one
 * Every wait has a deadline; nothing sleeps a fixed time. */
#include "natsserver.h"
#include "spawn.h"
#include "testutil.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <sys/prctl.h>
#include <time.h>

#define FAILOVER_MS 1000



/* ---------------------------------------------------------- broker A */

static child broker_a = {.name = "broker A", .out = -1};

static void kill_broker_a(void)
{
    kill_hard(&broker_a);
}

/* proc_broker with args, its key pair in the environment; returns once it
 * printed its ready line (within 10 s), or exits the test. */
static void start_broker_a(const char *path, char *const args[], const mdg_keys *keys)
{
    static char pk[16 + MDG_KEY_B64_LEN + 1], sk[16 + MDG_KEY_B64_LEN + 1];
    char b64[MDG_KEY_B64_LEN + 1];
    mdg_pk_to_b64(mdg_keys_public(keys), b64);
    snprintf(pk, sizeof pk, "MDG_BROKER_PK=%s", b64);
    mdg_pk_to_b64(mdg_keys_secret(keys), b64);
    snprintf(sk, sizeof sk, "MDG_BROKER_SK=%s", b64);
    char *const env[] = {pk, sk, NULL};
    spawn(&broker_a, path, args, env);
    atexit(kill_broker_a);
    if (wait_ready(&broker_a, 10000) != 0)
        exit(2);
}

/* ---------------------------------------------------------- the nodes */

static atomic_int held;     /* a "hold" call reached the node */
static mdg_msg *held_msg;   /* kept, answered at the end */

static void h_hold(mdg_msg *m, void *arg)
{
    (void)arg;
    held_msg = mdg_msg_keep(m);
    atomic_store(&held, 1);
}

static const mdg_cmd node_cmds[] = {
    {"divide", t_divide, MDG_REQUIRE("dividend", "devisor"), MDG_CMD_NEEDS_REPLY},
    {"hold", h_hold, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* ------------------------------------------------ events and offers */

typedef struct seen {
    pthread_mutex_t lock;
    int connected, lost;
    bool moved; /* MDG_EV_CONNECTED after MDG_EV_LOST */
    char lost_detail[800];
    /* offers */
    const uint8_t *node;
    bool offered_node;
    int offered_times; /* in the last offer */
} seen;

static void on_event(mdg_conn *c, int ev, const char *detail, void *arg)
{
    (void)c;
    seen *s = arg;
    pthread_mutex_lock(&s->lock);
    if (ev == MDG_EV_LOST) {
        s->lost++;
        snprintf(s->lost_detail, sizeof s->lost_detail, "%s", detail ? detail : "");
    } else if (ev == MDG_EV_CONNECTED) {
        s->connected++;
        s->moved = s->lost > 0;
    }
    pthread_mutex_unlock(&s->lock);
}

static void h_offer(mdg_msg *m, void *arg)
{
    seen *s = arg;
    cbor_item_t *list = mdg_params_get(mdg_msg_params(m), "nodes");
    int times = 0;
    for (size_t i = 0; s->node && list && cbor_isa_array(list) && i < cbor_array_size(list); i++) {
        cbor_item_t *b = cbor_array_handle(list)[i];
        times += cbor_isa_bytestring(b) && cbor_bytestring_length(b) == MDG_KEY_BYTES &&
                 memcmp(cbor_bytestring_handle(b), s->node, MDG_KEY_BYTES) == 0;
    }
    pthread_mutex_lock(&s->lock);
    s->offered_times = times;
    s->offered_node = s->offered_node || times > 0;
    pthread_mutex_unlock(&s->lock);
}

static const mdg_cmd user_cmds[] = {
    {"resource_offer", h_offer, NULL, 0},
    MDG_CMD_END,
};

static bool seen_flag(seen *s, const bool *flag)
{
    pthread_mutex_lock(&s->lock);
    bool v = *flag;
    pthread_mutex_unlock(&s->lock);
    return v;
}

/* A client with keys k (NULL: keys of its own) of broker at port `first` (key fpk), then of the
 * broker at port `second` (key spk) when second > 0; started. */
static mdg_conn *client(const mdg_keys *k, int first, const uint8_t *fpk, int second, const uint8_t *spk,
                        const mdg_cmd *cmds, seen *s)
{
    mdg_conn *c = NULL;
    mdg_keys *own = NULL;
    mdg_conn_options o = {.port = first, .reconnect_min_ms = 50, .reconnect_max_ms = 500,
                          .failover_ms = FAILOVER_MS, .reflect_errors = true};
    if ((!k && mdg_keys_new(&own)) || mdg_conn_new_with_keys(&c, "127.0.0.1", fpk, k ? k : own, &o) ||
        (second && mdg_conn_add_broker(c, "127.0.0.1", second, spk)) ||
        (cmds && mdg_conn_register_commands(c, cmds, s)) ||
        (s && mdg_conn_set_event_handler(c, on_event, s)) || mdg_conn_start(c)) {
        fprintf(stderr, "cannot make a client: %s\n", mdg_last_error());
        exit(2);
    }
    mdg_keys_destroy(&own); /* the connection has a copy */
    return c;
}


/* 10/5 by node pk through u answers 2.0 (within timeout_ms). */
static bool divides(mdg_conn *u, const uint8_t *pk, int timeout_ms)
{
    mdg_params *p = t_to_node(pk);
    mdg_msg *r = NULL;
    double q = -1;
    mdg_params_set_double(p, "dividend", 10);
    mdg_params_set_double(p, "devisor", 5);
    if (mdg_conn_call(u, "divide", p, NULL, 0, timeout_ms, &r) == 0)
        mdg_params_get_double(mdg_msg_params(r), "quotient", &q);
    mdg_msg_destroy(&r);
    return q == 2.0;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_failover PROC_BROKER\n");
        return 2;
    }
    t_capture_log();
    if (sodium_init() < 0)
        return 2;
    t_nats nats = {0};
    if (t_nats_start(&nats, t_free_port()) != 0)
        return 2;
    mdg_keys *akeys = NULL, *bkeys = NULL, *n1keys = NULL, *n2keys = NULL;
    mdg_keys_new(&akeys);
    mdg_keys_new(&bkeys);
    mdg_keys_new(&n1keys);
    mdg_keys_new(&n2keys);
    const uint8_t *apk = mdg_keys_public(akeys), *bpk = mdg_keys_public(bkeys);
    const uint8_t *n1 = mdg_keys_public(n1keys), *n2 = mdg_keys_public(n2keys);

    /* broker B, in this process: nodes n1 and n2, any user */
    mdg_broker *B = NULL;
    mdg_broker_options bo = {.bind_address = "127.0.0.1"};
    mdg_fleet_options fo = {.url = nats.url, .name = "test-fleet", .beat_ms = 100, .silence_ms = 5000};
    if (mdg_broker_new(&B, bkeys, &bo) || mdg_broker_join_fleet(B, &fo) || mdg_broker_fleet_member(B, apk) ||
        mdg_broker_allow_any(B) || mdg_broker_allow(B, n1, MDG_ROLE_NODE) ||
        mdg_broker_allow(B, n2, MDG_ROLE_NODE) || mdg_broker_start(B)) {
        fprintf(stderr, "cannot start broker B: %s\n", mdg_last_error());
        return 2;
    }
    int port_b = mdg_broker_port(B), port_a = t_free_port();

    /* broker A, a process: node n2, any user */
    char porta[16], n2b64[MDG_KEY_B64_LEN + 1], bb64[MDG_KEY_B64_LEN + 1];
    snprintf(porta, sizeof porta, "%d", port_a);
    mdg_pk_to_b64(n2, n2b64);
    mdg_pk_to_b64(bpk, bb64);
    char *args[] = {"proc_broker", "--port", porta, "--allow-any", "--allow-node", n2b64,
                    "--fleet", nats.url, "--fleet-member", bb64, NULL};
    start_broker_a(argv[1], args, akeys);

    /* n1 on B alone; n2 on A, then B; user u on A, then B; user ub on B */
    seen n2s = {.lock = PTHREAD_MUTEX_INITIALIZER}, us = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mdg_conn *node1 = client(n1keys, port_b, bpk, 0, NULL, node_cmds, NULL);
    mdg_conn *node2 = client(n2keys, port_a, apk, port_b, bpk, node_cmds, &n2s);
    mdg_conn *u = client(NULL, port_a, apk, port_b, bpk, NULL, &us);
    mdg_conn *ub = client(NULL, port_b, bpk, 0, NULL, NULL, NULL);
    CHECK_RC(mdg_conn_wait_until_ready(node1, 10000), 0);
    CHECK_RC(mdg_conn_wait_until_ready(node2, 10000), 0);
    CHECK_RC(mdg_conn_wait_until_ready(u, 10000), 0);
    CHECK_RC(mdg_conn_wait_until_ready(ub, 10000), 0);

    /* across the fleet both ways, once the directories have the nodes */
    WAIT_UNTIL(divides(u, n1, 2000), 15000);
    CHECK(divides(u, n1, 5000));
    WAIT_UNTIL(divides(ub, n2, 2000), 15000);
    CHECK(divides(ub, n2, 5000));

    /* a call from u (at A) to n1 (at B) pending at the node when A dies */
    t_call h;
    t_call_start(&h, u, "hold", t_to_node(n1), 60000);
    WAIT_UNTIL(atomic_load(&held), 10000);
    CHECK(atomic_load(&held));
    int64_t killed_at = now_ms();
    kill_broker_a();

    pthread_join(h.t, NULL);
    CHECK_RC(h.rc, MDG_ECLOSED);
    CHECK(strstr(h.text, "went away") && strstr(h.text, "session lost"));
    CHECK(strstr(h.text, porta) != NULL);
    WAIT_UNTIL(seen_flag(&us, &us.moved), 10000);
    CHECK(seen_flag(&us, &us.moved));
    pthread_mutex_lock(&us.lock);
    CHECK(us.lost == 1 && us.connected == 2);
    CHECK(strstr(us.lost_detail, "now connected to") != NULL);
    pthread_mutex_unlock(&us.lock);

    /* u's calls to n1 work again, now through B */
    WAIT_UNTIL(divides(u, n1, 1000), 10000);
    CHECK(divides(u, n1, 5000));
    printf("user moved and called again %lld ms after the kill\n", (long long)(now_ms() - killed_at));

    /* n2 moved to B: ub calls it again, a new user of B is offered it */
    WAIT_UNTIL(seen_flag(&n2s, &n2s.moved), 10000);
    CHECK(seen_flag(&n2s, &n2s.moved));
    WAIT_UNTIL(divides(ub, n2, 1000), 10000);
    CHECK(divides(ub, n2, 5000));
    seen offer = {.lock = PTHREAD_MUTEX_INITIALIZER, .node = n2};
    mdg_conn *fresh = client(NULL, port_b, bpk, 0, NULL, user_cmds, &offer);
    WAIT_UNTIL(seen_flag(&offer, &offer.offered_node), 10000);
    CHECK(seen_flag(&offer, &offer.offered_node));
    /* once: as B's own now, not also as the dead A's, which B hears of
     * only after its silence */
    pthread_mutex_lock(&offer.lock);
    CHECK(offer.offered_times == 1);
    if (offer.offered_times != 1)
        fprintf(stderr, "the moved node is offered %d times\n", offer.offered_times);
    pthread_mutex_unlock(&offer.lock);

    /* a user given [A, B] while A is dead: its first session at B */
    mdg_conn *late = client(NULL, port_a, apk, port_b, bpk, NULL, NULL);
    CHECK_RC(mdg_conn_wait_until_ready(late, 15000), 0);
    CHECK(divides(late, n1, 5000));

    /* a user given B under a wrong key first, then rightly: at B all the same */
    uint8_t wrong[MDG_KEY_BYTES];
    randombytes_buf(wrong, sizeof wrong);
    mdg_conn *astray = client(NULL, port_b, wrong, port_b, bpk, NULL, NULL);
    CHECK_RC(mdg_conn_wait_until_ready(astray, 15000), 0);
    CHECK(divides(astray, n1, 5000));
    mdg_conn_destroy(&astray);

    /* the API's refusals */
    mdg_conn *c = NULL;
    mdg_conn_options lo = {.port = port_b, .legacy = MDG_LEGACY_USER};
    CHECK_RC(mdg_conn_new_with_keys(&c, "127.0.0.1", bpk, n1keys, &lo), 0);
    CHECK_RC(mdg_conn_add_broker(c, "127.0.0.1", port_a, apk), MDG_EINVAL);
    mdg_conn_destroy(&c);
    CHECK_RC(mdg_conn_add_broker(late, "127.0.0.1", port_a, apk), MDG_ESTATE);

    if (held_msg) {
        mdg_msg_reply(held_msg, NULL, NULL, 0);
        mdg_msg_destroy(&held_msg);
    }
    mdg_conn *all[] = {late, fresh, ub, u, node2, node1};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        mdg_conn_disconnect(all[i]);
        mdg_conn_destroy(&all[i]);
    }
    mdg_broker_destroy(&B);
    t_nats_stop(&nats);
    mdg_keys *keys[] = {akeys, bkeys, n1keys, n2keys};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        mdg_keys_destroy(&keys[i]);
    return t_done("test_failover");
}
