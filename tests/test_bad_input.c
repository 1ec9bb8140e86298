/* test_bad_input.c - bad input over real sockets. A raw ZeroMQ DEALER with
 * CURVE (no libmessidge on its side of the wire) sends the broker broken,
 * refused and forged messages; for each one we check that
 *   (a) the clear error text reaches the sender (an ERROR reply with the
 *       sender's corr, or a notice with corr 0),
 *   (b) the broker logged it,
 *   (c) nothing else is disturbed: the raw client's own session still
 *       works, and a well-behaved mdg_conn client connected at the same
 *       time still gets correct answers.
 */
#include "testutil.h"

#include "internal.h"
#include "rawpeer.h"
#include "wire.h"

#include <stdatomic.h>

/* ------------------------------------------------------- the broker side */

static atomic_int handled; /* handler calls, of any command */

/* Echo i, and what the broker stamped: user, session, and whether a
 * "node" param reached the handler (it must not, from a user). */
static void h_echo(mdg_msg *m, void *arg)
{
    (void)arg;
    atomic_fetch_add(&handled, 1);
    const mdg_params *in = mdg_msg_params(m);
    mdg_params *r = mdg_params_new();
    const uint8_t *b;
    size_t len;
    int64_t i;
    if (mdg_params_get_int(in, "i", &i) == 0)
        mdg_params_set_int(r, "i", i);
    if (mdg_params_get_bytes(in, "user", &b, &len) == 0)
        mdg_params_set_bytes(r, "user", b, len);
    if (mdg_params_get_bytes(in, "session", &b, &len) == 0)
        mdg_params_set_bytes(r, "session", b, len);
    mdg_params_set_bool(r, "node_seen", mdg_params_has(in, "node"));
    if (mdg_params_get_bytes(in, "node", &b, &len) == 0)
        mdg_params_set_bytes(r, "node", b, len);
    mdg_msg_reply(m, r, NULL, 0);
}

static void h_note(mdg_msg *m, void *arg)
{
    (void)arg;
    atomic_fetch_add(&handled, 1);
    if (mdg_msg_replyable(m))
        mdg_msg_reply(m, NULL, NULL, 0);
}

static const mdg_cmd cmds[] = {
    {"echo", h_echo, NULL, MDG_CMD_NEEDS_REPLY},
    {"note", h_note, MDG_REQUIRE("note"), 0},
    {"node_only", h_note, NULL, MDG_CMD_NODE_ONLY},
    MDG_CMD_END,
};

/* --------------------------------------------------------- a raw client */

typedef struct raw {
    void *ctx, *sock;
    mdg_keys *keys;
    uint64_t seq;    /* last seq we sent in a valid CMD header */
    uint64_t rx_seq; /* last seq the broker sent us */
    uint64_t corr;   /* last corr we used */
    uint8_t session[64];
    size_t session_len;
    t_wire_reader rd; /* a frame may hold several messages */
} raw;

/* A raw client with the given keys (NULL: new ones) and routing id (NULL:
 * libzmq's). */
static void raw_open_as(raw *r, const mdg_broker *b, const mdg_keys *bkeys, const mdg_keys *keys,
                        const char *routing_id)
{
    char ep[64];
    int linger = 0;
    memset(r, 0, sizeof *r);
    if ((keys ? mdg_keys_from_raw(&r->keys, mdg_keys_public(keys), mdg_keys_secret(keys))
              : mdg_keys_new(&r->keys)) ||
        !(r->ctx = zmq_ctx_new()) || !(r->sock = zmq_socket(r->ctx, ZMQ_DEALER)) ||
        (routing_id && zmq_setsockopt(r->sock, ZMQ_ROUTING_ID, routing_id, strlen(routing_id)))) {
        fprintf(stderr, "cannot make a raw client\n");
        exit(2);
    }
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", mdg_broker_port(b));
    if (zmq_setsockopt(r->sock, ZMQ_CURVE_SERVERKEY, mdg_keys_public(bkeys), MDG_KEY_BYTES) ||
        zmq_setsockopt(r->sock, ZMQ_CURVE_PUBLICKEY, mdg_keys_public(r->keys), MDG_KEY_BYTES) ||
        zmq_setsockopt(r->sock, ZMQ_CURVE_SECRETKEY, mdg_keys_secret(r->keys), MDG_KEY_BYTES) ||
        zmq_setsockopt(r->sock, ZMQ_LINGER, &linger, sizeof linger) || zmq_connect(r->sock, ep)) {
        fprintf(stderr, "cannot connect a raw client: %s\n", zmq_strerror(errno));
        exit(2);
    }
}

static void raw_open(raw *r, const mdg_broker *b, const mdg_keys *bkeys)
{
    raw_open_as(r, b, bkeys, NULL, NULL);
}

static void raw_close(raw *r)
{
    t_wire_reader_close(&r->rd);
    zmq_close(r->sock);
    zmq_ctx_term(r->ctx);
    mdg_keys_destroy(&r->keys);
}

/* Send a message of n parts: the first two (header and params) as its
 * head frame, the rest as frames of their own (n == 1: a head frame with
 * the header alone). */
static void raw_frames(raw *r, int n, const void *const *data, const size_t *len)
{
    size_t hl = len[0] + (n > 1 ? len[1] : 0);
    uint8_t *head = malloc(hl ? hl : 1);
    memcpy(head, data[0], len[0]);
    if (n > 1)
        memcpy(head + len[0], data[1], len[1]);
    zmq_send(r->sock, head, hl, n > 2 ? ZMQ_SNDMORE : 0);
    free(head);
    for (int i = 2; i < n; i++)
        zmq_send(r->sock, data[i], len[i], i < n - 1 ? ZMQ_SNDMORE : 0);
}

static size_t make_header(uint8_t *buf, int kind, uint64_t seq, uint64_t corr, const char *command)
{
    mdg_header h = {.kind = (uint8_t)kind, .seq = seq, .corr = corr};
    mdg_header_set_command(&h, command);
    return mdg_wire_encode_header(&h, buf, MDG_MAX_HEADER);
}

/* A CMD with a valid header (next seq) and the given raw params bytes. */
static void raw_cmd_bytes(raw *r, const char *command, uint64_t corr, const void *params, size_t plen)
{
    uint8_t hb[MDG_MAX_HEADER];
    size_t hl = make_header(hb, MDG_K_CMD, ++r->seq, corr, command);
    const void *d[] = {hb, params};
    size_t l[] = {hl, plen};
    raw_frames(r, 2, d, l);
}

/* The same with params built with the API (taken). */
static void raw_cmd(raw *r, const char *command, uint64_t corr, mdg_params *p)
{
    zmq_msg_t m;
    mdg_params_encode(p, &m);
    raw_cmd_bytes(r, command, corr, zmq_msg_data(&m), zmq_msg_size(&m));
    zmq_msg_close(&m);
    mdg_params_destroy(&p);
}

