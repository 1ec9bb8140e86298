/* test_broker_client.c - the foundation end to end over real sockets: a
 * broker with a command table, clients making fire-and-forget, callback and
 * blocking calls, errors as values, ordering, hooks, many threads. */
#include "testutil.h"

#include <stdatomic.h>

/* ----------------------------------------------------- the broker's side */

typedef struct notes {
    pthread_mutex_t lock;
    char text[64][64];
    int n;
    atomic_int sessions_new, sessions_closed;
    atomic_int seen_forged; /* a handler saw a forged user param */
} notes;

static void h_write_note(mdg_msg *m, void *arg)
{
    notes *n = arg;
    const char *note;
    const uint8_t *user;
    size_t ulen;
    if (mdg_params_get_str(mdg_msg_params(m), "note", &note) != 0) {
        mdg_msg_fail(m, "note must be a string");
        return;
    }
    if (mdg_params_get_bytes(mdg_msg_params(m), "user", &user, &ulen) != 0 || ulen != 32)
        atomic_fetch_add(&n->seen_forged, 1);
    pthread_mutex_lock(&n->lock);
    if (n->n < 64)
        snprintf(n->text[n->n++], 64, "%s", note);
    pthread_mutex_unlock(&n->lock);
}

static void h_fetch_notes(mdg_msg *m, void *arg)
{
    notes *n = arg;
    cbor_item_t *list = cbor_new_definite_array(64);
    pthread_mutex_lock(&n->lock);
    for (int i = 0; i < n->n; i++)
        cbor_array_push(list, cbor_move(cbor_build_string(n->text[i])));
    pthread_mutex_unlock(&n->lock);
    mdg_params *r = mdg_params_new();
    mdg_params_set_item(r, "notes", list);
    mdg_msg_reply(m, r, NULL, 0);
}

static void h_raise(mdg_msg *m, void *arg)
{
    (void)arg;
    mdg_msg_fail(m, "raise_exception was called");
}

/* Echo params and bulk back, with the broker-stamped identity. */
static void h_echo(mdg_msg *m, void *arg)
{
    (void)arg;
    size_t blen;
    const void *bulk = mdg_msg_bulk(m, &blen);
    mdg_params *r = mdg_params_new();
    const uint8_t *b;
    size_t len;
    int64_t i;
    if (mdg_params_get_bytes(mdg_msg_params(m), "user", &b, &len) == 0)
        mdg_params_set_bytes(r, "user", b, len);
    if (mdg_params_get_bytes(mdg_msg_params(m), "session", &b, &len) == 0)
        mdg_params_set_bytes(r, "session", b, len);
    if (mdg_params_get_int(mdg_msg_params(m), "i", &i) == 0)
        mdg_params_set_int(r, "i", i);
    mdg_msg_reply(m, r, bulk, blen);
}

/* A handler that makes the client wait, to show ordering and timeouts. */
static void h_slow(mdg_msg *m, void *arg)
{
    (void)arg;
    usleep(300 * 1000);
    mdg_msg_reply(m, NULL, NULL, 0);
}

static const mdg_cmd broker_cmds[] = {
    {"write_note", h_write_note, MDG_REQUIRE("note"), 0},
    {"fetch_notes", h_fetch_notes, NULL, MDG_CMD_NEEDS_REPLY},
    {"raise_exception", h_raise, NULL, MDG_CMD_NEEDS_REPLY},
    {"echo", h_echo, NULL, MDG_CMD_NEEDS_REPLY},
    {"slow", h_slow, NULL, MDG_CMD_NEEDS_REPLY},
    {"node_thing", h_echo, NULL, MDG_CMD_NODE_ONLY},
    MDG_CMD_END,
};

static void *on_session_new(mdg_broker *b, const uint8_t pk[32], const uint8_t *id, size_t len,
                            void *arg)
{
    (void)b; (void)pk; (void)id; (void)len;
    notes *n = arg;
    atomic_fetch_add(&n->sessions_new, 1);
    return n;
}

static void on_session_closed(mdg_broker *b, const uint8_t pk[32], void *data, void *arg)
{
    (void)b; (void)pk; (void)data;
    notes *n = arg;
    atomic_fetch_add(&n->sessions_closed, 1);
}

/* ----------------------------------------------------- the client's side */

typedef struct cb_state {
    atomic_int calls;
    atomic_int errors;
    atomic_int next_i; /* replies must come in order */
    atomic_int out_of_order;
    char notes_text[256];
    mdg_conn *conn;
    atomic_int nested_ok;
} cb_state;

static void on_notes(mdg_msg *reply, void *arg)
{
    cb_state *s = arg;
    char *t = mdg_item_to_text(mdg_params_get(mdg_msg_params(reply), "notes"));
    snprintf(s->notes_text, sizeof s->notes_text, "%s", t ? t : "");
    free(t);
    atomic_fetch_add(&s->calls, 1);
}

