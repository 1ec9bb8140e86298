/* test_handshake.c - connections that cannot be made, over real sockets:
 * a key the broker does not admit (MDG_EAUTH, fast, and logged at the
 * broker), a client pinning the wrong broker key (MDG_EHANDSHAKE), a peer
 * that does not speak our security mechanism (a Messidge 1.x broker for a
 * native client, a native broker for a legacy one: MDG_EHANDSHAKE saying
 * so), and a broker that is not running (MDG_ETIMEDOUT naming the endpoint
 * and what was seen). In each case the broker keeps serving the clients it
 * does admit. And links that fail during the handshake as a flaky network
 * makes them fail (reset, or closed) are no verdict: the client is ready
 * on the normal reconnect schedule. */
#include "faultproxy.h"
#include "testutil.h"

#include "internal.h"

#include <zmq.h>

static void h_echo(mdg_msg *m, void *arg)
{
    (void)arg;
    int64_t i = 0;
    mdg_params *r = mdg_params_new();
    if (mdg_params_get_int(mdg_msg_params(m), "i", &i) == 0)
        mdg_params_set_int(r, "i", i);
    mdg_msg_reply(m, r, NULL, 0);
}

static const mdg_cmd cmds[] = {
    {"echo", h_echo, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* A started broker that admits only `allowed` (as a user). */
static mdg_broker *strict_broker(mdg_keys **bkeys, const mdg_keys *allowed)
{
    mdg_broker *b = NULL;
    mdg_broker_options o = {.bind_address = "127.0.0.1", .port = 0};
    if (mdg_keys_new(bkeys) || mdg_broker_new(&b, *bkeys, &o) ||
        mdg_broker_set_commands(b, cmds, NULL) ||
        mdg_broker_allow(b, mdg_keys_public(allowed), MDG_ROLE_USER) || mdg_broker_start(b)) {
        fprintf(stderr, "cannot start a broker: %s\n", mdg_last_error());
        exit(2);
    }
    return b;
}

static mdg_conn *client_with(const uint8_t server_pk[MDG_KEY_BYTES], const mdg_keys *keys,
                             const mdg_conn_options *o)
{
    mdg_conn *c = NULL;
    if (mdg_conn_new_with_keys(&c, "127.0.0.1", server_pk, keys, o) || mdg_conn_start(c)) {
        fprintf(stderr, "cannot make a client: %s\n", mdg_last_error());
        exit(2);
    }
    return c;
}

static mdg_conn *client(int port, const uint8_t server_pk[MDG_KEY_BYTES], const mdg_keys *keys)
{
    mdg_conn_options o = {.port = port};
    return client_with(server_pk, keys, &o);
}

/* One echo round trip works. */
static bool echo_ok(mdg_conn *c, int64_t i)
{
    mdg_params *p = mdg_params_new();
    mdg_msg *r = NULL;
    int64_t got = -1;
    mdg_params_set_int(p, "i", i);
    int rc = mdg_conn_call(c, "echo", p, NULL, 0, 5000, &r);
    if (rc == 0)
        mdg_params_get_int(mdg_msg_params(r), "i", &got);
    mdg_msg_destroy(&r);
    return rc == 0 && got == i;
}

static void test_refused_key(void)
{
    mdg_keys *bkeys = NULL, *good = NULL, *stranger = NULL;
    mdg_keys_new(&good);
    mdg_keys_new(&stranger);
    mdg_broker *b = strict_broker(&bkeys, good);
    int port = mdg_broker_port(b);
    char b64[MDG_KEY_B64_LEN + 1];
    mdg_pk_to_b64(mdg_keys_public(stranger), b64);

    /* the admitted key works */
    mdg_conn *ok = client(port, mdg_keys_public(bkeys), good);
    CHECK_RC(mdg_conn_wait_until_ready(ok, 5000), 0);
    CHECK(echo_ok(ok, 1));

    /* the stranger learns that it was refused, quickly, not by a timeout */
    t_clear_log();
    mdg_conn *bad = client(port, mdg_keys_public(bkeys), stranger);
    int64_t t0 = mdg_now_ms();
    CHECK_RC(mdg_conn_wait_until_ready(bad, 10000), MDG_EAUTH);
    int64_t took = mdg_now_ms() - t0;
    CHECK(took < 3000);
    CHECK(strstr(mdg_last_error(), "refused") != NULL);
    printf("  refused key: wait_until_ready -> %s in %lld ms: \"%s\"\n", mdg_strerror(MDG_EAUTH),
           (long long)took, mdg_last_error());
    /* the broker logged the refusal, naming the key as log lines do: its
     * first 12 base64 characters */
    CHECK(t_logged("refused"));
    b64[12] = '\0';
    CHECK(t_logged(b64));
    /* and later calls say the same thing, at once */
    mdg_msg *r = NULL;
    t0 = mdg_now_ms();
    CHECK_RC(mdg_conn_call(bad, "echo", NULL, NULL, 0, 5000, &r), MDG_EAUTH);
    CHECK(mdg_now_ms() - t0 < 1000);
    CHECK_RC(mdg_conn_send(bad, "echo", NULL, NULL, 0), MDG_EAUTH);

    /* a refused client left alive must not hammer the broker: count the
     * handshakes it makes in one second */
    int before = t_log_count("refused connection");
    usleep(1000 * 1000);
    int retries = t_log_count("refused connection") - before;
    printf("  refused key: %d more refused handshakes in the next second\n", retries);
    CHECK(retries <= 2);

    /* nothing else was disturbed */
    CHECK(echo_ok(ok, 2));
    mdg_conn_destroy(&bad);
    CHECK(echo_ok(ok, 3));

    mdg_conn_destroy(&ok);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&good);
    mdg_keys_destroy(&stranger);
}

static void test_wrong_server_key(void)
{
    mdg_keys *bkeys = NULL, *good = NULL, *impostor = NULL;
    mdg_keys_new(&good);
    mdg_keys_new(&impostor); /* the key the client wrongly pins */
    mdg_broker *b = strict_broker(&bkeys, good);
    int port = mdg_broker_port(b);

    mdg_conn *ok = client(port, mdg_keys_public(bkeys), good);
    CHECK_RC(mdg_conn_wait_until_ready(ok, 5000), 0);

    /* an admitted client key, but the wrong broker key pinned */
    t_clear_log();
    mdg_conn *bad = client(port, mdg_keys_public(impostor), good);
    int64_t t0 = mdg_now_ms();
    CHECK_RC(mdg_conn_wait_until_ready(bad, 10000), MDG_EHANDSHAKE);
    int64_t took = mdg_now_ms() - t0;
    CHECK(took < 3000);
    CHECK(strstr(mdg_last_error(), "key is most likely not the one pinned") != NULL);
    CHECK(strstr(mdg_last_error(), "attempts in a row") != NULL);
    char ep[64];
    snprintf(ep, sizeof ep, "127.0.0.1:%d", port);
    CHECK(strstr(mdg_last_error(), ep) != NULL);
    printf("  wrong server key: wait_until_ready -> %s in %lld ms: \"%s\"\n",
           mdg_strerror(MDG_EHANDSHAKE), (long long)took, mdg_last_error());
    mdg_msg *r = NULL;
    CHECK_RC(mdg_conn_call(bad, "echo", NULL, NULL, 0, 5000, &r), MDG_EHANDSHAKE);

    /* the broker keeps serving */
    CHECK(echo_ok(ok, 10));
    mdg_conn_destroy(&bad);
    CHECK(echo_ok(ok, 11));
    mdg_conn *again = client(port, mdg_keys_public(bkeys), good);
    CHECK_RC(mdg_conn_wait_until_ready(again, 5000), 0);
    CHECK(echo_ok(again, 12));

    mdg_conn_destroy(&again);
    mdg_conn_destroy(&ok);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&good);
    mdg_keys_destroy(&impostor);
}

