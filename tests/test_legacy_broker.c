/* test_legacy_broker.c - the broker's Messidge 1.x listener, end to end.
 *
 * One broker, native port and legacy port side by side. On the legacy
 * port: raw 1.x peers written here with the codec (to send exactly the bad
 * input the issue names), and the Python 1.x user and node of
 * tests/legacy/peer.py (written from the 1.x spec with Debian's
 * python3-zmq, -libnacl and -cbor), mixed with a native C node and a
 * native C user. Every refusal is checked in the log, and after each the
 * broker still serves everyone with nothing lost. */
#include "legacy.h"
#include "legacy_peer.h"
#include "params.h"
#include "testutil.h"

#include <sodium.h>
#include <stdatomic.h>
#include <zmq.h>

#define MAX_MESSAGE (64 << 10)
#define QUEUE_LIMIT 64

static void *zctx;
static const uint8_t *broker_pk;

/* ------------------------------------------------ the broker's commands */

static char notes[16][64];
static int nnotes;
static pthread_mutex_t notes_lock = PTHREAD_MUTEX_INITIALIZER;

static void h_write_note(mdg_msg *m, void *arg)
{
    (void)arg;
    const char *note;
    if (mdg_params_get_str(mdg_msg_params(m), "note", &note) != 0) {
        mdg_msg_fail(m, "'note' must be text");
        return;
    }
    pthread_mutex_lock(&notes_lock);
    if (nnotes < 16)
        snprintf(notes[nnotes++], sizeof notes[0], "%s", note);
    pthread_mutex_unlock(&notes_lock);
}

/* All notes (the test's users are told apart by what they wrote). */
static void h_fetch_notes(mdg_msg *m, void *arg)
{
    (void)arg;
    cbor_item_t *list = cbor_new_definite_array(16);
    pthread_mutex_lock(&notes_lock);
    for (int i = 0; i < nnotes; i++) {
        cbor_item_t *s = cbor_build_string(notes[i]);
        cbor_array_push(list, s);
        cbor_decref(&s);
    }
    pthread_mutex_unlock(&notes_lock);
    mdg_params *r = mdg_params_new();
    mdg_params_set_item(r, "notes", list);
    mdg_msg_reply(m, r, NULL, 0);
}

static void h_raise_exception(mdg_msg *m, void *arg)
{
    (void)arg;
    mdg_msg_fail(m, "raise_exception was called");
}

/* What the broker stamped: each provenance param the handler sees. */
static void h_whoami(mdg_msg *m, void *arg)
{
    (void)arg;
    static const char *const names[] = {"user", "session", "node"};
    mdg_params *r = mdg_params_new();
    const uint8_t *v;
    size_t len;
    for (int i = 0; i < 3; i++)
        if (mdg_params_get_bytes(mdg_msg_params(m), names[i], &v, &len) == 0)
            mdg_params_set_bytes(r, names[i], v, len);
    mdg_msg_reply(m, r, NULL, 0);
}

/* Takes a call and never answers it. */
static void h_sink(mdg_msg *m, void *arg)
{
    (void)m;
    (void)arg;
}

