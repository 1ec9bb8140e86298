/* test_metrics.c - the broker's /metrics and /healthz, scraped over HTTP
 * while traffic flows: the counters move by exactly what was done.
 *
 *   a user makes CALLS calls to the broker's "echo" (a thread) while the
 *   main thread scrapes: messages in{command} and out{reply} grow by
 *   CALLS, bytes in and out by at least CALLS * payload; REFUSED unknown
 *   commands count as refusals{command}; a key the broker does not know
 *   is a zap refusal{unknown_key}; a node that holds a call shows one
 *   node call in flight, then none once it answers; the sessions gauge
 *   shows the user and the node attached; /healthz says ok, and 503 once
 *   the broker stopped. A client behind a fault proxy: its link cut, it
 *   resumes (resumes 1); its link cut and new ones held back past the
 *   session's grace period, its hello names a session the broker no longer
 *   has (sessions lost 1). */
#include "faultproxy.h"
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

#define CALLS 200
#define REFUSED 3
#define PAYLOAD 100
#define WAIT_MS 10000

static int metrics_port;

/* GET path: the status, and the body into out. -1 when no answer. */
static int http_get(const char *path, char *out, size_t len)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)metrics_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char req[128];
    size_t n = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0), status = -1;
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int k = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
    if (write(fd, req, (size_t)k) != k) {
        close(fd);
        return -1;
    }
    for (ssize_t r; n + 1 < len && (r = read(fd, out + n, len - 1 - n)) > 0;)
        n += (size_t)r;
    out[n] = '\0';
    close(fd);
    if (sscanf(out, "HTTP/1.%*d %d", &status) != 1)
        return -1;
    char *body = strstr(out, "\r\n\r\n");
    if (body)
        memmove(out, body + 4, strlen(body + 4) + 1);
    return status;
}

/* The value of one sample ("name" or "name{labels}") in a scrape, or -1. */
static double sample(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL)
        if (strncmp(l, name, n) == 0 && l[n] == ' ')
            return atof(l + n + 1);
    return -1;
}

/* The user sessions gauge is attached, detached (from one scrape). */
static bool user_sessions(double attached, double detached)
{
    static char text[1 << 16];
    return http_get("/metrics", text, sizeof text) == 200 &&
           sample(text, "messidge_sessions{role=\"user\",state=\"attached\"}") == attached &&
           sample(text, "messidge_sessions{role=\"user\",state=\"detached\"}") == detached;
}

static double scrape(const char *name)
{
    static char text[1 << 16];
    if (http_get("/metrics", text, sizeof text) != 200)
        return -1;
    return sample(text, name);
}

/* ------------------------------------------------------------- the broker */

static void h_echo(mdg_msg *msg, void *arg)
{
    (void)arg;
    const char *s = "";
    mdg_params *r = mdg_params_new();
    mdg_params_get_str(mdg_msg_params(msg), "s", &s);
    mdg_params_set_str(r, "s", s);
    mdg_msg_reply(msg, r, NULL, 0);
}