/* Links that fail during the handshake, after the greeting, as a flaky
 * network fails them: reset, or closed in order (what a broker that cannot
 * open our HELLO does, but not on every attempt). No verdict: the client is
 * ready on the normal reconnect schedule, long before the maximum backoff. */
static void test_flaky_handshake(void)
{
    static const struct {
        int n, hard;
        const char *seen;
    } cases[] = {
        {2, 1, "the link failed during the handshake (Connection reset by peer)"},
        {2, 0, "the peer closed the link during the CURVE handshake"},
    };
    mdg_keys *bkeys = NULL, *good = NULL;
    mdg_keys_new(&good);
    mdg_broker *b = strict_broker(&bkeys, good);
    faultproxy *fp = fp_new(mdg_broker_port(b));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int failed0 = fp_failed(fp);
        fp_fail_next(fp, cases[i].n, 64, cases[i].hard);
        t_clear_log();
        /* the maximum backoff alone is >= 5 s (+-50% of 10 s) */
        mdg_conn_options o = {.port = fp_port(fp), .reconnect_max_ms = 10000};
        mdg_conn *c = client_with(mdg_keys_public(bkeys), good, &o);
        int64_t t0 = mdg_now_ms();
        CHECK_RC(mdg_conn_wait_until_ready(c, 8000), 0);
        int64_t took = mdg_now_ms() - t0;
        printf("  %d links failed in the handshake (%s): ready in %lld ms\n", fp_failed(fp) - failed0,
               cases[i].hard ? "reset" : "closed in order", (long long)took);
        CHECK(fp_failed(fp) - failed0 == cases[i].n);
        CHECK(took < 4000);
        CHECK(t_logged(cases[i].seen));
        CHECK(!t_logged("not the one pinned"));
        CHECK(echo_ok(c, (int64_t)i));
        mdg_conn_destroy(&c);
    }
    fp_destroy(&fp);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&good);
}

