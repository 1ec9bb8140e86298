/* test_fleet_cluster.c - a fleet on a NATS cluster of three servers
 * (natsserver.h) with one PostgreSQL identity store (pgserver.h) shared
 * by two brokers in this process, each attached to it with a handle of its
 * own (mdg_identity_attach). Broker A is given the URLs of servers 1 and
 * 3 (a list, as for a cluster), broker B server 2's only; the node is at
 * B, the user at A.
 *   - one NATS server of three killed (SIGKILL) in the middle of a stream
 *     of replies from B to A, the one B is connected to: B moves to another
 *     server of the cluster, and the stream arrives whole: 0 lost, 0
 *     duplicated, in order; calls go on
 *   - a revocation made through the store (a third handle, as
 *     messidge-admin would) ends the user's live sessions on both brokers:
 *     its client at B is told "key revoked" within a few seconds */
#include "messidge_identity.h"
#include "natsserver.h"
#include "pgserver.h"
#include "testutil.h"

#include <nats/nats.h>

#define SERVERS 3
#define PARTS 20000
#define WAIT_MS 10000
#define REVOKE_MS 5000 /* "within a few seconds", on a busy machine */

typedef struct side {
    mdg_keys *keys;
    mdg_identity *id;
    mdg_broker *b;
} side;

