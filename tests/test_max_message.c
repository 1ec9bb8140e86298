/* test_max_message.c - a broker's max_message, over real sockets.
 *
 * libzmq drops the link of a peer that sends a frame over the broker's
 * max_message (ZMQ_MAXMSGSIZE), and a client sends what the broker has not
 * acknowledged again on its next link: one message too large used to cut
 * the session off for good, every call after it timing out. The broker
 * says its max_message in its welcome, and the client keeps to it:
 *
 *  a. a call whose bulk or params are too large fails at once, in words
 *     (MDG_EINVAL), and the next calls are answered;
 *  b. many small calls at once go in head frames no larger than the limit
 *     (a batch of them would be over it), and all are answered;
 *  c. a node's reply too large: the handler gets MDG_EINVAL, the caller
 *     the reason as its call's error, and the node's next reply goes;
 *  d. a bulk of exactly max_message goes;
 *  e. calls made before the welcome (the limit not known yet): one too
 *     large fails with the reason when the welcome comes, before it has a
 *     number, and the others go. */
#include "testutil.h"

#include "testsys.h"

#include <stdatomic.h>

#define MAX_MESSAGE (16 << 10)
#define SMALL_CALLS 300

static void echo(mdg_msg *m, void *arg)
{
    (void)arg;
    size_t len = 0;
    const void *bulk = mdg_msg_bulk(m, &len);
    mdg_msg_reply(m, mdg_params_new(), bulk, len);
}

static atomic_int reply_rc = 1;

/* Answers with a bulk of the size asked for ("n"). */
static void sized(mdg_msg *m, void *arg)
{
    (void)arg;
    static uint8_t buf[2 * MAX_MESSAGE];
    int64_t n = 0;
    mdg_params_get_int(mdg_msg_params(m), "n", &n);
    atomic_store(&reply_rc, mdg_msg_reply(m, mdg_params_new(), buf, (size_t)n));
}

static const mdg_cmd broker_cmds[] = {{"echo", echo, NULL, 0}, MDG_CMD_END};
static const mdg_cmd node_cmds[] = {{"sized", sized, NULL, 0}, MDG_CMD_END};

static atomic_int answered, failed;

static void on_reply(mdg_msg *r, void *arg)
{
    (void)arg;
    atomic_fetch_add(mdg_msg_is_error(r) ? &failed : &answered, 1);
}

static int call_sized(mdg_conn *u, const uint8_t *npk, int64_t n, char *why, size_t len)
{
    mdg_params *p = t_to_node(npk);
    mdg_params_set_int(p, "n", n);
    mdg_msg *r = NULL;
    int rc = mdg_conn_call(u, "sized", p, NULL, 0, 10000, &r);
    snprintf(why, len, "%s", rc ? mdg_last_error() : "");
    mdg_msg_destroy(&r);
    return rc;
}

