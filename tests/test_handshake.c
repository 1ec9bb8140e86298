/* test_handshake.c - connections that cannot be made, over real sockets:
 * a key the broker does not admit (MDG_EAUTH, fast, and logged at the
 * broker), a client pinning the wrong broker key (MDG_EHANDSHAKE), and a
 * broker that is not running (MDG_ETIMEDOUT naming the endpoint). In each
 * case the broker keeps serving the clients it does admit. */
#include "testutil.h"

#include "internal.h"

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

static mdg_conn *client(int port, const uint8_t server_pk[MDG_KEY_BYTES], const mdg_keys *keys)
{
    mdg_conn *c = NULL;
    mdg_conn_options o = {.port = port};
    if (mdg_conn_new_with_keys(&c, "127.0.0.1", server_pk, keys, &o) || mdg_conn_start(c)) {
        fprintf(stderr, "cannot make a client: %s\n", mdg_last_error());
        exit(2);
    }
    return c;
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

/* How many log lines contain needle. */
static int log_count(const char *needle)
{
    int n = 0;
    pthread_mutex_lock(&t_log_lock);
    for (const char *s = t_log; (s = strstr(s, needle)) != NULL; s += strlen(needle))
        n++;
    pthread_mutex_unlock(&t_log_lock);
    return n;
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
    /* the broker logged the refusal, naming the key */
    CHECK(t_logged("refused"));
    CHECK(t_logged(b64));
    /* and later calls say the same thing, at once */
    mdg_msg *r = NULL;
    t0 = mdg_now_ms();
    CHECK_RC(mdg_conn_call(bad, "echo", NULL, NULL, 0, 5000, &r), MDG_EAUTH);
    CHECK(mdg_now_ms() - t0 < 1000);
    CHECK_RC(mdg_conn_send(bad, "echo", NULL, NULL, 0), MDG_EAUTH);

    /* a refused client left alive must not hammer the broker: count the
     * handshakes it makes in one second */
    int before = log_count("refused connection");
    usleep(1000 * 1000);
    int retries = log_count("refused connection") - before;
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
    CHECK(strstr(mdg_last_error(), "key") != NULL);
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
    test_no_broker();
    return t_done("test_handshake");
}