static const mdg_cmd node_cmds[] = {
    {"divide", t_divide, MDG_REQUIRE("dividend", "devisor"), MDG_CMD_NEEDS_REPLY},
    {"stream", t_stream, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};


/* A broker on a free port in the fleet through url, its identity the
 * shared store (a handle of its own). */
static void start_broker(side *s, const char *url, const char *uri)
{
    mdg_broker_options o = {.bind_address = "127.0.0.1", .port = 0};
    mdg_fleet_options fo = {.url = url, .name = "cluster-test", .beat_ms = 100, .silence_ms = 10000};
    if (mdg_identity_open(&s->id, uri) || mdg_broker_new(&s->b, s->keys, &o) ||
        mdg_broker_join_fleet(s->b, &fo) || mdg_identity_attach(s->id, s->b)) {
        fprintf(stderr, "cannot make a broker: %s\n", mdg_last_error());
        exit(2);
    }
}

/* A client of broker s with keys k (registered in the store). */
static mdg_conn *connect_to(const side *s, const mdg_keys *k, const mdg_cmd *cmds)
{
    mdg_conn *c = NULL;
    mdg_conn_options o = {.port = mdg_broker_port(s->b), .reflect_errors = true};
    if (mdg_conn_new_with_keys(&c, "127.0.0.1", mdg_keys_public(s->keys), k, &o) ||
        (cmds && mdg_conn_register_commands(c, cmds, NULL)) || mdg_conn_start(c) ||
        mdg_conn_wait_until_ready(c, WAIT_MS)) {
        fprintf(stderr, "a client did not connect: %s\n", mdg_last_error());
        exit(2);
    }
    return c;
}



static void run(const char *uri, t_nats *nats)
{
    side A = {0}, B = {0};
    mdg_identity *admin = NULL;
    mdg_keys *nk = NULL, *uk = NULL, *rk = NULL;
    CHECK_RC(mdg_identity_open_ex(&admin, uri, MDG_IDENTITY_CREATE), 0);
    CHECK_RC(mdg_keys_new(&A.keys), 0);
    CHECK_RC(mdg_keys_new(&B.keys), 0);
    CHECK_RC(mdg_keys_new(&nk), 0);
    CHECK_RC(mdg_keys_new(&uk), 0);
    CHECK_RC(mdg_keys_new(&rk), 0);
    const uint8_t *npk = mdg_keys_public(nk);
    CHECK_RC(mdg_identity_add_node(admin, "divide", npk, NULL), 0);
    CHECK_RC(mdg_identity_add_user(admin, "ann@example.com", mdg_keys_public(uk), NULL), 0);
    CHECK_RC(mdg_identity_add_user(admin, "rex@example.com", mdg_keys_public(rk), NULL), 0);

    char a_urls[160];
    snprintf(a_urls, sizeof a_urls, "%s, %s", nats[0].url, nats[2].url);
    start_broker(&A, a_urls, uri);
    start_broker(&B, nats[1].url, uri);
    CHECK_RC(mdg_broker_fleet_member(A.b, mdg_keys_public(B.keys)), 0);
    CHECK_RC(mdg_broker_fleet_member(B.b, mdg_keys_public(A.keys)), 0);
    CHECK_RC(mdg_broker_start(A.b), 0);
    CHECK_RC(mdg_broker_start(B.b), 0);
    mdg_conn *node = connect_to(&B, nk, node_cmds);
    mdg_conn *ua = connect_to(&A, uk, NULL);

    /* A learns of B's node through the cluster (servers 1 and 2) */
    double q = 0;
    int rc = -1;
    for (int64_t until = now_ms() + WAIT_MS; rc != 0 && now_ms() < until; usleep(50000))
        rc = t_divide_via(ua, npk, 10, 5, WAIT_MS, &q);
    CHECK_RC(rc, 0);
    CHECK(q == 2.0);
    CHECK(!t_logged("is not there yet")); /* A's list of two URLs was taken whole */

    /* server 2, B's, killed in the middle of a stream from B to A */
    t_reader rd = {0};
    mdg_params *p = t_to_node(npk);
    mdg_params_set_int(p, "n", PARTS);
    mdg_params_set_int(p, "pace_us", 150);
    CHECK_RC(mdg_conn_send_cb(ua, "stream", p, NULL, 0, t_on_part, &rd), 0);
    WAIT_FOR(atomic_load(&rd.next) >= 2000, 30000);
    CHECK(atomic_load(&rd.next) >= 2000 && !atomic_load(&rd.done));
    long at_kill = (long)atomic_load(&rd.next);
    int moved = t_log_count("connected to NATS again");
    t_nats_kill(&nats[1]);
    WAIT_FOR(t_log_count("connected to NATS again") > moved, WAIT_MS); /* B, at server 1 or 3 */
    CHECK(t_log_count("connected to NATS again") > moved);
    WAIT_FOR(atomic_load(&rd.done), 60000);
    CHECK(atomic_load(&rd.done) && atomic_load(&rd.next) == PARTS && atomic_load(&rd.bad) == 0 &&
          atomic_load(&rd.errors) == 0);
    printf("NATS server 2 of 3 killed at reply %ld: %ld of %d replies, %ld out of order or doubled\n", at_kill,
           (long)atomic_load(&rd.next), PARTS, (long)atomic_load(&rd.bad));
    CHECK_RC(t_divide_via(ua, npk, 9, 3, WAIT_MS, &q), 0);
    CHECK(q == 3.0);

    /* a revocation through the store ends the user's sessions on both
     * brokers; the client at B is told why */
    mdg_conn *ra = connect_to(&A, rk, NULL), *rb = connect_to(&B, rk, NULL);
    CHECK_RC(t_divide_via(rb, npk, 1, 4, WAIT_MS, &q), 0);
    int before = t_log_count("session closed by the broker: key revoked");
    int64_t t0 = now_ms();
    CHECK_RC(mdg_identity_revoke(admin, mdg_keys_public(rk)), 0);
    WAIT_FOR(t_log_count("session closed by the broker: key revoked") >= before + 2, REVOKE_MS);
    int64_t took = now_ms() - t0;
    CHECK(t_log_count("session closed by the broker: key revoked") >= before + 2);
    printf("revoked through the store: its sessions at A and at B closed (\"key revoked\") in %lld ms\n",
           (long long)took);
    /* and the other user goes on */
    CHECK_RC(t_divide_via(ua, npk, 7, 2, WAIT_MS, &q), 0);
    CHECK(q == 3.5);

    mdg_conn_destroy(&ra);
    mdg_conn_destroy(&rb);
    mdg_conn_disconnect(ua);
    mdg_conn_destroy(&ua);
    mdg_conn_disconnect(node);
    mdg_conn_destroy(&node);
    mdg_broker_destroy(&B.b);
    mdg_broker_destroy(&A.b);
    mdg_identity_destroy(&A.id);
    mdg_identity_destroy(&B.id);
    mdg_identity_destroy(&admin);
    mdg_keys_destroy(&A.keys);
    mdg_keys_destroy(&B.keys);
    mdg_keys_destroy(&nk);
    mdg_keys_destroy(&uk);
    mdg_keys_destroy(&rk);
}

int main(void)
{
    char uri[256];
    t_pg pg;
    t_nats nats[SERVERS] = {{0}};
    t_capture_log();
    for (int i = 0; i < SERVERS; i++) {
        nats[i].port = t_free_port();
        nats[i].cluster_port = t_free_port();
    }
    if (t_pg_start(&pg) != 0 || t_nats_start_cluster(nats, SERVERS) != 0) {
        fprintf(stderr, "test_fleet_cluster: cannot start PostgreSQL or the NATS cluster (see above)\n");
        t_pg_stop(&pg);
        return 1;
    }
    if (t_pg_new_db(&pg, "fleet", uri, sizeof uri) == 0)
        run(uri, nats);
    for (int i = 0; i < SERVERS; i++) {
        t_nats_stop(&nats[i]);
        unlink(nats[i].log);
    }
    t_pg_stop(&pg);
    nats_Close();
    return t_done("test_fleet_cluster");
}