/* Receive one message: 0, or -1 when nothing came in time, or -2 when
 * what came is not a valid message. */
static int raw_recv_any(raw *r, mdg_header *h, mdg_params **p, int timeout_ms)
{
    mdg_inbound in;
    *p = NULL;
    int rc = t_wire_next(&r->rd, r->sock, &in, timeout_ms);
    if (rc)
        return rc;
    *h = in.h;
    rc = mdg_inbound_take_params(&in, p) == 0 ? 0 : -2;
    mdg_inbound_close(&in);
    return rc;
}

/* The same, passing over commands the broker pushes on its own (such as
 * the resource offer at session start; they count in the sequence) and
 * its acknowledgements. */
static int raw_recv(raw *r, mdg_header *h, mdg_params **p, int timeout_ms)
{
    int64_t deadline = mdg_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - mdg_now_ms();
        int rc = raw_recv_any(r, h, p, left > 0 ? (int)left : 0);
        if (rc == 0 && h->kind == MDG_K_ACK) {
            mdg_params_destroy(p);
            continue;
        }
        if (rc != 0 || h->kind != MDG_K_CMD)
            return rc;
        if (r->session_len && h->seq == r->rx_seq + 1)
            r->rx_seq = h->seq;
        mdg_params_destroy(p);
    }
}

/* HELLO (with params hp, taken; NULL: none), then WELCOME with a session
 * in the role the key was admitted in. */
static void raw_hello_with(raw *r, const char *want_role, mdg_params *hp)
{
    uint8_t hb[MDG_MAX_HEADER];
    zmq_msg_t pm;
    if (!hp)
        hp = mdg_params_new();
    CHECK_RC(mdg_params_encode(hp, &pm), 0);
    mdg_params_destroy(&hp);
    size_t hl = make_header(hb, MDG_K_HELLO, 0, 0, "");
    const void *d[] = {hb, zmq_msg_data(&pm)};
    size_t l[] = {hl, zmq_msg_size(&pm)};
    raw_frames(r, 2, d, l);
    zmq_msg_close(&pm);
    mdg_header h;
    mdg_params *p = NULL;
    const uint8_t *sid = NULL;
    const char *role = NULL;
    bool resumed = true;
    CHECK_RC(raw_recv(r, &h, &p, 5000), 0);
    CHECK(h.kind == MDG_K_WELCOME && h.seq == 0);
    CHECK_RC(mdg_params_get_bytes(p, "session", &sid, &r->session_len), 0);
    CHECK(r->session_len > 0 && r->session_len <= sizeof r->session);
    if (sid && r->session_len <= sizeof r->session)
        memcpy(r->session, sid, r->session_len);
    CHECK_RC(mdg_params_get_str(p, "role", &role), 0);
    CHECK(role && strcmp(role, want_role) == 0);
    CHECK_RC(mdg_params_get_bool(p, "resumed", &resumed), 0);
    CHECK(!resumed);
    mdg_params_destroy(&p);
}

static void raw_hello_as(raw *r, const char *want_role)
{
    raw_hello_with(r, want_role, NULL);
}

static void raw_hello(raw *r)
{
    raw_hello_as(r, "user");
}

/* Expect an ERROR for the last bad input: with corr (0 = a notice), the
 * command name when given, `text` in the error, `log` in the broker log. */
static void expect_error_(raw *r, uint64_t corr, const char *command, const char *text,
                          const char *log, int line)
{
    mdg_header h;
    mdg_params *p = NULL;
    const char *err = "", *cmd = NULL;
    int rc = raw_recv(r, &h, &p, 5000);
    bool ok = rc == 0 && h.kind == MDG_K_ERROR && h.corr == corr;
    if (ok)
        mdg_params_get_str(p, "error", &err);
    if (ok && command)
        ok = mdg_params_get_str(p, "command", &cmd) == 0 && strcmp(cmd, command) == 0;
    ok = ok && strstr(err, text) != NULL;
    /* errors are sequenced like every reply: next in line after a hello */
    if (ok && r->session_len) {
        ok = h.seq == r->rx_seq + 1;
        r->rx_seq = h.seq;
    }
    t_checks++;
    if (!ok) {
        t_failed++;
        fprintf(stderr, "test_bad_input.c:%d: wanted an error (corr %llu, \"%s\"); got rc %d kind %d "
                        "corr %llu seq %llu error \"%s\" command \"%s\"\n",
                line, (unsigned long long)corr, text, rc, rc ? -1 : h.kind,
                rc ? 0ULL : (unsigned long long)h.corr, rc ? 0ULL : (unsigned long long)h.seq, err,
                cmd ? cmd : "(none)");
    }
    mdg_params_destroy(&p);
    WAIT_FOR(t_logged(log), 2000);
    t_checks++;
    if (!t_logged(log)) {
        t_failed++;
        fprintf(stderr, "test_bad_input.c:%d: broker did not log \"%s\"\n", line, log);
    }
}
#define EXPECT_ERROR(r, corr, command, text, log) expect_error_(r, corr, command, text, log, __LINE__)

/* The raw client's own session still answers: echo i comes back as i. */
static void raw_still_works_(raw *r, int line)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_int(p, "i", (int64_t)line);
    raw_cmd(r, "echo", ++r->corr, p);
    mdg_header h;
    mdg_params *rp = NULL;
    int64_t i = -1;
    int rc = raw_recv(r, &h, &rp, 5000);
    bool ok = rc == 0 && h.kind == MDG_K_REPLY && h.corr == r->corr && h.seq == r->rx_seq + 1 &&
              mdg_params_get_int(rp, "i", &i) == 0 && i == line;
    if (rc == 0)
        r->rx_seq = h.seq;
    t_checks++;
    if (!ok) {
        t_failed++;
        fprintf(stderr, "test_bad_input.c:%d: raw client's session disturbed (rc %d kind %d i %lld)\n",
                line, rc, rc ? -1 : h.kind, (long long)i);
    }
    mdg_params_destroy(&rp);
}
#define RAW_STILL_WORKS(r) raw_still_works_(r, __LINE__)

/* ------------------------------------------------ the well-behaved client */

typedef struct notices {
    pthread_mutex_t lock;
    int n;
    char command[64];
    char text[512];
} notices;

static void on_notice(const char *command, const char *text, void *arg)
{
    notices *ns = arg;
    pthread_mutex_lock(&ns->lock);
    ns->n++;
    snprintf(ns->command, sizeof ns->command, "%s", command);
    snprintf(ns->text, sizeof ns->text, "%s", text);
    pthread_mutex_unlock(&ns->lock);
}

static int notice_count(notices *ns)
{
    pthread_mutex_lock(&ns->lock);
    int n = ns->n;
    pthread_mutex_unlock(&ns->lock);
    return n;
}