/* A ZMTP peer that speaks no CURVE, as a Messidge 1.x broker: a ROUTER
 * with the NULL mechanism, on a free port (returned). */
static int null_router(void **ctx, void **sock)
{
    char ep[64];
    size_t len = sizeof ep;
    *ctx = zmq_ctx_new();
    *sock = zmq_socket(*ctx, ZMQ_ROUTER);
    if (!*sock || zmq_bind(*sock, "tcp://127.0.0.1:*") != 0 ||
        zmq_getsockopt(*sock, ZMQ_LAST_ENDPOINT, ep, &len) != 0) {
        fprintf(stderr, "cannot bind a ROUTER: %s\n", zmq_strerror(errno));
        exit(2);
    }
    return atoi(strrchr(ep, ':') + 1);
}

/* The peer speaks another security mechanism: said at once, and not as a
 * wrong key. */
static void test_wrong_mechanism(void)
{
    mdg_keys *bkeys = NULL, *ck = NULL;
    mdg_keys_new(&ck);
    mdg_keys_new(&bkeys);

    /* a native client pointed at a Messidge 1.x broker */
    void *ctx, *router;
    mdg_conn_options o = {.port = null_router(&ctx, &router)};
    mdg_conn *c = client_with(mdg_keys_public(bkeys), ck, &o);
    int64_t t0 = mdg_now_ms();
    CHECK_RC(mdg_conn_wait_until_ready(c, 5000), MDG_EHANDSHAKE);
    CHECK(mdg_now_ms() - t0 < 3000);
    CHECK(strstr(mdg_last_error(), "does not speak CURVE") != NULL);
    CHECK(strstr(mdg_last_error(), "1.x") != NULL);
    CHECK(strstr(mdg_last_error(), "key") == NULL);
    printf("  native client at a 1.x peer: \"%s\"\n", mdg_last_error());
    mdg_conn_destroy(&c);
    zmq_close(router);
    zmq_ctx_term(ctx);

    /* a legacy (1.x) client pointed at a native broker */
    mdg_keys_destroy(&bkeys);
    mdg_broker *b = strict_broker(&bkeys, ck);
    mdg_conn_options lo = {.port = mdg_broker_port(b), .legacy = MDG_LEGACY_USER};
    c = client_with(mdg_keys_public(bkeys), ck, &lo);
    t0 = mdg_now_ms();
    CHECK_RC(mdg_conn_wait_until_ready(c, 5000), MDG_EHANDSHAKE);
    CHECK(mdg_now_ms() - t0 < 3000);
    CHECK(strstr(mdg_last_error(), "not Messidge 1.x") != NULL);
    CHECK(strstr(mdg_last_error(), "without legacy mode") != NULL);
    printf("  legacy client at a native broker: \"%s\"\n", mdg_last_error());
    mdg_conn_destroy(&c);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&ck);
}

static void test_no_broker(void)
{
    /* a port that was just free: bind a broker, note its port, stop it */
    mdg_keys *bkeys = NULL, *ck = NULL;
    mdg_broker *b = t_broker(&bkeys, NULL, NULL, NULL, true);
    int port = mdg_broker_port(b);
    mdg_broker_destroy(&b);
    mdg_keys_new(&ck);

    mdg_conn *c = client(port, mdg_keys_public(bkeys), ck);
    int64_t t0 = mdg_now_ms();
    CHECK_RC(mdg_conn_wait_until_ready(c, 500), MDG_ETIMEDOUT);
    int64_t took = mdg_now_ms() - t0;
    CHECK(took >= 450 && took < 2000);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    CHECK(strstr(mdg_last_error(), ep) != NULL);
    CHECK(strstr(mdg_last_error(), "no broker answered") != NULL); /* what it saw */
    printf("  no broker: wait_until_ready -> %s: \"%s\"\n", mdg_strerror(MDG_ETIMEDOUT),
           mdg_last_error());

    /* a call meanwhile times out too, and says what it waited for */
    mdg_msg *r = NULL;
    CHECK_RC(mdg_conn_call(c, "echo", NULL, NULL, 0, 300, &r), MDG_ETIMEDOUT);
    CHECK(strstr(mdg_last_error(), "echo") != NULL);
    printf("  no broker: mdg_conn_call -> %s: \"%s\"\n", mdg_strerror(MDG_ETIMEDOUT), mdg_last_error());
    CHECK(r == NULL);

    /* destroying a connection that never connected does not hang */
    t0 = mdg_now_ms();
    mdg_conn_destroy(&c);
    CHECK(c == NULL);
    CHECK(mdg_now_ms() - t0 < 3000);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&ck);
}

int main(void)
{
    t_capture_log();
    test_refused_key();
    test_wrong_server_key();
    test_flaky_handshake();
    test_wrong_mechanism();
    test_no_broker();
    return t_done("test_handshake");
}