static const mdg_cmd broker_cmds[] = {
    {"sink", h_sink, NULL, 0},
    {"write_note", h_write_note, MDG_REQUIRE("note"), 0},
    {"fetch_notes", h_fetch_notes, NULL, MDG_CMD_NEEDS_REPLY},
    {"raise_exception", h_raise_exception, NULL, MDG_CMD_NEEDS_REPLY},
    {"whoami", h_whoami, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* ------------------------------------------------ hooks: one set for both */

static uint8_t hooked_user[MDG_KEY_BYTES], hooked_node[MDG_KEY_BYTES]; /* the raw 1.x A and L */
static atomic_int user_new, user_recovered, node_joined, node_left;

static void *hk_session_new(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], const uint8_t *sid, size_t len,
                            void *arg)
{
    (void)b, (void)sid, (void)len, (void)arg;
    if (memcmp(pk, hooked_user, MDG_KEY_BYTES) == 0)
        atomic_fetch_add(&user_new, 1);
    return NULL;
}

static void hk_session_recovered(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *data, void *arg)
{
    (void)b, (void)data, (void)arg;
    if (memcmp(pk, hooked_user, MDG_KEY_BYTES) == 0)
        atomic_fetch_add(&user_recovered, 1);
}

static void *hk_node_joined(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *arg)
{
    (void)b, (void)arg;
    if (memcmp(pk, hooked_node, MDG_KEY_BYTES) == 0)
        atomic_fetch_add(&node_joined, 1);
    return NULL;
}

static void hk_node_left(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *data, void *arg)
{
    (void)b, (void)data, (void)arg;
    if (memcmp(pk, hooked_node, MDG_KEY_BYTES) == 0)
        atomic_fetch_add(&node_left, 1);
}

static const mdg_broker_hooks hooks = {.session_new = hk_session_new,
                                       .session_recovered = hk_session_recovered,
                                       .node_joined = hk_node_joined,
                                       .node_left = hk_node_left};

/* ------------------------------------------------ the native C node */

/* A long-term channel: count replies, all but the last marked "more". */
static void h_stream(mdg_msg *m, void *arg)
{
    (void)arg;
    int64_t n = 0;
    mdg_params_get_int(mdg_msg_params(m), "count", &n);
    for (int64_t i = 0; i < n; i++) {
        mdg_params *r = mdg_params_new();
        mdg_params_set_int(r, "i", i);
        if (i + 1 < n)
            mdg_msg_reply_more(m, r, NULL, 0);
        else
            mdg_msg_reply(m, r, NULL, 0);
    }
}

/* A reply 1.x cannot carry: a params map with an integer key (a native
 * peer can send one; the native path passes it on as it came). */
static void h_badreply(mdg_msg *m, void *arg)
{
    (void)arg;
    cbor_item_t *map = cbor_new_definite_map(1);
    cbor_map_add(map, (struct cbor_pair){.key = cbor_move(cbor_build_uint8(7)), .value = cbor_move(cbor_build_bool(true))});
    mdg_msg_reply(m, mdg_params_forge(map), NULL, 0);
}

static const mdg_cmd node_cmds[] = {
    {"divide", t_divide, MDG_REQUIRE("dividend", "devisor"), MDG_CMD_NEEDS_REPLY},
    {"stream", h_stream, MDG_REQUIRE("count"), MDG_CMD_NEEDS_REPLY},
    {"badreply", h_badreply, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* ------------------------------------------------ a raw 1.x peer */

typedef struct lpeer {
    void *sock;
    bool sealed;
    uint8_t key[MDG_LEGACY_KEY];
    uint8_t rid[MDG_LEGACY_MAX_RID];
    size_t rid_len;
} lpeer;

static void lp_open(lpeer *p, int port)
{
    char ep[64];
    int linger = 0, tmo = 3000;
    memset(p, 0, sizeof *p);
    p->sock = zmq_socket(zctx, ZMQ_DEALER);
    zmq_setsockopt(p->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(p->sock, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    zmq_connect(p->sock, ep);
}

static void lp_close(lpeer *p)
{
    if (p->sock)
        zmq_close(p->sock);
    p->sock = NULL;
}

/* Say hello (naming a previous rid or not); the answer's verdict. */
static int lp_hello(lpeer *p, const mdg_keys *k, const void *prev, size_t prev_len)
{
    zmq_msg_t m;
    if (mdg_legacy_build_hello(&m, mdg_keys_public(k), prev, prev_len) || zmq_msg_send(&m, p->sock, 0) < 0)
        return MDG_ESYS;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, p->sock, 0) < 0) {
        zmq_msg_close(&m);
        return MDG_ETIMEDOUT;
    }
    int rc = mdg_legacy_parse_welcome(zmq_msg_data(&m), zmq_msg_size(&m), broker_pk, mdg_keys_secret(k), &p->sealed,
                                      p->key, p->rid, &p->rid_len);
    zmq_msg_close(&m);
    return rc;
}

static void lp_send(lpeer *p, const char *cmd, const char *uuid, mdg_params *params, const void *bulk,
                    size_t bulk_len)
{
    uint8_t nonce[MDG_LEGACY_NONCE];
    randombytes_buf(nonce, sizeof nonce);
    zmq_msg_t m;
    CHECK_RC(mdg_legacy_build(&m, p->sealed ? p->key : NULL, nonce, sizeof nonce, cmd, strlen(cmd), uuid,
                              strlen(uuid), params, bulk, bulk_len),
             0);
    CHECK(zmq_msg_send(&m, p->sock, 0) >= 0);
    mdg_params_destroy(&params);
}

static void lp_send_raw(lpeer *p, const void *data, size_t len)
{
    CHECK(zmq_send(p->sock, data, len, 0) == (int)len);
}

/* The next frame, opened. 0, or an error (timeout: MDG_ETIMEDOUT). */
typedef struct lreply {
    char command[256];
    char uuid[65];
    mdg_params *params;
    zmq_msg_t bulk;
} lreply;

static int lp_recv(lpeer *p, lreply *r)
{
    zmq_msg_t m;
    mdg_legacy_frame lf;
    memset(r, 0, sizeof *r);
    zmq_msg_init(&r->bulk);
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, p->sock, 0) < 0) {
        zmq_msg_close(&m);
        return MDG_ETIMEDOUT;
    }
    int rc = mdg_legacy_parse(zmq_msg_data(&m), zmq_msg_size(&m), &lf);
    zmq_msg_close(&m);
    if (rc)
        return rc;
    memcpy(r->command, lf.command, lf.command_len < sizeof r->command ? lf.command_len : sizeof r->command - 1);
    memcpy(r->uuid, lf.uuid, lf.uuid_len);
    zmq_msg_close(&r->bulk);
    rc = mdg_legacy_open(&lf, p->sealed ? p->key : NULL, &r->params, &r->bulk);
    mdg_legacy_frame_free(&lf);
    return rc;
}

static void lr_free(lreply *r)
{
    mdg_params_destroy(&r->params);
    zmq_msg_close(&r->bulk);
}

static mdg_params *divide_params(const uint8_t *node, double a, double b)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_bytes(p, "node", node, MDG_KEY_BYTES);
    mdg_params_set_double(p, "dividend", a);
    mdg_params_set_double(p, "devisor", b);
    return p;
}