static void good_still_works_(mdg_conn *c, int line)
{
    static int64_t next = 1000;
    mdg_params *p = mdg_params_new();
    mdg_msg *r = NULL;
    int64_t i = -1, want = ++next;
    mdg_params_set_int(p, "i", want);
    int rc = mdg_conn_call(c, "echo", p, NULL, 0, 5000, &r);
    bool ok = rc == 0 && mdg_params_get_int(mdg_msg_params(r), "i", &i) == 0 && i == want;
    t_checks++;
    if (!ok) {
        t_failed++;
        fprintf(stderr, "test_bad_input.c:%d: the good client was disturbed: rc %d (%s), i %lld\n",
                line, rc, mdg_last_error(), (long long)i);
    }
    mdg_msg_destroy(&r);
}
#define GOOD_STILL_WORKS(c) good_still_works_(c, __LINE__)

/* ------------------------------------------------------------- the cases */

/* Refused by the command table: reply with corr, or notice with corr 0. */
static void test_table_refusals(raw *r, mdg_conn *good)
{
    t_clear_log();
    raw_cmd(r, "nope", ++r->corr, NULL);
    EXPECT_ERROR(r, r->corr, "nope", "unknown command 'nope'", "refused: unknown command 'nope'");
    RAW_STILL_WORKS(r);
    GOOD_STILL_WORKS(good);

    t_clear_log();
    raw_cmd(r, "nope", 0, NULL);
    EXPECT_ERROR(r, 0, "nope", "unknown command 'nope'", "refused");
    RAW_STILL_WORKS(r);

    t_clear_log();
    raw_cmd(r, "", ++r->corr, NULL);
    EXPECT_ERROR(r, r->corr, "", "unknown command ''", "refused");
    RAW_STILL_WORKS(r);

    t_clear_log();
    int before = atomic_load(&handled);
    mdg_params *p = mdg_params_new();
    mdg_params_set_str(p, "other", "x");
    raw_cmd(r, "note", ++r->corr, p);
    EXPECT_ERROR(r, r->corr, "note", "command 'note' is missing required param 'note'", "refused");
    CHECK(atomic_load(&handled) == before); /* the handler never ran */
    t_clear_log();
    raw_cmd(r, "note", 0, NULL);
    EXPECT_ERROR(r, 0, "note", "missing required param 'note'", "missing required param");
    RAW_STILL_WORKS(r);
    GOOD_STILL_WORKS(good);

    t_clear_log();
    before = atomic_load(&handled);
    raw_cmd(r, "node_only", ++r->corr, NULL);
    EXPECT_ERROR(r, r->corr, "node_only", "command 'node_only' may only be sent by a node", "refused");
    CHECK(atomic_load(&handled) == before);
    RAW_STILL_WORKS(r);

    /* a fire-and-forget message to a command that needs a reply */
    t_clear_log();
    before = atomic_load(&handled);
    raw_cmd(r, "echo", 0, NULL);
    EXPECT_ERROR(r, 0, "echo", "command 'echo' needs a reply but was sent without one", "refused");
    CHECK(atomic_load(&handled) == before);
    RAW_STILL_WORKS(r);
    GOOD_STILL_WORKS(good);
}

/* The same refusals seen by an mdg_conn user: errors as values, notices
 * through the error handler. */
static void test_table_refusals_conn(mdg_conn *good, notices *ns)
{
    mdg_msg *r = NULL;
    CHECK_RC(mdg_conn_call(good, "nope", NULL, NULL, 0, 5000, &r), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "unknown command 'nope'") != NULL);
    CHECK_RC(mdg_conn_call(good, "note", NULL, NULL, 0, 5000, &r), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "missing required param 'note'") != NULL);
    CHECK_RC(mdg_conn_call(good, "node_only", NULL, NULL, 0, 5000, &r), MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "may only be sent by a node") != NULL);
    CHECK(r == NULL);

    int before = notice_count(ns);
    CHECK_RC(mdg_conn_send(good, "echo", NULL, NULL, 0), 0);
    WAIT_FOR(notice_count(ns) > before, 5000);
    CHECK(notice_count(ns) == before + 1);
    pthread_mutex_lock(&ns->lock);
    CHECK(strcmp(ns->command, "echo") == 0);
    CHECK(strstr(ns->text, "needs a reply but was sent without one") != NULL);
    pthread_mutex_unlock(&ns->lock);

    before = notice_count(ns);
    CHECK_RC(mdg_conn_send(good, "nope", NULL, NULL, 0), 0);
    WAIT_FOR(notice_count(ns) > before, 5000);
    pthread_mutex_lock(&ns->lock);
    CHECK(ns->n == before + 1 && strcmp(ns->command, "nope") == 0 &&
          strstr(ns->text, "unknown command 'nope'") != NULL);
    pthread_mutex_unlock(&ns->lock);
    GOOD_STILL_WORKS(good);
}