static void on_ordered(mdg_msg *reply, void *arg)
{
    cb_state *s = arg;
    int64_t i = -1;
    mdg_params_get_int(mdg_msg_params(reply), "i", &i);
    if (i != atomic_load(&s->next_i))
        atomic_fetch_add(&s->out_of_order, 1);
    atomic_store(&s->next_i, (int)i + 1);
    atomic_fetch_add(&s->calls, 1);
}

static void on_error_reply(mdg_msg *reply, void *arg)
{
    cb_state *s = arg;
    if (mdg_msg_is_error(reply) && strstr(mdg_msg_error(reply), "raise_exception was called"))
        atomic_fetch_add(&s->errors, 1);
}

/* A reply callback that itself makes a blocking call (on the loop thread). */
static void on_nested(mdg_msg *reply, void *arg)
{
    (void)reply;
    cb_state *s = arg;
    mdg_msg *r = NULL;
    mdg_params *p = mdg_params_new();
    mdg_params_set_int(p, "i", 4242);
    if (mdg_conn_call(s->conn, "echo", p, NULL, 0, 5000, &r) == 0) {
        int64_t i = 0;
        mdg_params_get_int(mdg_msg_params(r), "i", &i);
        if (i == 4242)
            atomic_fetch_add(&s->nested_ok, 1);
        mdg_msg_destroy(&r);
    }
}

typedef struct thread_arg {
    mdg_conn *c;
    int id, ok;
} thread_arg;

static void *caller_thread(void *arg)
{
    thread_arg *t = arg;
    for (int i = 0; i < 200; i++) {
        mdg_params *p = mdg_params_new();
        mdg_params_set_int(p, "i", t->id * 100000 + i);
        mdg_msg *r = NULL;
        if (mdg_conn_call(t->c, "echo", p, NULL, 0, 10000, &r) == 0) {
            int64_t got = -1;
            mdg_params_get_int(mdg_msg_params(r), "i", &got);
            if (got == t->id * 100000 + i)
                t->ok++;
            mdg_msg_destroy(&r);
        }
    }
    return NULL;
}