/* A call from a raw 1.x user and its reply (uuid checked). */
static int lp_call(lpeer *p, const char *cmd, const char *uuid, mdg_params *params, lreply *r)
{
    lp_send(p, cmd, uuid, params, NULL, 0);
    int rc = lp_recv(p, r);
    if (rc == 0 && strcmp(r->uuid, uuid) != 0)
        rc = MDG_EPROTO;
    return rc;
}

/* fetch_notes works for p and the list holds `note`. */
static bool notes_hold(lpeer *p, const char *uuid, const char *note)
{
    lreply r;
    bool found = false;
    if (lp_call(p, "fetch_notes", uuid, NULL, &r) == 0) {
        cbor_item_t *list = NULL;
        if ((list = mdg_params_get(r.params, "notes")) && cbor_isa_array(list))
            for (size_t i = 0; i < cbor_array_size(list); i++) {
                cbor_item_t *s = cbor_array_handle(list)[i];
                found |= cbor_isa_string(s) && cbor_string_length(s) == strlen(note) &&
                         memcmp(cbor_string_handle(s), note, strlen(note)) == 0;
            }
    }
    lr_free(&r);
    return found;
}

static double quotient_of(const lreply *r)
{
    double q = -1;
    if (r->params)
        mdg_params_get_double(r->params, "quotient", &q);
    return q;
}

static const char *exception_of(const lreply *r)
{
    const char *e = NULL;
    if (r->params)
        mdg_params_get_str(r->params, "exception", &e);
    return e ? e : "";
}

/* ------------------------------------------------ native callbacks */

typedef struct seen {
    pthread_mutex_t lock;
    int n;
    double q[8];
    char error[8][128];
} seen;

static void on_reply(mdg_msg *m, void *arg)
{
    seen *s = arg;
    pthread_mutex_lock(&s->lock);
    if (s->n < 8) {
        double q = -1;
        mdg_params_get_double(mdg_msg_params(m), "quotient", &q);
        s->q[s->n] = q;
        snprintf(s->error[s->n], sizeof s->error[0], "%s", mdg_msg_error(m) ? mdg_msg_error(m) : "");
    }
    s->n++;
    pthread_mutex_unlock(&s->lock);
}