/* Params frames that are not a params map. */
static void test_bad_params(raw *r, mdg_conn *good)
{
    static const struct {
        const char *what;
        uint8_t bytes[16];
        size_t len;
        const char *text;
    } cases[] = {
        {"an array", {0x82, 0x01, 0x02}, 3, "params must be a map"},
        {"an int", {0x18, 42}, 2, "params must be a map"},
        {"a string", {0x62, '{', '}'}, 3, "params must be a map"},
        {"an int key", {0xa1, 0x01, 0x02}, 3, "keys must be text"},
        {"truncated", {0xa2, 0x61, 'a', 0x01}, 4, "truncated"},
        {"garbage", {0xff, 0xfe, 0xfd}, 3, "CBOR"},
        {"reserved bytes", {0xa1, 0x61, 'a', 0x1c}, 4, "malformed"},
        {"trailing bytes", {0xa0, 0x00}, 2, "trailing"},
        {"a huge declared length", {0x9b, 0x10, 0, 0, 0, 0, 0, 0, 0, 1}, 10, "declared length"},
        {"an indefinite string", {0xa1, 0x61, 'a', 0x7f, 0xff}, 5, "indefinite"},
        {"duplicate keys", {0xa2, 0x61, 'a', 1, 0x61, 'a', 2}, 7, "duplicate params key 'a'"},
        {"empty", {0}, 0, "params after the header"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        t_clear_log();
        int before = atomic_load(&handled);
        raw_cmd_bytes(r, "echo", ++r->corr, cases[k].bytes, cases[k].len);
        fprintf(stderr, "  params: %s\n", cases[k].what);
        EXPECT_ERROR(r, r->corr, "echo", cases[k].text, cases[k].text);
        CHECK(atomic_load(&handled) == before);
    }
    /* deeper than the limit */
    uint8_t deep[MDG_MAX_DEPTH + 4];
    size_t n = 0;
    deep[n++] = 0xa1;
    deep[n++] = 0x61;
    deep[n++] = 'd';
    for (int i = 0; i < MDG_MAX_DEPTH; i++)
        deep[n++] = 0x81;
    deep[n++] = 0x00;
    t_clear_log();
    raw_cmd_bytes(r, "echo", ++r->corr, deep, n);
    EXPECT_ERROR(r, r->corr, "echo", "nested too deeply", "nested too deeply");
    /* a map of a few bytes per item: decoding would cost ~70 times the
     * frame in memory, so the count of items is bounded before decoding */
    size_t many = MDG_MAX_ITEMS + 1, blen = 0;
    uint8_t *bomb = malloc(many + 16);
    bomb[blen++] = 0xa1;
    bomb[blen++] = 0x61;
    bomb[blen++] = 'a';
    bomb[blen++] = 0x9a; /* an array of (4-byte length) items */
    bomb[blen++] = (uint8_t)(many >> 24);
    bomb[blen++] = (uint8_t)(many >> 16);
    bomb[blen++] = (uint8_t)(many >> 8);
    bomb[blen++] = (uint8_t)many;
    memset(bomb + blen, 0x00, many);
    blen += many;
    t_clear_log();
    raw_cmd_bytes(r, "echo", ++r->corr, bomb, blen);
    EXPECT_ERROR(r, r->corr, "echo", "more than 262144 CBOR items", "more than 262144 CBOR items");
    free(bomb);
    /* a refused fire-and-forget message still tells its sender */
    t_clear_log();
    raw_cmd_bytes(r, "note", 0, "\x82\x01\x02", 3);
    EXPECT_ERROR(r, 0, "note", "params must be a map", "refused");
    RAW_STILL_WORKS(r);
    GOOD_STILL_WORKS(good);
}

/* Headers that cannot be read (the start of a head frame): the broker
 * cannot know the corr, so the sender gets a notice (corr 0). */
static void test_bad_headers(raw *r, mdg_conn *good)
{
    static const struct {
        const char *what;
        const char *bytes;
        size_t len;
        const char *text;
    } cases[] = {
        {"not CBOR", "hello, broker", 13, "bad header"},
        {"empty", "", 0, "not valid CBOR"},
        {"a string for seq", "\x87\x02\x03\x61x\x00\x01\x64\x65\x63\x68\x6f\x00", 13, "is a string"},
        {"an int for the command", "\x87\x02\x03\x01\x00\x01\x05\x00", 8, "must be a text string"},
        {"a negative seq", "\x87\x02\x03\x20\x00\x01\x64\x65\x63\x68\x6f\x00", 12, "wrong type"},
        {"6 fields", "\x86\x02\x03\x01\x00\x01\x64\x65\x63\x68\x6f", 11, "array of 7"},
        {"version 3", "\x87\x03\x03\x01\x00\x01\x64\x65\x63\x68\x6f\x00", 12, "unsupported protocol version"},
        {"kind 9", "\x87\x02\x09\x01\x00\x01\x64\x65\x63\x68\x6f\x00", 12, "unknown message kind"},
        {"a map", "\xa0", 1, "bad header"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) { /* a head frame of these bytes alone */
        t_clear_log();
        const void *d[] = {cases[k].bytes};
        size_t l[] = {cases[k].len};
        raw_frames(r, 1, d, l);
        fprintf(stderr, "  header: %s\n", cases[k].what);
        EXPECT_ERROR(r, 0, NULL, cases[k].text, cases[k].text);
    }
    /* a command name over the limit (255 bytes): 300 */
    uint8_t big[9 + 300 + 1] = {0x87, 0x02, 0x03, 0x01, 0x00, 0x01, 0x79, 0x01, 0x2c};
    memset(big + 9, 'a', 300);
    big[9 + 300] = 0x00;
    const void *d[] = {big, "\xa0"};
    size_t l[] = {sizeof big, 1};
    t_clear_log();
    raw_frames(r, 2, d, l);
    EXPECT_ERROR(r, 0, NULL, "command name too long", "command name too long");
    /* a header decoded, its params missing from the head frame: answered
     * as the header says (test_frames) */
    RAW_STILL_WORKS(r);
    GOOD_STILL_WORKS(good);
}

/* Wrong numbers of frames. */
static void test_frames(raw *r, mdg_conn *good, const mdg_broker *b, const mdg_keys *bkeys)
{
    uint8_t hb[MDG_MAX_HEADER];

    /* a head frame with only a header: no params */
    t_clear_log();
    size_t hl = make_header(hb, MDG_K_CMD, ++r->seq, ++r->corr, "echo");
    const void *d1[] = {hb};
    size_t l1[] = {hl};
    raw_frames(r, 1, d1, l1);
    EXPECT_ERROR(r, r->corr, "echo", "its params after the header", "refused");
    RAW_STILL_WORKS(r);

    /* header, params, bulk, and one frame too many. A raw client of its
     * own, so that whether the broker counts the seq does not matter. */
    raw x;
    raw_open(&x, b, bkeys);
    raw_hello(&x);
    t_clear_log();
    hl = make_header(hb, MDG_K_CMD, ++x.seq, ++x.corr, "echo");
    const void *d4[] = {hb, "\xa0", "bulk", "extra"};
    size_t l4[] = {hl, 1, 4, 5};
    raw_frames(&x, 4, d4, l4);
    EXPECT_ERROR(&x, x.corr, "echo", "a head frame (header and params) and at most one bulk frame",
                 "too many frames");
    /* many frames more: the broker keeps only the first few */
    t_clear_log();
    const void *d9[] = {hb, "\xa0", "1", "2", "3", "4", "5", "6", "7"};
    size_t l9[] = {hl, 1, 1, 1, 1, 1, 1, 1, 1};
    raw_frames(&x, 9, d9, l9);
    EXPECT_ERROR(&x, x.corr, "echo", "at most one bulk frame", "too many frames");
    raw_close(&x);
    RAW_STILL_WORKS(r);
    GOOD_STILL_WORKS(good);
}

/* A stand-in broker: a raw CURVE ROUTER with the secret key of fk, on a
 * free loopback port (returned), that the test drives frame by frame. */
static int stand_in_broker(void *ctx, const mdg_keys *fk, void **rt)
{
    int one = 1, linger = 0;
    char ep[64];
    size_t eplen = sizeof ep;
    *rt = zmq_socket(ctx, ZMQ_ROUTER);
    if (!*rt || zmq_setsockopt(*rt, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(*rt, ZMQ_CURVE_SECRETKEY, mdg_keys_secret(fk), MDG_KEY_BYTES) ||
        zmq_setsockopt(*rt, ZMQ_LINGER, &linger, sizeof linger) || zmq_bind(*rt, "tcp://127.0.0.1:*") ||
        zmq_getsockopt(*rt, ZMQ_LAST_ENDPOINT, ep, &eplen)) {
        fprintf(stderr, "cannot make the stand-in broker: %s\n", zmq_strerror(errno));
        exit(2);
    }
    return atoi(strrchr(ep, ':') + 1);
}

/* Native protocol version 1 (an older libmessidge) on either side: each
 * side is told why, in words, instead of waiting or guessing. */
static void test_version_1(const mdg_broker *b, const mdg_keys *bkeys)
{
    /* an older client's hello, [header, params] in two frames: the broker
     * answers with a goodbye in that same framing, with the reason */
    raw x;
    raw_open(&x, b, bkeys);
    static const uint8_t hello_v1[] = {0x87, 1, 1, 0, 0, 0, 0x60, 0}, bye_v1[] = {0x87, 1, 6, 0, 0, 0, 0x60, 0};
    t_clear_log();
    zmq_send(x.sock, hello_v1, sizeof hello_v1, ZMQ_SNDMORE);
    zmq_send(x.sock, "\xa0", 1, 0);
    zmq_pollitem_t it = {.socket = x.sock, .events = ZMQ_POLLIN};
    mdg_frames f = {0};
    mdg_params *p = NULL;
    const char *reason = "";
    bool got = zmq_poll(&it, 1, 5000) == 1 && mdg_frames_recv(x.sock, &f) == 0 && f.n == 2 &&
               zmq_msg_size(&f.part[0]) == sizeof bye_v1 && memcmp(zmq_msg_data(&f.part[0]), bye_v1, sizeof bye_v1) == 0 &&
               mdg_params_decode(zmq_msg_data(&f.part[1]), zmq_msg_size(&f.part[1]), &p) == 0 &&
               mdg_params_get_str(p, "reason", &reason) == 0;
    printf("a version 1 client's hello: goodbye in its own framing, \"%s\"\n", reason);
    CHECK(got && strstr(reason, "version 2") != NULL);
    CHECK(t_logged("protocol version 1"));
    mdg_params_destroy(&p);
    if (f.n)
        mdg_frames_close(&f);
    raw_close(&x);

    /* a client of this version at an older broker, which answers its hello
     * with an error notice it frames [header, params]: the client fails at
     * once with the reason, it does not wait for a welcome */
    mdg_keys *fk = NULL, *ck = NULL;
    mdg_keys_new(&fk);
    mdg_keys_new(&ck);
    void *ctx = zmq_ctx_new(), *rt = NULL;
    int port = stand_in_broker(ctx, fk, &rt);
    mdg_conn *c = NULL;
    mdg_conn_options o = {.port = port};
    CHECK_RC(mdg_conn_new_with_keys(&c, "127.0.0.1", mdg_keys_public(fk), ck, &o), 0);
    CHECK_RC(mdg_conn_start(c), 0);
    it.socket = rt;
    got = zmq_poll(&it, 1, 5000) == 1 && mdg_frames_recv(rt, &f) == 0 && f.n >= 2;
    CHECK(got);
    if (got) {
        static const uint8_t error_v1[] = {0x87, 1, 5, 0, 0, 0, 0x60, 0}; /* [1, ERROR, 0, 0, 0, "", 0] */
        zmq_msg_t pm;
        mdg_params *e = mdg_params_new();
        mdg_params_set_str(e, "error", "bad header: trailing bytes after the header");
        mdg_params_set_str(e, "command", "");
        mdg_params_encode(e, &pm);
        mdg_params_destroy(&e);
        zmq_msg_send(&f.part[0], rt, ZMQ_SNDMORE); /* its routing id */
        zmq_send(rt, error_v1, sizeof error_v1, ZMQ_SNDMORE);
        zmq_msg_send(&pm, rt, 0);
        mdg_frames_close(&f);
    }
    int64_t t0 = mdg_now_ms();
    CHECK_RC(mdg_conn_wait_until_ready(c, 10000), MDG_EPROTO);
    printf("this client at a version 1 broker: failed after %lld ms, \"%s\"\n", (long long)(mdg_now_ms() - t0),
           mdg_last_error());
    CHECK(strstr(mdg_last_error(), "version 1") != NULL);
    CHECK(mdg_now_ms() - t0 < 5000);
    mdg_conn_destroy(&c);
    zmq_close(rt);
    zmq_ctx_term(ctx);
    mdg_keys_destroy(&fk);
    mdg_keys_destroy(&ck);
}

/* n echo commands, numbered from r's next seq, in one head frame (and a
 * bulk frame after it when bulk). Returns the first one's corr. */
static uint64_t raw_batch(raw *r, int n, bool bulk)
{
    static uint8_t buf[MDG_MAX_BATCH * 2 * MDG_HEADER_BOUND(4) + 64];
    static const uint8_t params[] = {0xa1, 0x61, 'i', 0x07}; /* {"i": 7} */
    size_t len = 0;
    uint64_t first = r->corr + 1;
    for (int k = 0; k < n; k++) {
        mdg_header h = {.kind = MDG_K_CMD, .seq = ++r->seq, .corr = ++r->corr};
        mdg_header_set_command(&h, "echo");
        len += mdg_wire_put_head(buf + len, sizeof buf - len, &h, k + 1 < n, params, sizeof params);
    }
    zmq_send(r->sock, buf, len, bulk ? ZMQ_SNDMORE : 0);
    if (bulk)
        zmq_send(r->sock, "bulk", 4, 0);
    return first;
}

/* The replies to n echo commands from corr on, in order. */
static int replies_in_order(raw *r, uint64_t corr, int n)
{
    int ok = 0;
    for (int k = 0; k < n; k++) {
        mdg_header h;
        mdg_params *p = NULL;
        int64_t i = -1;
        if (raw_recv(r, &h, &p, 5000) != 0)
            break;
        ok += h.kind == MDG_K_REPLY && h.corr == corr + (uint64_t)k && h.seq == r->rx_seq + 1 &&
              mdg_params_get_int(p, "i", &i) == 0 && i == 7;
        r->rx_seq = h.seq;
        mdg_params_destroy(&p);
    }
    return ok;
}

/* Several messages in one head frame (MDG_F_NEXT): each taken in order;
 * a bulk frame after more than one, or more than MDG_MAX_BATCH, refused
 * with a clear error, and the sender's session goes on. */
static void test_batched(raw *r, mdg_conn *good)
{
    t_clear_log();
    uint64_t corr = raw_batch(r, 3, false);
    CHECK(replies_in_order(r, corr, 3) == 3);

    corr = raw_batch(r, 2, true);
    EXPECT_ERROR(r, corr, "echo", "a bulk frame follows a head frame of one message only", "too many frames");
    r->seq -= 2; /* neither was taken: their numbers come again */
    RAW_STILL_WORKS(r);

    t_clear_log();
    corr = raw_batch(r, MDG_MAX_BATCH + 1, false);
    int answered = replies_in_order(r, corr, MDG_MAX_BATCH);
    printf("a head frame of %d messages: %d answered in order, then: ", MDG_MAX_BATCH + 1, answered);
    CHECK(answered == MDG_MAX_BATCH);
    EXPECT_ERROR(r, corr + MDG_MAX_BATCH, "echo", "more than " MDG_STR(MDG_MAX_BATCH) " messages in one head frame",
                 "too many frames");
    printf("refused\n");
    r->seq -= 1; /* the last was not taken */
    RAW_STILL_WORKS(r);
    GOOD_STILL_WORKS(good);
}

/* The most replies the broker put in one head frame, reading n replies
 * straight off the socket. -1 when fewer came. */
static int largest_reply_frame(raw *r, int n)
{
    t_wire_reader_close(&r->rd);
    int seen = 0, largest = 0;
    while (seen < n) {
        zmq_pollitem_t it = {.socket = r->sock, .events = ZMQ_POLLIN};
        mdg_frames f;
        if (zmq_poll(&it, 1, 5000) != 1 || mdg_frames_recv(r->sock, &f) != 0)
            break;
        mdg_inbound_cursor at = {0};
        mdg_inbound in;
        int in_frame = 0;
        while (mdg_inbound_next(&in, &f, 0, &at) == 0) {
            if (in.h.kind == MDG_K_REPLY) {
                in_frame++;
                r->rx_seq = in.h.seq;
            }
            mdg_inbound_close(&in);
        }
        mdg_inbound_close(&in);
        mdg_frames_close(&f);
        seen += in_frame;
        if (in_frame > largest)
            largest = in_frame;
    }
    return seen == n ? largest : -1;
}

/* A head frame holds what the receiver said it takes (max_batch in its
 * hello), and no more than MDG_PEER_BATCH for a client that did not say
 * (an older libmessidge, which refuses the rest of a longer frame). */
static void test_batch_size(const mdg_broker *b, const mdg_keys *bkeys)
{
    for (int says = 0; says < 2; says++) {
        raw x;
        raw_open(&x, b, bkeys);
        mdg_params *hp = NULL;
        if (says) {
            hp = mdg_params_new();
            mdg_params_set_int(hp, "max_batch", MDG_MAX_BATCH);
        }
        raw_hello_with(&x, "user", hp);
        RAW_STILL_WORKS(&x);
        raw_batch(&x, 100, false);
        int largest = largest_reply_frame(&x, 100);
        printf("100 calls in one frame from a client that %s: at most %d replies a frame\n",
               says ? "takes " MDG_STR(MDG_MAX_BATCH) : "did not say", largest);
        CHECK(says ? largest > MDG_PEER_BATCH : largest > 0 && largest <= MDG_PEER_BATCH);
        RAW_STILL_WORKS(&x);
        raw_close(&x);
    }
}

/* A command before HELLO: "no session". */
static void test_no_session(const mdg_broker *b, const mdg_keys *bkeys, mdg_conn *good)
{
    raw x;
    raw_open(&x, b, bkeys);
    t_clear_log();
    int before = atomic_load(&handled);
    raw_cmd(&x, "echo", 7, NULL);
    /* unnumbered (there is no session to number it in): a notice, corr 0 */
    EXPECT_ERROR(&x, 0, "echo", "no session", "without a session");
    CHECK(atomic_load(&handled) == before);
    /* a notice when there is no corr */
    raw_cmd(&x, "note", 0, NULL);
    EXPECT_ERROR(&x, 0, "note", "no session", "without a session");
    /* each one answered, but the log says it once per link */
    for (int i = 0; i < 20; i++) {
        raw_cmd(&x, "note", 0, NULL);
        EXPECT_ERROR(&x, 0, "note", "no session", "without a session");
    }
    CHECK(t_log_count("without a session") == 1);
    /* after a hello the same client works */
    raw_hello(&x);
    x.seq = 0; /* a new session counts from 1 */
    RAW_STILL_WORKS(&x);
    raw_close(&x);
    GOOD_STILL_WORKS(good);
}

/* Forged identity params: the handler sees what the broker vouches for. */
static void test_forgery(raw *r, mdg_conn *good, const mdg_keys *good_keys)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_bytes(p, "user", mdg_keys_public(good_keys), MDG_KEY_BYTES); /* someone else */
    mdg_params_set_str(p, "session", "forged");
    mdg_params_set_bytes(p, "node", mdg_keys_public(good_keys), MDG_KEY_BYTES);
    mdg_params_set_int(p, "i", 5);
    t_clear_log();
    raw_cmd(r, "echo", ++r->corr, p);
    mdg_header h;
    mdg_params *rp = NULL;
    const uint8_t *u = NULL, *s = NULL;
    size_t ulen = 0, slen = 0;
    bool node_seen = true;
    CHECK_RC(raw_recv(r, &h, &rp, 5000), 0);
    r->rx_seq = h.seq;
    CHECK(h.kind == MDG_K_REPLY && h.corr == r->corr);
    CHECK_RC(mdg_params_get_bytes(rp, "user", &u, &ulen), 0);
    CHECK(ulen == MDG_KEY_BYTES && u && memcmp(u, mdg_keys_public(r->keys), MDG_KEY_BYTES) == 0);
    CHECK_RC(mdg_params_get_bytes(rp, "session", &s, &slen), 0);
    CHECK(slen == r->session_len && s && memcmp(s, r->session, slen) == 0);
    CHECK_RC(mdg_params_get_bool(rp, "node_seen", &node_seen), 0);
    CHECK(!node_seen); /* only the broker says who is a node */
    mdg_params_destroy(&rp);
    CHECK(t_logged("'echo' from user") && t_logged("its own 'node' param removed"));
    CHECK(t_logged("its own 'user' param removed") && t_logged("its own 'session' param removed"));

    /* a second "user" key behind a first one is refused outright */
    static const uint8_t dup[] = {0xa2, 0x64, 'u', 's', 'e', 'r', 0x01, 0x64, 'u', 's', 'e', 'r', 0x02};
    t_clear_log();
    raw_cmd_bytes(r, "echo", ++r->corr, dup, sizeof dup);
    EXPECT_ERROR(r, r->corr, "echo", "duplicate params key 'user'", "refused");
    RAW_STILL_WORKS(r);
    GOOD_STILL_WORKS(good);
}

/* A node's command to the broker naming a user and that user's session:
 * the handler sees only what the broker stamps for a node, its own `node`,
 * never the forged `user` and `session` (with them the README's write_note
 * would file a note under the victim's name). */
static void test_node_forgery(mdg_broker *b, const mdg_keys *bkeys, mdg_conn *good, const mdg_keys *good_keys)
{
    mdg_keys *nkeys = NULL, *other = NULL;
    if (mdg_keys_new(&nkeys) || mdg_keys_new(&other) ||
        mdg_broker_allow(b, mdg_keys_public(nkeys), MDG_ROLE_NODE) != 0) {
        fprintf(stderr, "cannot admit a node key\n");
        exit(2);
    }
    raw n;
    raw_open_as(&n, b, bkeys, nkeys, NULL);
    raw_hello_as(&n, "node");
    size_t sid_len = 0;
    const uint8_t *sid = mdg_conn_session_id(good, &sid_len);
    mdg_params *p = mdg_params_new();
    mdg_params_set_bytes(p, "user", mdg_keys_public(good_keys), MDG_KEY_BYTES); /* the victim */
    mdg_params_set_bytes(p, "session", sid, sid_len);                            /* its session */
    mdg_params_set_bytes(p, "node", mdg_keys_public(other), MDG_KEY_BYTES);      /* another node */
    mdg_params_set_int(p, "i", 6);
    t_clear_log();
    int before = atomic_load(&handled);
    raw_cmd(&n, "echo", ++n.corr, p);
    mdg_header h;
    mdg_params *rp = NULL;
    const uint8_t *v = NULL;
    size_t vlen = 0;
    int64_t i = -1;
    CHECK_RC(raw_recv(&n, &h, &rp, 5000), 0);
    CHECK(h.kind == MDG_K_REPLY && h.corr == n.corr);
    CHECK(atomic_load(&handled) == before + 1);
    CHECK(mdg_params_get_int(rp, "i", &i) == 0 && i == 6);
    CHECK(!mdg_params_has(rp, "user"));    /* not the victim's, not any */
    CHECK(!mdg_params_has(rp, "session")); /* nodes have no user session */
    CHECK_RC(mdg_params_get_bytes(rp, "node", &v, &vlen), 0);
    CHECK(vlen == MDG_KEY_BYTES && v && memcmp(v, mdg_keys_public(nkeys), MDG_KEY_BYTES) == 0);
    mdg_params_destroy(&rp);
    CHECK(t_logged("'echo' from node") && t_logged("its own 'user' param removed"));
    CHECK(t_logged("its own 'session' param removed") && t_logged("its own 'node' param removed"));
    raw_close(&n);
    mdg_keys_destroy(&nkeys);
    mdg_keys_destroy(&other);
    GOOD_STILL_WORKS(good);
}

/* A numbered kind sent without its number (seq 0) would skip duplicate
 * detection: the broker refuses it, each time, and never runs its handler. */
static void test_unnumbered(const mdg_broker *b, const mdg_keys *bkeys, mdg_conn *good)
{
    raw x;
    raw_open(&x, b, bkeys);
    raw_hello(&x);
    int before = atomic_load(&handled);
    uint8_t hb[MDG_MAX_HEADER];
    zmq_msg_t pm;
    mdg_params *p = mdg_params_new();
    mdg_params_set_str(p, "note", "once");
    mdg_params_encode(p, &pm);
    mdg_params_destroy(&p);
    mdg_header h;
    mdg_params *rp = NULL;
    for (int k = 1; k <= 5; k++) { /* numbered: each runs once and is answered */
        size_t hl = make_header(hb, MDG_K_CMD, ++x.seq, ++x.corr, "note");
        const void *d[] = {hb, zmq_msg_data(&pm)};
        size_t l[] = {hl, zmq_msg_size(&pm)};
        raw_frames(&x, 2, d, l);
        CHECK_RC(raw_recv(&x, &h, &rp, 5000), 0);
        CHECK(h.kind == MDG_K_REPLY && h.corr == x.corr);
        x.rx_seq = h.seq;
        mdg_params_destroy(&rp);
    }
    CHECK(atomic_load(&handled) == before + 5);
    /* the last one again three times, with seq 0: refused each time */
    t_clear_log();
    size_t hl = make_header(hb, MDG_K_CMD, 0, x.corr, "note");
    for (int k = 0; k < 3; k++) {
        const void *d[] = {hb, zmq_msg_data(&pm)};
        size_t l[] = {hl, zmq_msg_size(&pm)};
        raw_frames(&x, 2, d, l);
        EXPECT_ERROR(&x, x.corr, "note", "unnumbered command refused: commands, replies and errors are numbered from 1",
                     "unnumbered command refused");
    }
    zmq_msg_close(&pm);
    CHECK(atomic_load(&handled) == before + 5); /* the handler ran 5 times, not 8 */
    /* a reply or error without its number: a notice (its corr is not ours) */
    t_clear_log();
    hl = make_header(hb, MDG_K_REPLY, 0, 3, "");
    const void *d[] = {hb, "\xa0"};
    size_t l[] = {hl, 1};
    raw_frames(&x, 2, d, l);
    EXPECT_ERROR(&x, 0, "", "unnumbered reply refused", "unnumbered reply refused");
    /* nothing was counted: the next numbered message is simply the next */
    RAW_STILL_WORKS(&x);
    raw_close(&x);
    GOOD_STILL_WORKS(good);
}

/* The client's side of the same rule, against a stand-in broker (a raw
 * CURVE ROUTER) that sends what the real one never does: the only
 * unnumbered message of a numbered kind a client takes is an error notice
 * (corr 0); commands, replies and errors to a call without a number are
 * dropped and logged, and never reach a handler or a call. */
static atomic_int pings;

static void h_ping(mdg_msg *m, void *arg)
{
    (void)m;
    (void)arg;
    atomic_fetch_add(&pings, 1);
}

static void fake_send(void *rt, const zmq_msg_t *rid, int kind, uint64_t seq, uint64_t corr, const char *command,
                      mdg_params *p)
{
    mdg_header h = {.kind = (uint8_t)kind, .seq = seq, .corr = corr};
    zmq_msg_t pm;
    mdg_header_set_command(&h, command);
    mdg_params_encode(p, &pm);
    mdg_params_destroy(&p);
    CHECK_RC(mdg_wire_send(rt, zmq_msg_data((zmq_msg_t *)rid), zmq_msg_size((zmq_msg_t *)rid), &h, &pm, NULL), 0);
    zmq_msg_close(&pm);
}

static mdg_params *error_params(const char *text)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_str(p, "error", text);
    mdg_params_set_str(p, "command", "ping");
    return p;
}

static void test_client_unnumbered(void)
{
    static const mdg_cmd client_cmds[] = {{"ping", h_ping, NULL, 0}, MDG_CMD_END};
    mdg_keys *fk = NULL, *ck = NULL;
    mdg_keys_new(&fk);
    mdg_keys_new(&ck);
    void *ctx = zmq_ctx_new(), *rt = NULL;
    int port = stand_in_broker(ctx, fk, &rt);
    notices ns = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mdg_conn *c = NULL;
    mdg_conn_options o = {.port = port};
    CHECK_RC(mdg_conn_new_with_keys(&c, "127.0.0.1", mdg_keys_public(fk), ck, &o), 0);
    mdg_conn_register_commands(c, client_cmds, NULL);
    mdg_conn_set_error_handler(c, on_notice, &ns);
    CHECK_RC(mdg_conn_start(c), 0);

    /* its hello, and our welcome */
    zmq_pollitem_t it = {.socket = rt, .events = ZMQ_POLLIN};
    mdg_frames f = {0};
    mdg_header h = {0};
    size_t at = 0, off = 0, len = 0;
    bool got = zmq_poll(&it, 1, 5000) == 1 && mdg_frames_recv(rt, &f) == 0 && f.n >= 2 &&
               mdg_wire_read_head(zmq_msg_data(&f.part[1]), zmq_msg_size(&f.part[1]), &at, &h, &off, &len) == 0 &&
               h.kind == MDG_K_HELLO;
    CHECK(got);
    if (!got) {
        fprintf(stderr, "the client said no hello to the stand-in broker\n");
        exit(1);
    }
    zmq_msg_t rid;
    zmq_msg_init(&rid);
    zmq_msg_copy(&rid, &f.part[0]);
    mdg_frames_close(&f);
    uint8_t sid[16] = {1, 2, 3};
    mdg_params *w = mdg_params_new();
    mdg_params_set_bytes(w, "session", sid, sizeof sid);
    mdg_params_set_str(w, "role", "user");
    mdg_params_set_bool(w, "resumed", false);
    mdg_params_set_int(w, "ack", 0);
    fake_send(rt, &rid, MDG_K_WELCOME, 0, 0, "", w);
    CHECK_RC(mdg_conn_wait_until_ready(c, 5000), 0);

    t_clear_log();
    fake_send(rt, &rid, MDG_K_CMD, 0, 0, "ping", NULL);
    fake_send(rt, &rid, MDG_K_CMD, 0, 9, "ping", NULL);
    fake_send(rt, &rid, MDG_K_REPLY, 0, 1, "", NULL);
    fake_send(rt, &rid, MDG_K_ERROR, 0, 1, "", error_params("an error to call 1, unnumbered"));
    fake_send(rt, &rid, MDG_K_ERROR, 0, 0, "", error_params("an unnumbered notice"));
    fake_send(rt, &rid, MDG_K_CMD, 1, 0, "ping", NULL);
    WAIT_FOR(atomic_load(&pings) == 1 && notice_count(&ns) == 1, 5000);
    CHECK(atomic_load(&pings) == 1); /* the numbered ping only */
    CHECK(notice_count(&ns) == 1);
    pthread_mutex_lock(&ns.lock);
    CHECK(strcmp(ns.text, "an unnumbered notice") == 0);
    pthread_mutex_unlock(&ns.lock);
    CHECK(t_logged("unnumbered command from the broker dropped: only error notices (corr 0) may have seq 0"));
    CHECK(t_logged("unnumbered reply from the broker dropped"));
    CHECK(t_logged("unnumbered error from the broker dropped"));
    printf("client: 4 unnumbered commands, replies and errors dropped, the unnumbered notice and the numbered ping taken\n");

    zmq_msg_close(&rid);
    mdg_conn_destroy(&c);
    zmq_close(rt);
    zmq_ctx_term(ctx);
    mdg_keys_destroy(&fk);
    mdg_keys_destroy(&ck);
}

/* Routing ids can be chosen by clients: one taken up by another key after
 * the first key's link dropped must neither reach nor close the first
 * key's session, which its owner then resumes. */
static void test_routing_id_reuse(const mdg_broker *b, const mdg_keys *bkeys)
{
    raw a, other;
    mdg_keys *akeys = NULL;
    raw_open_as(&a, b, bkeys, NULL, "chosen-id");
    raw_hello(&a);
    uint8_t sid[64];
    size_t sid_len = a.session_len;
    memcpy(sid, a.session, sid_len);
    mdg_keys_from_raw(&akeys, mdg_keys_public(a.keys), mdg_keys_secret(a.keys));
    t_clear_log();
    raw_close(&a);
    WAIT_FOR(t_logged("link lost"), 3000);
    raw_open_as(&other, b, bkeys, NULL, "chosen-id");
    raw_hello(&other); /* a session of its own */
    CHECK(memcmp(other.session, sid, sid_len) != 0);
    CHECK(!t_logged("replaced by a new hello"));

    raw_open_as(&a, b, bkeys, akeys, NULL);
    mdg_params *hp = mdg_params_new();
    mdg_params_set_bytes(hp, "session", sid, sid_len);
    zmq_msg_t pm;
    mdg_params_encode(hp, &pm);
    mdg_params_destroy(&hp);
    uint8_t hb[MDG_MAX_HEADER];
    size_t hl = make_header(hb, MDG_K_HELLO, 0, 0, "");
    const void *d[] = {hb, zmq_msg_data(&pm)};
    size_t l[] = {hl, zmq_msg_size(&pm)};
    raw_frames(&a, 2, d, l);
    zmq_msg_close(&pm);
    mdg_header h;
    mdg_params *w = NULL;
    bool resumed = false;
    const uint8_t *got = NULL;
    size_t got_len = 0;
    CHECK_RC(raw_recv(&a, &h, &w, 5000), 0);
    CHECK(h.kind == MDG_K_WELCOME && mdg_params_get_bool(w, "resumed", &resumed) == 0 && resumed);
    CHECK(mdg_params_get_bytes(w, "session", &got, &got_len) == 0 && got_len == sid_len &&
          memcmp(got, sid, sid_len) == 0);
    mdg_params_destroy(&w);
    raw_close(&a);
    raw_close(&other);
    mdg_keys_destroy(&akeys);
}

int main(void)
{
    t_capture_log();
    mdg_keys *bkeys = NULL, *gkeys = NULL;
    mdg_broker *b = t_broker(&bkeys, cmds, NULL, NULL, true);

    notices ns = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mdg_conn *good = t_client(b, bkeys, &gkeys, NULL, NULL);
    CHECK_RC(mdg_conn_set_error_handler(good, on_notice, &ns), 0);
    CHECK_RC(mdg_conn_start(good), 0);
    CHECK_RC(mdg_conn_wait_until_ready(good, 5000), 0);

    raw r;
    raw_open(&r, b, bkeys);
    raw_hello(&r);
    RAW_STILL_WORKS(&r);
    GOOD_STILL_WORKS(good);

    test_table_refusals(&r, good);
    test_table_refusals_conn(good, &ns);
    test_bad_params(&r, good);
    test_bad_headers(&r, good);
    test_frames(&r, good, b, bkeys);
    test_batched(&r, good);
    test_batch_size(b, bkeys);
    test_no_session(b, bkeys, good);
    test_version_1(b, bkeys);
    test_forgery(&r, good, gkeys);
    test_node_forgery(b, bkeys, good, gkeys);
    test_unnumbered(b, bkeys, good);
    test_routing_id_reuse(b, bkeys);

    /* none of it reached the good client as a notice it did not cause */
    CHECK(notice_count(&ns) == 2);
    test_client_unnumbered();

    raw_close(&r);
    mdg_conn_destroy(&good);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&gkeys);
    return t_done("test_bad_input");
}