static const mdg_cmd broker_commands[] = {
    {"echo", h_echo, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* ------------------------------------------------------ the node: holds */

static mdg_msg *_Atomic held_call;

static void h_hold(mdg_msg *msg, void *arg)
{
    (void)arg;
    atomic_store(&held_call, mdg_msg_keep(msg));
}

static const mdg_cmd node_commands[] = {
    {"hold", h_hold, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

static atomic_int held_answered;

static void on_held_reply(mdg_msg *r, void *arg)
{
    (void)r;
    (void)arg;
    atomic_store(&held_answered, 1);
}

/* ------------------------------------------------------- traffic thread */

static atomic_int calls_ok;

static void *traffic(void *arg)
{
    mdg_conn *c = arg;
    char payload[PAYLOAD + 1];
    memset(payload, 'x', PAYLOAD);
    payload[PAYLOAD] = '\0';
    for (int i = 0; i < CALLS; i++) {
        mdg_params *p = mdg_params_new();
        mdg_msg *reply = NULL;
        mdg_params_set_str(p, "s", payload);
        if (mdg_conn_call(c, "echo", p, NULL, 0, WAIT_MS, &reply) == 0)
            atomic_fetch_add(&calls_ok, 1);
        mdg_msg_destroy(&reply);
    }
    return NULL;
}

int main(void)
{
    static char body[1 << 16];
    mdg_keys *bkeys = NULL, *ukeys = NULL, *nkeys = NULL, *skeys = NULL, *rkeys = NULL;
    mdg_broker *b = NULL;
    /* a short grace, for the lost session below */
    mdg_broker_options o = {.bind_address = "127.0.0.1", .port = 0, .session_grace_ms = 300};
    mdg_metrics_server *ms = NULL;

    CHECK_RC(mdg_keys_new(&bkeys), 0);
    CHECK_RC(mdg_keys_new(&ukeys), 0);
    CHECK_RC(mdg_keys_new(&nkeys), 0);
    CHECK_RC(mdg_keys_new(&skeys), 0);
    CHECK_RC(mdg_keys_new(&rkeys), 0);
    CHECK_RC(mdg_broker_new(&b, bkeys, &o), 0);
    if (!b)
        return t_done("test_metrics");
    mdg_broker_set_commands(b, broker_commands, NULL);
    mdg_broker_allow(b, mdg_keys_public(ukeys), MDG_ROLE_USER);
    mdg_broker_allow(b, mdg_keys_public(nkeys), MDG_ROLE_NODE);
    mdg_broker_allow(b, mdg_keys_public(rkeys), MDG_ROLE_USER);
    CHECK(!mdg_broker_healthy(b)); /* not started */
    CHECK_RC(mdg_broker_start(b), 0);
    CHECK_RC(mdg_metrics_server_new(&ms, b, "127.0.0.1", 0), 0);
    metrics_port = mdg_metrics_server_port(ms);
    CHECK(metrics_port > 0);

    /* healthy once the loop thread runs (it may not have yet) */
    WAIT_FOR(http_get("/healthz", body, sizeof body) == 200, WAIT_MS);
    CHECK(http_get("/healthz", body, sizeof body) == 200 && strcmp(body, "ok\n") == 0);
    CHECK(http_get("/nothing", body, sizeof body) == 404);
    CHECK(http_get("/metrics", body, sizeof body) == 200);
    CHECK(strstr(body, "# TYPE messidge_messages_in_total counter") != NULL);
    CHECK(sample(body, "messidge_uptime_seconds") >= 0);
    CHECK(sample(body, "messidge_sessions{role=\"user\",state=\"attached\"}") == 0);
    double cmd_in0 = sample(body, "messidge_messages_in_total{kind=\"command\"}");
    double reply_out0 = sample(body, "messidge_messages_out_total{kind=\"reply\"}");
    double bytes_in0 = sample(body, "messidge_bytes_in_total{kind=\"command\"}");
    double bytes_out0 = sample(body, "messidge_bytes_out_total{kind=\"reply\"}");
    CHECK(cmd_in0 == 0 && reply_out0 == 0 && bytes_in0 == 0 && bytes_out0 == 0);

    /* ---- the user connects: a handshake and a session */
    mdg_conn_options co = {.port = mdg_broker_port(b)};
    mdg_conn *user = NULL, *node = NULL, *stranger = NULL;
    CHECK_RC(mdg_conn_new_with_keys(&user, "127.0.0.1", mdg_keys_public(bkeys), ukeys, &co), 0);
    CHECK_RC(mdg_conn_start(user), 0);
    CHECK_RC(mdg_conn_wait_until_ready(user, WAIT_MS), 0);
    CHECK(scrape("messidge_handshakes_total") == 1);
    CHECK(scrape("messidge_sessions_opened_total{role=\"user\"}") == 1);
    WAIT_FOR(scrape("messidge_sessions{role=\"user\",state=\"attached\"}") == 1, WAIT_MS);
    CHECK(scrape("messidge_sessions{role=\"user\",state=\"attached\"}") == 1);

    /* ---- traffic, scraped while it flows: the counters never go back */
    pthread_t th;
    CHECK(pthread_create(&th, NULL, traffic, user) == 0);
    double last = 0, seen_between = 0;
    for (int i = 0; i < 50; i++) {
        double v = scrape("messidge_messages_in_total{kind=\"command\"}");
        CHECK(v >= last);
        if (v > 0 && v < CALLS)
            seen_between = v;
        last = v;
    }
    pthread_join(th, NULL);
    CHECK(atomic_load(&calls_ok) == CALLS);
    if (!seen_between)
        fprintf(stderr, "(the scrapes did not fall inside the traffic this time)\n");
    CHECK(http_get("/metrics", body, sizeof body) == 200);
    CHECK(sample(body, "messidge_messages_in_total{kind=\"command\"}") - cmd_in0 == CALLS);
    CHECK(sample(body, "messidge_messages_out_total{kind=\"reply\"}") - reply_out0 == CALLS);
    CHECK(sample(body, "messidge_bytes_in_total{kind=\"command\"}") - bytes_in0 >= CALLS * PAYLOAD);
    CHECK(sample(body, "messidge_bytes_out_total{kind=\"reply\"}") - bytes_out0 >= CALLS * PAYLOAD);
    /* the resource offer went out as the session's one command */
    CHECK(sample(body, "messidge_messages_out_total{kind=\"command\"}") == 1);

    /* ---- refusals: unknown commands, and a key the broker does not know */
    for (int i = 0; i < REFUSED; i++) {
        mdg_msg *reply = NULL;
        CHECK_RC(mdg_conn_call(user, "nosuch", NULL, NULL, 0, WAIT_MS, &reply), MDG_EREMOTE);
        mdg_msg_destroy(&reply);
    }
    CHECK(scrape("messidge_refusals_total{reason=\"command\"}") == REFUSED);
    CHECK(scrape("messidge_messages_out_total{kind=\"error\"}") == REFUSED);
    CHECK_RC(mdg_conn_new_with_keys(&stranger, "127.0.0.1", mdg_keys_public(bkeys), skeys, &co), 0);
    CHECK_RC(mdg_conn_start(stranger), 0);
    CHECK_RC(mdg_conn_wait_until_ready(stranger, WAIT_MS), MDG_EAUTH);
    mdg_conn_destroy(&stranger);
    CHECK(scrape("messidge_zap_refusals_total{reason=\"unknown_key\"}") >= 1);
    CHECK(scrape("messidge_handshakes_total") == 1);

    /* ---- a node holds a call: one in flight, then none */
    CHECK_RC(mdg_conn_new_with_keys(&node, "127.0.0.1", mdg_keys_public(bkeys), nkeys, &co), 0);
    mdg_conn_register_commands(node, node_commands, NULL);
    CHECK_RC(mdg_conn_start(node), 0);
    CHECK_RC(mdg_conn_wait_until_ready(node, WAIT_MS), 0);
    WAIT_FOR(scrape("messidge_sessions{role=\"node\",state=\"attached\"}") == 1, WAIT_MS);
    CHECK(scrape("messidge_sessions{role=\"node\",state=\"attached\"}") == 1);
    mdg_params *p = mdg_params_new();
    mdg_params_set_bytes(p, "node", mdg_keys_public(nkeys), MDG_KEY_BYTES);
    CHECK_RC(mdg_conn_send_cb(user, "hold", p, NULL, 0, on_held_reply, NULL), 0);
    WAIT_FOR(atomic_load(&held_call) != NULL, WAIT_MS);
    WAIT_FOR(scrape("messidge_node_calls_in_flight") == 1, WAIT_MS);
    CHECK(scrape("messidge_node_calls_in_flight") == 1);
    mdg_msg *held = atomic_exchange(&held_call, NULL);
    if (held) {
        mdg_msg_reply(held, NULL, NULL, 0);
        mdg_msg_destroy(&held);
    }
    WAIT_FOR(atomic_load(&held_answered), WAIT_MS);
    WAIT_FOR(scrape("messidge_node_calls_in_flight") == 0, WAIT_MS);
    CHECK(scrape("messidge_node_calls_in_flight") == 0);

    /* ---- resumed, then lost: a client behind a proxy */
    CHECK(scrape("messidge_resumes_total") == 0 && scrape("messidge_sessions_lost_total") == 0);
    faultproxy *fp = fp_new(mdg_broker_port(b));
    mdg_conn_options ro = {.port = fp ? fp_port(fp) : 0, .reconnect_min_ms = 20, .reconnect_max_ms = 100};
    mdg_conn *roamer = NULL;
    CHECK_RC(mdg_conn_new_with_keys(&roamer, "127.0.0.1", mdg_keys_public(bkeys), rkeys, &ro), 0);
    CHECK_RC(mdg_conn_start(roamer), 0);
    CHECK_RC(mdg_conn_wait_until_ready(roamer, WAIT_MS), 0);
    fp_cut(fp);
    WAIT_FOR(scrape("messidge_resumes_total") == 1, WAIT_MS);
    CHECK(scrape("messidge_resumes_total") == 1);
    /* settled: the roamer's session attached again (one scrape for both) */
    WAIT_FOR(user_sessions(2, 0), WAIT_MS);
    CHECK(user_sessions(2, 0));
    /* cut again and let no new link through until the grace has passed:
     * the roamer's session is gone once only the first user's is left */
    fp_stall(fp, 1);
    fp_cut(fp);
    WAIT_FOR(user_sessions(1, 0), WAIT_MS);
    CHECK(user_sessions(1, 0));
    fp_stall(fp, 0);
    WAIT_FOR(scrape("messidge_sessions_lost_total") == 1, WAIT_MS);
    CHECK(scrape("messidge_sessions_lost_total") == 1);
    mdg_conn_disconnect(roamer);
    mdg_conn_destroy(&roamer);
    fp_destroy(&fp);

    /* ---- goodbye: no session left attached */
    mdg_conn_disconnect(node);
    mdg_conn_disconnect(user);
    WAIT_FOR(scrape("messidge_sessions{role=\"user\",state=\"attached\"}") == 0 &&
                 scrape("messidge_sessions{role=\"node\",state=\"attached\"}") == 0,
             WAIT_MS);
    CHECK(scrape("messidge_sessions{role=\"user\",state=\"attached\"}") == 0);
    mdg_conn_destroy(&node);
    mdg_conn_destroy(&user);

    /* ---- a stopped broker is not healthy */
    mdg_broker_stop(b);
    WAIT_FOR(http_get("/healthz", body, sizeof body) == 503, WAIT_MS);
    CHECK(http_get("/healthz", body, sizeof body) == 503);
    mdg_metrics_server_destroy(&ms);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&bkeys);
    mdg_keys_destroy(&ukeys);
    mdg_keys_destroy(&nkeys);
    mdg_keys_destroy(&skeys);
    mdg_keys_destroy(&rkeys);
    return t_done("test_metrics");
}