static int seen_count(seen *s)
{
    pthread_mutex_lock(&s->lock);
    int n = s->n;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* ------------------------------------------------ Python 1.x peers */

/* The unmodified-1.x side: a Python node and the guide's demo's Python user
 * on the legacy port, key files written here (C) and read there (Python);
 * the native C user calls the Python node too. */
static void python_peers(mdg_broker *b, const mdg_keys *bk, const mdg_keys *pyu, const mdg_keys *pyn, mdg_conn *user)
{
    char dir[] = "/tmp/mdg-legacy-XXXXXX", port[16], pkfile[64];
    CHECK(mkdtemp(dir) != NULL);
    CHECK_RC(mdg_keys_save(pyu, "127.0.0.1", dir), 0);
    CHECK_RC(mdg_server_pk_save(mdg_keys_public(bk), "127.0.0.1", dir), 0);
    CHECK_RC(mdg_keys_save(pyn, "pynode", dir), 0);
    CHECK_RC(mdg_keys_save(bk, "broker", dir), 0);
    snprintf(port, sizeof port, "%d", mdg_broker_legacy_port(b));
    snprintf(pkfile, sizeof pkfile, "%s/broker.pub", dir);

    py_peer node, pyuser;
    const char *nargs[] = {"node", "--prefix", dir, "--name", "pynode", "--server-pk-file", pkfile,
                           "--location", "127.0.0.1", "--port", port, NULL};
    CHECK(py_start(&node, nargs) == 0);
    CHECK(py_wait_for(&node, "node ready", 20000));
    WAIT_FOR(mdg_broker_node_count(b) == 2, 5000);
    CHECK(mdg_broker_node_count(b) == 2); /* native and 1.x nodes side by side */

    /* the guide's demo from Python, dividing on the native node and the 1.x one */
    const char *uargs[] = {"user", "--prefix", dir, "--location", "127.0.0.1", "--port", port,
                           "--expect-nodes", "2", "--stream", "3", NULL};
    CHECK(py_start(&pyuser, uargs) == 0);
    int status = py_wait_exit(&pyuser, 60000);
    CHECK(status == 0);
    const char *want[] = {"Here are the notes: ", "This will print before the async callback is triggered...",
                          "Async callback: ", "Expected! ValueError raised because: raise_exception was called",
                          "10.0/5.0=2.0", "Expected! ValueError raised because: Devisor cannot be zero",
                          "bulk reply ok"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK(strstr(pyuser.out, want[i]) != NULL);
    const char *second = strstr(pyuser.out, "10.0/5.0=2.0");
    CHECK(second && strstr(second + 1, "10.0/5.0=2.0")); /* once per node */
    if (status != 0 || t_failed)
        fprintf(stderr, "--- Python user printed:\n%s---\n", pyuser.out);
    py_stop(&pyuser);

    /* a native C user calls the Python 1.x node */
    mdg_msg *reply = NULL;
    double q = 0;
    size_t blen = 0;
    mdg_params *p = divide_params(mdg_keys_public(pyn), 10, 5);
    CHECK_RC(mdg_conn_call(user, "divide", p, "native bulk", 11, 10000, &reply), 0);
    CHECK(reply && mdg_params_get_double(mdg_msg_params(reply), "quotient", &q) == 0 && q == 2.0);
    const void *bulk = reply ? mdg_msg_bulk(reply, &blen) : NULL;
    CHECK(blen == 11 && bulk && memcmp(bulk, "native bulk", 11) == 0);
    mdg_msg_destroy(&reply);
    CHECK_RC(mdg_conn_call(user, "divide", divide_params(mdg_keys_public(pyn), 1, 0), NULL, 0, 10000, &reply),
             MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "Devisor cannot be zero") != NULL);
    /* static: the 1.x stream never ends its channel, so the callback is
     * still pending (and runs, failed) when the user is destroyed later */
    static seen s = {.lock = PTHREAD_MUTEX_INITIALIZER};
    p = mdg_params_new();
    mdg_params_set_bytes(p, "node", mdg_keys_public(pyn), MDG_KEY_BYTES);
    mdg_params_set_int(p, "count", 3);
    CHECK_RC(mdg_conn_send_cb(user, "stream", p, NULL, 0, on_reply, &s), 0);
    WAIT_FOR(seen_count(&s) == 3, 10000);
    CHECK(seen_count(&s) == 3);

    py_stop(&node);
    CHECK(WIFEXITED(0)); /* (reaped in py_stop) */
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* ------------------------------------------------ the test */

/* A broker at its connection limit (max_connections 1): a 1.x hello on a
 * new link is refused as 1.x refuses, and logged; once the native session
 * that fills it leaves, the same link's hello is welcome. */
static void full_broker(void)
{
    mdg_keys *bk2 = NULL, *uk2 = NULL, *lk2 = NULL;
    mdg_broker *b = NULL;
    mdg_conn *user = NULL;
    mdg_keys_new(&bk2);
    mdg_keys_new(&uk2);
    mdg_keys_new(&lk2);
    const uint8_t *saved_pk = broker_pk;
    broker_pk = mdg_keys_public(bk2);
    mdg_broker_options o = {.bind_address = "127.0.0.1", .legacy = true, .max_connections = 1};
    CHECK_RC(mdg_broker_new(&b, bk2, &o), 0);
    mdg_broker_allow(b, mdg_keys_public(uk2), MDG_ROLE_USER);
    mdg_broker_allow(b, mdg_keys_public(lk2), MDG_ROLE_USER);
    CHECK_RC(mdg_broker_start(b), 0);
    CHECK(t_logged("the broker admits at most 1 connections"));
    mdg_conn_options uo = {.port = mdg_broker_port(b)};
    CHECK_RC(mdg_conn_new_with_keys(&user, "127.0.0.1", broker_pk, uk2, &uo), 0);
    CHECK_RC(mdg_conn_start(user), 0);
    CHECK_RC(mdg_conn_wait_until_ready(user, 5000), 0);
    lpeer P;
    lp_open(&P, mdg_broker_legacy_port(b));
    CHECK_RC(lp_hello(&P, lk2, NULL, 0), MDG_EAUTH);
    CHECK(t_logged("refused: broker at its connection limit"));
    mdg_conn_destroy(&user);
    int rc = MDG_EAUTH;
    for (int i = 0; i < 100 && rc == MDG_EAUTH; i++) {
        rc = lp_hello(&P, lk2, NULL, 0);
        if (rc == MDG_EAUTH)
            usleep(50000); /* until the broker has seen the native link close */
    }
    CHECK_RC(rc, 0);
    lp_close(&P);
    mdg_broker_destroy(&b);
    broker_pk = saved_pk;
    mdg_keys_destroy(&bk2);
    mdg_keys_destroy(&uk2);
    mdg_keys_destroy(&lk2);
}

int main(void)
{
    t_capture_log();
    zctx = zmq_ctx_new();
    mdg_keys *bk, *nk, *ak, *bbk, *lk, *l2k, *stranger, *pyu, *pyn;
    mdg_keys_new(&bk);
    mdg_keys_new(&nk);
    mdg_keys_new(&ak);
    mdg_keys_new(&bbk);
    mdg_keys_new(&lk);
    mdg_keys_new(&l2k);
    mdg_keys_new(&stranger);
    mdg_keys_new(&pyu);
    mdg_keys_new(&pyn);
    mdg_keys *uk;
    mdg_keys_new(&uk);
    broker_pk = mdg_keys_public(bk);

    mdg_broker *b = NULL;
    mdg_broker_options o = {.bind_address = "127.0.0.1", .legacy = true, .node_grace_ms = 300,
                            .max_message = MAX_MESSAGE, .queue_limit = QUEUE_LIMIT};
    CHECK_RC(mdg_broker_new(&b, bk, &o), 0);
    mdg_broker_set_commands(b, broker_cmds, NULL);
    mdg_broker_set_hooks(b, &hooks, NULL);
    memcpy(hooked_user, mdg_keys_public(ak), MDG_KEY_BYTES);
    memcpy(hooked_node, mdg_keys_public(lk), MDG_KEY_BYTES);
    mdg_broker_allow(b, mdg_keys_public(nk), MDG_ROLE_NODE);
    mdg_broker_allow(b, mdg_keys_public(lk), MDG_ROLE_NODE);
    mdg_broker_allow(b, mdg_keys_public(l2k), MDG_ROLE_NODE);
    mdg_broker_allow(b, mdg_keys_public(pyn), MDG_ROLE_NODE);
    mdg_broker_allow(b, mdg_keys_public(ak), MDG_ROLE_USER);
    mdg_broker_allow(b, mdg_keys_public(bbk), MDG_ROLE_USER);
    mdg_broker_allow(b, mdg_keys_public(pyu), MDG_ROLE_USER);
    mdg_broker_allow(b, mdg_keys_public(uk), MDG_ROLE_USER);
    CHECK_RC(mdg_broker_start(b), 0);
    int lport = mdg_broker_legacy_port(b);
    CHECK(lport > 0 && lport != mdg_broker_port(b));
    CHECK(t_logged("Messidge 1.x listener on"));
    CHECK(t_logged("1.x node links are plaintext and unauthenticated"));

    /* a native node and a native user */
    mdg_conn *node = NULL, *user = NULL;
    mdg_conn_options no = {.port = mdg_broker_port(b), .reflect_errors = true};
    CHECK_RC(mdg_conn_new_with_keys(&node, "127.0.0.1", broker_pk, nk, &no), 0);
    mdg_conn_register_commands(node, node_cmds, NULL);
    CHECK_RC(mdg_conn_start(node), 0);
    CHECK_RC(mdg_conn_wait_until_ready(node, 5000), 0);
    mdg_conn_options uo = {.port = mdg_broker_port(b)};
    CHECK_RC(mdg_conn_new_with_keys(&user, "127.0.0.1", broker_pk, uk, &uo), 0);
    CHECK_RC(mdg_conn_start(user), 0);
    CHECK_RC(mdg_conn_wait_until_ready(user, 5000), 0);

    /* ---- raw 1.x node L and user A */
    lpeer L, A, B, L2;
    lp_open(&L, lport);
    CHECK_RC(lp_hello(&L, lk, NULL, 0), 0);
    CHECK(!L.sealed && L.rid_len == 16); /* a node link is plaintext; the rid is our random session id */
    WAIT_FOR(mdg_broker_node_count(b) == 2, 3000);
    lp_open(&A, lport);
    CHECK_RC(lp_hello(&A, ak, NULL, 0), 0);
    CHECK(A.sealed);
    CHECK(atomic_load(&user_new) == 1 && atomic_load(&node_joined) == 1); /* the same hooks as native peers */
    lreply r;
    CHECK_RC(lp_recv(&A, &r), 0); /* the resource offer, sealed, lists both nodes */
    CHECK(strcmp(r.command, "resource_offer") == 0 && r.uuid[0] == '\0');
    cbor_item_t *nodes = NULL;
    CHECK((nodes = mdg_params_get(r.params, "nodes")) && cbor_isa_array(nodes) && cbor_array_size(nodes) == 2);
    lr_free(&r);

    /* the original Python Messidge's calls from a 1.x user: broker table, native node */
    mdg_params *np = mdg_params_new();
    mdg_params_set_str(np, "note", "note of A");
    lp_send(&A, "write_note", "", np, NULL, 0);
    CHECK(notes_hold(&A, "u1", "note of A"));
    CHECK_RC(lp_call(&A, "raise_exception", "u2", NULL, &r), 0);
    CHECK(strcmp(exception_of(&r), "raise_exception was called") == 0 && r.command[0] == '\0');
    lr_free(&r);
    CHECK_RC(lp_call(&A, "divide", "u3", divide_params(mdg_keys_public(nk), 10, 5), &r), 0);
    CHECK(quotient_of(&r) == 2.0);
    lr_free(&r);
    CHECK_RC(lp_call(&A, "divide", "u4", divide_params(mdg_keys_public(nk), 1, 0), &r), 0);
    CHECK(strcmp(exception_of(&r), "Devisor cannot be zero") == 0);
    lr_free(&r);

    /* a 1.x user calls a 1.x node: the node sees the stamped params in
     * clear, answers 1.x style (bulk in the command field); the user gets
     * it sealed, with the bulk not in the command field */
    lp_send(&A, "divide", "u5", divide_params(mdg_keys_public(lk), 10, 5), "BULK", 4);
    CHECK_RC(lp_recv(&L, &r), 0);
    CHECK(strcmp(r.command, "divide") == 0 && r.uuid[0] == 'm');
    const uint8_t *v;
    size_t vl;
    CHECK(mdg_params_get_bytes(r.params, "user", &v, &vl) == 0 && vl == 32 && memcmp(v, mdg_keys_public(ak), 32) == 0);
    CHECK(mdg_params_get_bytes(r.params, "session", &v, &vl) == 0 && vl == A.rid_len && memcmp(v, A.rid, vl) == 0);
    CHECK(!mdg_params_has(r.params, "node"));
    CHECK(zmq_msg_size(&r.bulk) == 4 && memcmp(zmq_msg_data(&r.bulk), "BULK", 4) == 0);
    char call_uuid[65];
    strcpy(call_uuid, r.uuid);
    lr_free(&r);
    mdg_params *qp = mdg_params_new();
    mdg_params_set_double(qp, "quotient", 2.0);
    lp_send(&L, "BULK", call_uuid, qp, "BULK", 4);
    CHECK_RC(lp_recv(&A, &r), 0);
    CHECK(strcmp(r.uuid, "u5") == 0 && quotient_of(&r) == 2.0 && r.command[0] == '\0');
    CHECK(zmq_msg_size(&r.bulk) == 4 && memcmp(zmq_msg_data(&r.bulk), "BULK", 4) == 0);
    lr_free(&r);

    /* a 1.x node's broker command naming user A and A's session: the
     * handler sees only the node's own key, stamped by the broker */
    mdg_params *fp = mdg_params_new();
    mdg_params_set_bytes(fp, "user", mdg_keys_public(ak), MDG_KEY_BYTES);
    mdg_params_set_bytes(fp, "session", A.rid, A.rid_len);
    mdg_params_set_bytes(fp, "node", mdg_keys_public(nk), MDG_KEY_BYTES); /* another node */
    CHECK_RC(lp_call(&L, "whoami", "w1", fp, &r), 0);
    CHECK(!mdg_params_has(r.params, "user") && !mdg_params_has(r.params, "session"));
    CHECK(mdg_params_get_bytes(r.params, "node", &v, &vl) == 0 && vl == 32 && memcmp(v, mdg_keys_public(lk), 32) == 0);
    lr_free(&r);
    CHECK(t_logged("'whoami' from node") && t_logged("its own 'user' param removed"));

    /* a native user calls the 1.x node: an exception reply becomes the
     * native error; 'ka' replies are a long-term channel */
    seen s1 = {.lock = PTHREAD_MUTEX_INITIALIZER}, s2 = {.lock = PTHREAD_MUTEX_INITIALIZER};
    CHECK_RC(mdg_conn_send_cb(user, "divide", divide_params(mdg_keys_public(lk), 1, 0), NULL, 0, on_reply, &s1), 0);
    CHECK_RC(lp_recv(&L, &r), 0);
    CHECK(mdg_params_get_bytes(r.params, "user", &v, &vl) == 0 && vl == 32 && memcmp(v, mdg_keys_public(uk), 32) == 0);
    strcpy(call_uuid, r.uuid);
    lr_free(&r);
    lp_send(&L, "", call_uuid, mdg_legacy_exception("Devisor cannot be zero"), NULL, 0);
    WAIT_FOR(seen_count(&s1) == 1, 3000);
    CHECK(seen_count(&s1) == 1 && strcmp(s1.error[0], "Devisor cannot be zero") == 0);
    CHECK_RC(mdg_conn_send_cb(user, "stream", divide_params(mdg_keys_public(lk), 1, 1), NULL, 0, on_reply, &s2), 0);
    CHECK_RC(lp_recv(&L, &r), 0);
    CHECK(strcmp(r.command, "stream") == 0);
    strcpy(call_uuid, r.uuid);
    lr_free(&r);
    for (int i = 0; i < 3; i++) {
        qp = mdg_params_new();
        mdg_params_set_double(qp, "quotient", i);
        lp_send(&L, "ka", call_uuid, qp, NULL, 0);
    }
    WAIT_FOR(seen_count(&s2) == 3, 3000);
    CHECK(seen_count(&s2) == 3 && s2.q[0] == 0 && s2.q[1] == 1 && s2.q[2] == 2);

    /* ---- bad input 1: plaintext params on an encrypted session */
    t_clear_log();
    {
        uint8_t nonce[MDG_LEGACY_NONCE];
        randombytes_buf(nonce, sizeof nonce);
        zmq_msg_t m;
        mdg_legacy_build(&m, NULL, nonce, sizeof nonce, "fetch_notes", 11, "u6", 2, NULL, NULL, 0);
        zmq_msg_send(&m, A.sock, 0);
        CHECK_RC(lp_recv(&A, &r), 0);
        CHECK(strcmp(r.uuid, "u6") == 0 && strstr(exception_of(&r), "plaintext params on an encrypted"));
        lr_free(&r);
        CHECK(t_logged("plaintext params on an encrypted 1.x session"));
        CHECK(notes_hold(&A, "u6b", "note of A"));
    }

    /* ---- bad input 2: replies from parties that were never asked */
    lp_open(&B, lport);
    CHECK_RC(lp_hello(&B, bbk, NULL, 0), 0);
    CHECK_RC(lp_recv(&B, &r), 0); /* its resource offer */
    lr_free(&r);
    lp_open(&L2, lport);
    CHECK_RC(lp_hello(&L2, l2k, NULL, 0), 0);
    t_clear_log();
    lp_send(&A, "divide", "u7", divide_params(mdg_keys_public(lk), 9, 3), NULL, 0);
    CHECK_RC(lp_recv(&L, &r), 0);
    strcpy(call_uuid, r.uuid);
    lr_free(&r);
    mdg_params *forged = mdg_params_new();
    mdg_params_set_bool(forged, "forged", true);
    lp_send(&B, "ka", call_uuid, forged, NULL, 0); /* a user injecting a reply */
    forged = mdg_params_new();
    mdg_params_set_bool(forged, "forged", true);
    lp_send(&L2, "ka", call_uuid, forged, NULL, 0); /* another node injecting one */
    WAIT_FOR(t_logged("no such call was made to this node"), 2000);
    CHECK(t_logged("1.x reply from user") && t_logged("users do not answer calls"));
    CHECK(t_logged("1.x reply from node") && t_logged("no such call was made to this node"));
    qp = mdg_params_new();
    mdg_params_set_double(qp, "quotient", 3.0);
    lp_send(&L, "", call_uuid, qp, NULL, 0);
    CHECK_RC(lp_recv(&A, &r), 0); /* the real answer, and only it */
    CHECK(strcmp(r.uuid, "u7") == 0 && quotient_of(&r) == 3.0 && !mdg_params_has(r.params, "forged"));
    lr_free(&r);

    /* ---- bad input 3: a resume naming someone else's session */
    t_clear_log();
    size_t sessions_before = mdg_broker_session_count(b);
    lpeer B2;
    lp_open(&B2, lport);
    CHECK_RC(lp_hello(&B2, bbk, A.rid, A.rid_len), 0);
    CHECK(B2.rid_len == 16 && memcmp(B2.rid, A.rid, 16) != 0); /* a new session, not A's */
    CHECK(t_logged("names a session of another key: refused"));
    CHECK(notes_hold(&A, "u8", "note of A")); /* A still served */
    lp_close(&B2);
    /* with A's own (public) key and its session id, but A still connected:
     * no takeover either, a session of its own */
    lp_open(&B2, lport);
    CHECK_RC(lp_hello(&B2, ak, A.rid, A.rid_len), 0);
    CHECK(B2.rid_len == 16 && memcmp(B2.rid, A.rid, 16) != 0);
    CHECK(t_logged("names a session still connected elsewhere: a new session instead"));
    CHECK(notes_hold(&A, "u8b", "note of A"));
    /* a 1.x hello proves nothing: a session that never showed it holds the
     * key (no sealed frame opened) gets no grace when its link drops, so
     * public keys alone cannot fill the broker with sessions (both B2s) */
    lp_close(&B2);
    WAIT_FOR(mdg_broker_session_count(b) == sessions_before, 3000);
    CHECK(mdg_broker_session_count(b) == sessions_before);
    CHECK(t_logged("not resumed within its grace period"));

    /* ---- a 1.x node's reply with a long bulk, which 1.x also puts in the
     * command field: still a reply */
    {
        char long_bulk[300];
        memset(long_bulk, 'b', sizeof long_bulk);
        lp_send(&A, "divide", "u-long", divide_params(mdg_keys_public(lk), 8, 2), NULL, 0);
        CHECK_RC(lp_recv(&L, &r), 0);
        strcpy(call_uuid, r.uuid);
        lr_free(&r);
        qp = mdg_params_new();
        mdg_params_set_double(qp, "quotient", 4.0);
        zmq_msg_t m;
        uint8_t nonce[MDG_LEGACY_NONCE];
        randombytes_buf(nonce, sizeof nonce);
        mdg_legacy_build(&m, NULL, nonce, sizeof nonce, long_bulk, sizeof long_bulk, call_uuid, strlen(call_uuid), qp,
                         long_bulk, sizeof long_bulk);
        mdg_params_destroy(&qp);
        zmq_msg_send(&m, L.sock, 0);
        CHECK_RC(lp_recv(&A, &r), 0);
        CHECK(strcmp(r.uuid, "u-long") == 0 && quotient_of(&r) == 4.0 && zmq_msg_size(&r.bulk) == sizeof long_bulk);
        lr_free(&r);
    }

    /* ---- a native node's reply 1.x cannot carry: the 1.x caller is told,
     * and its session goes on */
    t_clear_log();
    mdg_params *bp = mdg_params_new();
    mdg_params_set_bytes(bp, "node", mdg_keys_public(nk), MDG_KEY_BYTES);
    CHECK_RC(lp_call(&A, "badreply", "u-bad", bp, &r), 0);
    CHECK(strstr(exception_of(&r), "cannot be carried by Messidge 1.x") != NULL);
    lr_free(&r);
    CHECK(t_logged("for 1.x user") && t_logged("dropped: params keys must be text strings"));
    CHECK(notes_hold(&A, "u-bad2", "note of A"));

    /* ---- calls no one answers do not fill the uuid table for good */
    t_clear_log();
    for (int i = 0; i < QUEUE_LIMIT + 5; i++) {
        char uuid[16];
        snprintf(uuid, sizeof uuid, "sink%d", i);
        lp_send(&A, "sink", uuid, NULL, NULL, 0);
    }
    CHECK(notes_hold(&A, "u-after-sink", "note of A"));
    CHECK(t_logged("calls awaiting replies: the oldest can no longer be answered"));

    /* ---- a 5-element frame with list params: refused, and the sender
     * told (1.x answered this with an exception too) */
    {
        uint8_t list_params[64] = {0x85, 0x58, 0x18};
        size_t n = 3 + 24;
        memcpy(list_params + n, "\x4b" "fetch_notes" "\x46" "u-list" "\x80\x40", 1 + 11 + 1 + 6 + 2);
        n += 1 + 11 + 1 + 6 + 2;
        lp_send_raw(&A, list_params, n);
        CHECK_RC(lp_recv(&A, &r), 0);
        CHECK(strcmp(r.uuid, "u-list") == 0 && strstr(exception_of(&r), "params must be a byte string or a map"));
        lr_free(&r);
    }

    /* ---- bad input 4: frames that are not a 5-element array */
    t_clear_log();
    static const uint8_t three[] = {0x83, 0x01, 0x02, 0x03};
    lp_send_raw(&A, three, sizeof three);
    lp_send_raw(&A, "\xff garbage", 9);
    static const uint8_t wrong_types[] = {0x85, 0x01, 0x40, 0x40, 0xa0, 0x40}; /* nonce an int */
    lp_send_raw(&A, wrong_types, sizeof wrong_types);
    CHECK(notes_hold(&A, "u9", "note of A"));
    CHECK(t_logged("a 1.x frame must be a 5-element array, not 3"));
    CHECK(t_logged("bad 1.x frame: nonce must be a byte string"));

    /* ---- bad input 5: oversized frames */
    t_clear_log();
    size_t big_len = MAX_MESSAGE + 1000;
    char *big = calloc(1, 4 * MAX_MESSAGE);
    lp_send(&A, "fetch_notes", "u10", NULL, big, big_len); /* over max_message: refused, and told */
    CHECK_RC(lp_recv(&A, &r), 0);
    CHECK(strcmp(r.uuid, "u10") == 0 && strstr(exception_of(&r), "larger than max_message"));
    lr_free(&r);
    CHECK(notes_hold(&A, "u11", "note of A"));
    CHECK(t_logged("larger than max_message"));
    /* far over it: libzmq drops the link; the client resumes its session */
    lp_send(&A, "fetch_notes", "u12", NULL, big, 4 * MAX_MESSAGE);
    WAIT_FOR(t_logged("link lost"), 3000);
    CHECK(t_logged("link lost"));
    free(big);
    uint8_t old_rid[16];
    memcpy(old_rid, A.rid, 16);
    uint8_t old_key[MDG_LEGACY_KEY];
    memcpy(old_key, A.key, sizeof old_key);
    lp_close(&A);
    lp_open(&A, lport);
    CHECK_RC(lp_hello(&A, ak, old_rid, 16), 0);
    CHECK(memcmp(A.rid, old_rid, 16) == 0 && memcmp(A.key, old_key, sizeof old_key) != 0); /* same session, new key */
    CHECK(t_logged("resumed its session"));
    WAIT_FOR(atomic_load(&user_recovered) == 1, 2000); /* the hook runs after the welcome goes */
    CHECK(atomic_load(&user_recovered) == 1);
    CHECK(notes_hold(&A, "u13", "note of A")); /* nothing lost */

    /* ---- bad input 6: an unknown key at the handshake */
    t_clear_log();
    lpeer S;
    lp_open(&S, lport);
    CHECK_RC(lp_hello(&S, stranger, NULL, 0), MDG_EAUTH);
    CHECK(t_logged("1.x hello from") && t_logged("refused: unknown key"));
    lp_close(&S);
    /* a link that has not said hello gets nothing decoded beyond a hello's size */
    lp_open(&S, lport);
    char *junk = calloc(1, 4096);
    lp_send_raw(&S, junk, 4096);
    WAIT_FOR(t_logged("frame of 4096 bytes before a hello"), 2000);
    CHECK(t_logged("frame of 4096 bytes before a hello"));
    free(junk);
    lp_close(&S);
    /* frames before a hello: each refused, the log says it once per link */
    lp_open(&S, lport);
    t_clear_log();
    for (int i = 0; i < 5; i++) {
        lreply r;
        lp_send(&S, "fetch_notes", "early", NULL, NULL, 0);
        CHECK_RC(lp_recv(&S, &r), 0);
        CHECK(strcmp(r.uuid, "early") == 0 && r.command[0] == '\0');
        lr_free(&r);
    }
    CHECK(t_log_count("from a link without a session") == 1);
    lp_close(&S);
    /* and a 1.x hello in the name of a node connected natively */
    lp_open(&S, lport);
    CHECK_RC(lp_hello(&S, nk, NULL, 0), MDG_EAUTH);
    CHECK(t_logged("connected on the native (authenticated) protocol"));
    lp_close(&S);
    CHECK(notes_hold(&A, "u14", "note of A"));

    lp_close(&L2);
    lp_close(&B);
    lp_close(&L);
    lp_close(&A);
    WAIT_FOR(mdg_broker_node_count(b) == 1, 3000);
    WAIT_FOR(atomic_load(&node_left) == 1, 2000);
    CHECK(atomic_load(&node_left) == 1);
    CHECK(mdg_broker_node_count(b) == 1);

    python_peers(b, bk, pyu, pyn, user);
    full_broker();

    mdg_conn_destroy(&user);
    mdg_conn_destroy(&node);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&uk);
    mdg_keys_destroy(&bk);
    mdg_keys_destroy(&nk);
    mdg_keys_destroy(&ak);
    mdg_keys_destroy(&bbk);
    mdg_keys_destroy(&lk);
    mdg_keys_destroy(&l2k);
    mdg_keys_destroy(&stranger);
    mdg_keys_destroy(&pyu);
    mdg_keys_destroy(&pyn);
    zmq_ctx_term(zctx);
    return t_done("test_legacy_broker");
}