int main(void)
{
    t_capture_log();
    mdg_keys *bkeys = NULL, *nkeys = NULL, *ukeys = NULL;
    mdg_keys_new(&bkeys);
    mdg_keys_new(&nkeys);
    mdg_keys_new(&ukeys);
    mdg_broker *b = NULL;
    mdg_broker_options bo = {.bind_address = "127.0.0.1", .max_message = MAX_MESSAGE};
    CHECK_RC(mdg_broker_new(&b, bkeys, &bo), 0);
    mdg_broker_set_commands(b, broker_cmds, NULL);
    mdg_broker_allow(b, mdg_keys_public(nkeys), MDG_ROLE_NODE);
    mdg_broker_allow(b, mdg_keys_public(ukeys), MDG_ROLE_USER);
    CHECK_RC(mdg_broker_start(b), 0);

    mdg_conn_options o = {.port = mdg_broker_port(b)};
    mdg_conn *node = NULL, *u = NULL;
    CHECK_RC(mdg_conn_new_with_keys(&node, "127.0.0.1", mdg_keys_public(bkeys), nkeys, &o), 0);
    mdg_conn_register_commands(node, node_cmds, NULL);
    CHECK_RC(mdg_conn_start(node), 0);
    CHECK_RC(mdg_conn_new_with_keys(&u, "127.0.0.1", mdg_keys_public(bkeys), ukeys, &o), 0);
    CHECK_RC(mdg_conn_start(u), 0);
    CHECK_RC(mdg_conn_wait_until_ready(node, 5000), 0);
    CHECK_RC(mdg_conn_wait_until_ready(u, 5000), 0);
    const uint8_t *npk = mdg_keys_public(nkeys);

    /* a. too large, in bulk or in params: refused where it is made */
    static uint8_t big[2 * MAX_MESSAGE];
    mdg_msg *r = NULL;
    int64_t t0 = now_ms();
    int rc = mdg_conn_call(u, "echo", mdg_params_new(), big, MAX_MESSAGE + 1, 10000, &r);
    printf("a bulk of %d bytes to a broker taking %d: %s (after %lld ms)\n", MAX_MESSAGE + 1, MAX_MESSAGE,
           rc ? mdg_last_error() : "answered", (long long)(now_ms() - t0));
    CHECK_RC(rc, MDG_EINVAL);
    CHECK(strstr(mdg_last_error(), "max_message 16384") != NULL);
    CHECK(now_ms() - t0 < 1000);
    mdg_params *p = mdg_params_new();
    char text[MAX_MESSAGE + 1];
    memset(text, 'x', MAX_MESSAGE);
    text[MAX_MESSAGE] = '\0';
    mdg_params_set_str(p, "text", text);
    CHECK_RC(mdg_conn_call(u, "echo", p, NULL, 0, 10000, &r), MDG_EINVAL);
    CHECK(strstr(mdg_last_error(), "larger than the broker takes") != NULL);
    CHECK_RC(mdg_conn_send(u, "echo", mdg_params_new(), big, 2 * MAX_MESSAGE), MDG_EINVAL);
    /* the session goes on */
    CHECK_RC(mdg_conn_call(u, "echo", mdg_params_new(), "x", 1, 10000, &r), 0);
    mdg_msg_destroy(&r);

    /* b. small calls at once: together more than the limit */
    char kb[1024];
    memset(kb, 'k', sizeof kb - 1);
    kb[sizeof kb - 1] = '\0';
    for (int i = 0; i < SMALL_CALLS; i++) {
        p = mdg_params_new();
        mdg_params_set_str(p, "kb", kb);
        CHECK_RC(mdg_conn_send_cb(u, "echo", p, NULL, 0, on_reply, NULL), 0);
    }
    WAIT_UNTIL(atomic_load(&answered) + atomic_load(&failed) == SMALL_CALLS, 20000);
    printf("%d calls of 1 KiB at once: %d answered, %d failed\n", SMALL_CALLS, atomic_load(&answered),
           atomic_load(&failed));
    CHECK(atomic_load(&answered) == SMALL_CALLS);

    /* c. a node's reply too large: the caller hears why */
    char why[512];
    t_clear_log();
    rc = call_sized(u, npk, MAX_MESSAGE + 1, why, sizeof why);
    printf("a node's reply of %d bytes: %s\n", MAX_MESSAGE + 1, why);
    CHECK_RC(rc, MDG_EREMOTE);
    CHECK(strstr(why, "larger than the broker takes") != NULL);
    CHECK_RC(atomic_load(&reply_rc), MDG_EINVAL);
    CHECK(t_logged("not sent"));
    CHECK_RC(call_sized(u, npk, 100, why, sizeof why), 0);
    CHECK_RC(atomic_load(&reply_rc), 0);

    /* d. exactly the limit */
    CHECK_RC(mdg_conn_call(u, "echo", mdg_params_new(), big, MAX_MESSAGE, 10000, &r), 0);
    size_t len = 0;
    mdg_msg_bulk(r, &len);
    CHECK(len == MAX_MESSAGE);
    mdg_msg_destroy(&r);
    CHECK_RC(call_sized(u, npk, MAX_MESSAGE, why, sizeof why), 0);

    /* e. before the welcome: queued, then checked. The broker starts only
     * once the calls are queued, so none of them can see its welcome. */
    mdg_conn *early = NULL;
    mdg_keys *ekeys = NULL;
    mdg_broker *late = NULL;
    mdg_keys_new(&ekeys);
    mdg_broker_options lo = {.bind_address = "127.0.0.1", .port = t_free_port(), .max_message = MAX_MESSAGE};
    CHECK_RC(mdg_broker_new(&late, bkeys, &lo), 0);
    mdg_broker_set_commands(late, broker_cmds, NULL);
    mdg_broker_allow(late, mdg_keys_public(ekeys), MDG_ROLE_USER);
    mdg_conn_options eo = {.port = lo.port};
    CHECK_RC(mdg_conn_new_with_keys(&early, "127.0.0.1", mdg_keys_public(bkeys), ekeys, &eo), 0);
    CHECK_RC(mdg_conn_start(early), 0);
    atomic_store(&answered, 0);
    atomic_store(&failed, 0);
    CHECK_RC(mdg_conn_send_cb(early, "echo", mdg_params_new(), "a", 1, on_reply, NULL), 0);
    CHECK_RC(mdg_conn_send_cb(early, "echo", mdg_params_new(), big, 2 * MAX_MESSAGE, on_reply, NULL), 0);
    CHECK_RC(mdg_conn_send_cb(early, "echo", mdg_params_new(), "b", 1, on_reply, NULL), 0);
    CHECK_RC(mdg_broker_start(late), 0);
    WAIT_UNTIL(atomic_load(&answered) + atomic_load(&failed) == 3, 10000);
    printf("3 calls made before the welcome, the second too large: %d answered, %d failed\n",
           atomic_load(&answered), atomic_load(&failed));
    CHECK(atomic_load(&answered) == 2 && atomic_load(&failed) == 1);
    CHECK(t_logged("not sent"));
    CHECK_RC(mdg_conn_call(early, "echo", mdg_params_new(), "c", 1, 10000, &r), 0);
    mdg_msg_destroy(&r);
    mdg_conn_destroy(&early);
    mdg_broker_destroy(&late);
    mdg_keys_destroy(&ekeys);

    mdg_conn_destroy(&u);
    mdg_conn_destroy(&node);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&nkeys);
    mdg_keys_destroy(&ukeys);
    return t_done("test_max_message");
}