int main(void)
{
    t_capture_log();
    notes n = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mdg_broker_hooks hooks = {.session_new = on_session_new, .session_closed = on_session_closed};
    mdg_keys *bkeys = NULL, *ckeys = NULL;
    mdg_broker *b = t_broker(&bkeys, broker_cmds, &n, &hooks, true);
    CHECK(mdg_broker_port(b) > 0);

    mdg_conn *c = t_client(b, bkeys, &ckeys, NULL, NULL);
    CHECK_RC(mdg_conn_send(c, "write_note", NULL, NULL, 0), MDG_ESTATE); /* not started */
    CHECK_RC(mdg_conn_start(c), 0);
    CHECK_RC(mdg_conn_wait_until_ready(c, 5000), 0);
    CHECK(atomic_load(&n.sessions_new) == 1);

    /* async write, then a blocking fetch sees it (in order) */
    mdg_params *p = mdg_params_new();
    mdg_params_set_str(p, "note", "first note");
    CHECK_RC(mdg_conn_send(c, "write_note", p, NULL, 0), 0);
    p = mdg_params_new();
    mdg_params_set_str(p, "note", "second note");
    CHECK_RC(mdg_conn_send(c, "write_note", p, NULL, 0), 0);
    mdg_msg *r = NULL;
    CHECK_RC(mdg_conn_call(c, "fetch_notes", NULL, NULL, 0, 5000, &r), 0);
    char *t = r ? mdg_item_to_text(mdg_params_get(mdg_msg_params(r), "notes")) : NULL;
    CHECK(t && strcmp(t, "[\"first note\", \"second note\"]") == 0);
    free(t);
    mdg_msg_destroy(&r);
    CHECK(atomic_load(&n.seen_forged) == 0);

    /* callback */
    cb_state s = {.conn = c};
    CHECK_RC(mdg_conn_send_cb(c, "fetch_notes", NULL, NULL, 0, on_notes, &s), 0);
    WAIT_FOR(atomic_load(&s.calls) == 1, 5000);
    CHECK(atomic_load(&s.calls) == 1);
    CHECK(strstr(s.notes_text, "second note") != NULL);

    /* errors as values: blocking call and callback */
    CHECK_RC(mdg_conn_call(c, "raise_exception", NULL, NULL, 0, 5000, &r), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "raise_exception was called") != NULL);
    CHECK(r == NULL);
    CHECK_RC(mdg_conn_send_cb(c, "raise_exception", NULL, NULL, 0, on_error_reply, &s), 0);
    WAIT_FOR(atomic_load(&s.errors) == 1, 5000);
    CHECK(atomic_load(&s.errors) == 1);

    /* identity: the broker stamps user and session, overwriting forgeries */
    p = mdg_params_new();
    uint8_t fake[32] = {1, 2, 3};
    mdg_params_set_bytes(p, "user", fake, 32);
    mdg_params_set_str(p, "session", "forged");
    CHECK_RC(mdg_conn_call(c, "echo", p, NULL, 0, 5000, &r), 0);
    const uint8_t *u = NULL, *sid = NULL;
    size_t ulen = 0, slen = 0;
    CHECK_RC(mdg_params_get_bytes(mdg_msg_params(r), "user", &u, &ulen), 0);
    CHECK(ulen == 32 && memcmp(u, mdg_keys_public(ckeys), 32) == 0);
    CHECK_RC(mdg_params_get_bytes(mdg_msg_params(r), "session", &sid, &slen), 0);
    CHECK(slen == 16);
    mdg_msg_destroy(&r);

    /* bulk round trip, 1 MiB, byte for byte */
    size_t big = 1 << 20;
    uint8_t *blob = malloc(big);
    for (size_t i = 0; i < big; i++)
        blob[i] = (uint8_t)(i * 7 + 3);
    CHECK_RC(mdg_conn_call(c, "echo", NULL, blob, big, 10000, &r), 0);
    size_t rlen = 0;
    const void *rb = mdg_msg_bulk(r, &rlen);
    CHECK(rlen == big && rb && memcmp(rb, blob, big) == 0);
    mdg_msg_destroy(&r);
    free(blob);

    /* replies come in the order the commands were sent */
    atomic_store(&s.calls, 0);
    for (int i = 0; i < 2000; i++) {
        p = mdg_params_new();
        mdg_params_set_int(p, "i", i);
        CHECK_RC(mdg_conn_send_cb(c, "echo", p, NULL, 0, on_ordered, &s), 0);
    }
    WAIT_FOR(atomic_load(&s.calls) == 2000, 20000);
    CHECK(atomic_load(&s.calls) == 2000);
    CHECK(atomic_load(&s.out_of_order) == 0);

    /* a callback that makes a blocking call itself */
    CHECK_RC(mdg_conn_send_cb(c, "fetch_notes", NULL, NULL, 0, on_nested, &s), 0);
    WAIT_FOR(atomic_load(&s.nested_ok) == 1, 5000);
    CHECK(atomic_load(&s.nested_ok) == 1);

    /* timeouts: a slow handler and a short wait */
    CHECK_RC(mdg_conn_call(c, "slow", NULL, NULL, 0, 50, &r), MDG_ETIMEDOUT);
    CHECK_RC(mdg_conn_call(c, "echo", NULL, NULL, 0, 5000, &r), 0); /* still usable */
    mdg_msg_destroy(&r);

    /* many threads blocking at once on one connection */
    pthread_t th[4];
    thread_arg ta[4];
    for (int i = 0; i < 4; i++) {
        ta[i] = (thread_arg){.c = c, .id = i + 1};
        pthread_create(&th[i], NULL, caller_thread, &ta[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(ta[i].ok == 200);
    }

    /* a second client has its own session; its notes go to the same model */
    mdg_conn *c2 = t_client(b, bkeys, NULL, NULL, NULL);
    CHECK_RC(mdg_conn_start(c2), 0);
    CHECK_RC(mdg_conn_wait_until_ready(c2, 5000), 0);
    CHECK(atomic_load(&n.sessions_new) == 2);
    CHECK_RC(mdg_conn_call(c2, "echo", NULL, NULL, 0, 5000, &r), 0);
    mdg_params_get_bytes(mdg_msg_params(r), "session", &sid, &slen);
    mdg_msg_destroy(&r);

    /* disconnect fires the session-closed hook; the connection is done */
    mdg_conn_disconnect(c2);
    CHECK_RC(mdg_conn_wait_until_complete(c2, 5000), 0);
    CHECK_RC(mdg_conn_send(c2, "write_note", NULL, NULL, 0), MDG_ECLOSED);
    mdg_conn_destroy(&c2);
    CHECK(c2 == NULL);
    WAIT_FOR(atomic_load(&n.sessions_closed) == 1, 5000);
    CHECK(atomic_load(&n.sessions_closed) == 1);
    /* its goodbye carried its ack: the reply it had is not "undelivered" */
    CHECK(!t_logged("not delivered"));

    /* a blocking call pending when the connection is destroyed fails, no hang */
    mdg_conn_destroy(&c);
    mdg_broker_destroy(&b);
    CHECK(b == NULL);
    CHECK(atomic_load(&n.sessions_closed) == 2);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&ckeys);
    return t_done("test_broker_client");
}
