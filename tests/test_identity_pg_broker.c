/* test_identity_pg_broker.c - a PostgreSQL identity store behind running
 * brokers, in a server of the test's own (pgserver.h):
 *
 *   - a revocation made through a second handle (as messidge-admin on
 *     another host would) ends a live session on a broker attached to the
 *     store in well under the SQLite poll's second;
 *   - the broker's listening connection, ended by the server
 *     (pg_terminate_backend), is made again and revocations made during
 *     and after the outage still arrive; so are its reader and writer;
 *   - the account server confirms invitations into the store;
 *   - the tools end to end: messidge-admin --store URI invite,
 *     messidge confirm, messidge-broker --store URI, messidge call, and a
 *     revocation by messidge-admin ending that broker's session. */
#include "messidge_identity.h"
#include "pgserver.h"
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#define WAIT_MS 5000
#define PROMISE_MS 1500 /* "within a second", with room for a busy machine */

static char base[] = "/tmp/mdg-test-identity-pg-XXXXXX";
static t_pg pg;


static bool has(const char *out, const char *needle)
{
    bool ok = strstr(out, needle) != NULL;
    if (!ok)
        fprintf(stderr, "  output lacks \"%s\":\n%s\n", needle, out);
    return ok;
}

static bool has_quiet(const char *out, const char *needle)
{
    return strstr(out, needle) != NULL;
}

/* A session of a new user (registered through admin) on broker b. */
static mdg_conn *user_session(mdg_identity *admin, const mdg_broker *b, const mdg_keys *bkeys,
                              mdg_keys **keys)
{
    mdg_conn *c = t_client(b, bkeys, keys, NULL, NULL);
    CHECK_RC(mdg_identity_add_user(admin, "user@example.org", mdg_keys_public(*keys), NULL), 0);
    CHECK_RC(mdg_conn_start(c), 0);
    CHECK_RC(mdg_conn_wait_until_ready(c, WAIT_MS), 0);
    return c;
}

/* Revoke through admin and wait for the client to be told; the time it
 * took, or -1 when it was not told within WAIT_MS. */
static int64_t revoke_and_time(mdg_identity *admin, const mdg_keys *keys)
{
    int before = t_log_count("session closed by the broker: key revoked");
    int64_t t0 = now_ms();
    CHECK_RC(mdg_identity_revoke(admin, mdg_keys_public(keys)), 0);
    WAIT_FOR(t_log_count("session closed by the broker: key revoked") > before, WAIT_MS);
    int64_t took = now_ms() - t0;
    return t_log_count("session closed by the broker: key revoked") > before ? took : -1;
}

/* Whether the listening connection was ended: the number of backends. */
static int terminate_listener(const char *uri)
{
    char out[32] = "";
    t_pg_exec(uri,
              "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
              "WHERE query = 'LISTEN messidge_revocations'",
              out, sizeof out);
    return atoi(out);
}

static void test_fan_out(const char *uri)
{
    mdg_identity *id = NULL, *admin = NULL;
    mdg_keys *bkeys = NULL, *k1 = NULL, *k2 = NULL, *k3 = NULL;
    mdg_broker *b = NULL;
    mdg_broker_options o = {.bind_address = "127.0.0.1", .port = 0};
    int64_t took;

    CHECK_RC(mdg_identity_open(&id, uri), 0);
    CHECK_RC(mdg_identity_open(&admin, uri), 0); /* the admin, elsewhere */
    CHECK_RC(mdg_keys_new(&bkeys), 0);
    CHECK_RC(mdg_broker_new(&b, bkeys, &o), 0);
    CHECK_RC(mdg_identity_attach(id, b), 0);
    CHECK_RC(mdg_identity_attach(id, b), MDG_ESTATE);
    CHECK_RC(mdg_broker_start(b), 0);

    /* A live session, revoked from the other handle. */
    mdg_conn *c1 = user_session(admin, b, bkeys, &k1);
    took = revoke_and_time(admin, k1);
    printf("revocation reached the session in %lld ms\n", (long long)took);
    CHECK(took >= 0 && took < PROMISE_MS);
    /* the broker logs it after the session is closed: the client may see the close first */
    WAIT_FOR(t_logged("revoked: 1 session(s) closed"), WAIT_MS);
    CHECK(t_logged("revoked: 1 session(s) closed"));

    /* The listening connection ended by the server: a revocation made
     * before it is back arrives by the catch-up, one after it by NOTIFY. */
    mdg_conn *c2 = user_session(admin, b, bkeys, &k2);
    mdg_conn *c3 = user_session(admin, b, bkeys, &k3);
    int lost_before = t_log_count("revocation listener lost");
    CHECK(terminate_listener(uri) == 1);
    WAIT_FOR(t_log_count("revocation listener lost") > lost_before, WAIT_MS);
    CHECK(t_log_count("revocation listener lost") > lost_before);
    took = revoke_and_time(admin, k2);
    printf("revocation during the listener's outage arrived in %lld ms\n", (long long)took);
    CHECK(took >= 0);
    WAIT_FOR(t_logged("revocation listener connected again"), WAIT_MS);
    CHECK(t_logged("revocation listener connected again"));
    took = revoke_and_time(admin, k3);
    printf("revocation after the listener came back arrived in %lld ms\n", (long long)took);
    CHECK(took >= 0 && took < PROMISE_MS);

    /* Every reader and writer connection ended by the server (as by a
     * restart): the next unit of work on each makes it again, so a new
     * user is registered (admin's writer) and admitted (the broker's
     * reader, in its ZAP lookup) at once. */
    char out[32] = "";
    CHECK(t_pg_exec(uri,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'messidge' AND datname = current_database()",
                    out, sizeof out) == 0);
    CHECK(atoi(out) == 4); /* two handles, a reader and a writer each */
    mdg_keys *k4 = NULL;
    mdg_conn *c4 = user_session(admin, b, bkeys, &k4);
    mdg_conn_destroy(&c4);
    mdg_keys_destroy(&k4);

    /* A revoked key is refused at the next handshake, too. */
    mdg_conn *again = NULL;
    mdg_conn_options co = {.port = mdg_broker_port(b)};
    CHECK_RC(mdg_conn_new_with_keys(&again, "127.0.0.1", mdg_keys_public(bkeys), k1, &co), 0);
    CHECK_RC(mdg_conn_start(again), 0);
    CHECK_RC(mdg_conn_wait_until_ready(again, WAIT_MS), MDG_EAUTH);

    mdg_conn_destroy(&again);
    mdg_conn_destroy(&c1);
    mdg_conn_destroy(&c2);
    mdg_conn_destroy(&c3);
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&k1);
    mdg_keys_destroy(&k2);
    mdg_keys_destroy(&k3);
    mdg_keys_destroy(&bkeys);
    mdg_identity_destroy(&admin);
    mdg_identity_destroy(&id);
}

/* The account server confirms into the shared store. */
static void test_account(const char *uri)
{
    char prefix[300], token[MDG_TOKEN_LEN + 1];
    mdg_identity *id = NULL, *admin = NULL;
    mdg_keys *bkeys = NULL, *mine = NULL;
    mdg_account_server *as = NULL;

    snprintf(prefix, sizeof prefix, "%s/account", base);
    CHECK_RC(mdg_identity_open(&id, uri), 0);
    CHECK_RC(mdg_identity_open(&admin, uri), 0);
    CHECK_RC(mdg_keys_new(&bkeys), 0);
    CHECK_RC(mdg_account_server_new(&as, id, mdg_keys_public(bkeys), "127.0.0.1", 0), 0);
    CHECK_RC(mdg_identity_invite(admin, "acct@example.org", 0, token, sizeof token), 0);
    CHECK_RC(mdg_create_account("127.0.0.1", mdg_account_server_port(as), token, prefix, 0), 0);
    CHECK_RC(mdg_keys_load(&mine, "127.0.0.1", prefix), 0);
    CHECK(mine && mdg_identity_role(admin, mdg_keys_public(mine), NULL) == MDG_ROLE_USER);
    /* once only */
    snprintf(prefix, sizeof prefix, "%s/account2", base);
    CHECK_RC(mdg_create_account("127.0.0.1", mdg_account_server_port(as), token, prefix, 0),
             MDG_EREMOTE);
    CHECK(strstr(mdg_last_error(), "already been used") != NULL);
    mdg_account_server_destroy(&as);
    mdg_keys_destroy(&mine);
    mdg_keys_destroy(&bkeys);
    mdg_identity_destroy(&admin);
    mdg_identity_destroy(&id);
}

/* ------------------------------------------------------------- the tools */

#if defined(MDG_BROKER_BIN) && defined(MDG_ADMIN_BIN) && defined(MDG_CLI_BIN)

static pid_t broker_pid;

/* SIGTERM, and the broker's exit status (-1: killed, or not running). */
static int stop_broker_status(void)
{
    int status = -1;
    if (broker_pid <= 0)
        return -1;
    kill(broker_pid, SIGTERM);
    int64_t deadline = now_ms() + 10000;
    pid_t done = 0;
    while ((done = waitpid(broker_pid, &status, WNOHANG)) == 0 && now_ms() < deadline)
        usleep(10 * 1000);
    if (done == broker_pid) {
        broker_pid = 0;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    if (waitpid(broker_pid, &status, WNOHANG) == 0) {
        kill(broker_pid, SIGKILL);
        waitpid(broker_pid, &status, 0);
        status = -1;
    }
    broker_pid = 0;
    return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void stop_broker(void)
{
    stop_broker_status();
}

/* messidge-broker --store uri, its stdout and stderr in files; the ports
 * from its "listening on port N, accounts on port M" line. */
static bool start_broker(const char *uri, const char *prefix, int *port, int *account_port)
{
    char out_path[320], err_path[320], text[4096];
    snprintf(out_path, sizeof out_path, "%s/broker.out", base);
    snprintf(err_path, sizeof err_path, "%s/broker.err", base);
    broker_pid = fork();
    if (broker_pid == 0) {
        int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int err = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(out, 1);
        dup2(err, 2);
        execl(MDG_BROKER_BIN, MDG_BROKER_BIN, "--port", "0", "--bind", "127.0.0.1",
              "--account-port", "0", "--store", uri, "--prefix", prefix, "-v", (char *)NULL);
        _exit(127);
    }
    for (int64_t deadline = now_ms() + WAIT_MS; now_ms() < deadline; usleep(20 * 1000)) {
        const char *at;
        if (t_read_file(out_path, text, sizeof text) &&
            (at = strstr(text, "listening on port ")) != NULL &&
            sscanf(at, "listening on port %d, accounts on port %d", port, account_port) == 2)
            return true;
        if (waitpid(broker_pid, NULL, WNOHANG) == broker_pid) {
            broker_pid = 0;
            break;
        }
    }
    t_read_file(err_path, text, sizeof text);
    fprintf(stderr, "messidge-broker did not start:\n%s\n", text);
    return false;
}

static void test_tools(const char *uri)
{
    char out[8192], token[64], prefix[300], bprefix[300], pk_b64[MDG_KEY_B64_LEN + 1];
    int port = 0, account_port = 0;
    mdg_keys *mine = NULL;

    snprintf(prefix, sizeof prefix, "%s/alice", base);
    snprintf(bprefix, sizeof bprefix, "%s/broker-keys", base);
    atexit(stop_broker);

    /* no store there yet: refused, then made with --create */
    CHECK(t_run(out, sizeof out, "%s --store '%s' list", MDG_ADMIN_BIN, uri) == 1);
    CHECK(has(out, "no identity store") && has(out, "--create"));
    CHECK(t_run(out, sizeof out, "%s --store '%s' --create list", MDG_ADMIN_BIN, uri) == 0);
    CHECK(has(out, "users:") && has(out, "pending invitations:"));
    CHECK(t_run(out, sizeof out, "%s --store '%s' invite alice@example.com", MDG_ADMIN_BIN, uri) == 0);
    CHECK(sscanf(out, "%63s", token) == 1 && strlen(token) == MDG_TOKEN_LEN);

    CHECK(start_broker(uri, bprefix, &port, &account_port));
    if (!port)
        return;
    CHECK(t_run(out, sizeof out, "%s confirm 127.0.0.1 '%s' --port %d --prefix %s", MDG_CLI_BIN,
                token, account_port, prefix) == 0);
    CHECK(has(out, "account created at 127.0.0.1"));
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d ping", MDG_CLI_BIN, prefix,
                port) == 0);
    CHECK(has(out, "pong"));
    CHECK(t_run(out, sizeof out, "%s --store '%s' list", MDG_ADMIN_BIN, uri) == 0);
    CHECK(has(out, "alice@example.com"));

    /* add-node (the broker's key from its prefix), add-user, export-1x */
    CHECK(t_run(out, sizeof out, "%s --store '%s' --prefix %s add-node divide --port %d",
                MDG_ADMIN_BIN, uri, bprefix, port) == 0);
    CHECK(has(out, "node \"divide\" registered") && !has_quiet(out, "BROKER_PK "));
    CHECK(t_run(out, sizeof out, "%s --store '%s' add-user carol@example.com "
                "'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE='", MDG_ADMIN_BIN, uri) == 0);
    CHECK(t_run(out, sizeof out, "%s --store '%s' add-user carol@example.com "
                "'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE='", MDG_ADMIN_BIN, uri) == 1);
    CHECK(has(out, "already registered"));
    CHECK(t_run(out, sizeof out, "%s --store '%s' list", MDG_ADMIN_BIN, uri) == 0);
    CHECK(has(out, "divide") && has(out, "carol@example.com"));
    CHECK(t_run(out, sizeof out, "%s --store '%s' export-1x %s/export.sqlite3", MDG_ADMIN_BIN,
                uri, base) == 0);

    /* A live session of alice's, on that broker, ended by messidge-admin. */
    CHECK_RC(mdg_keys_load(&mine, "127.0.0.1", prefix), 0);
    mdg_conn *c = NULL;
    mdg_conn_options o = {.port = port};
    CHECK_RC(mdg_conn_new(&c, "127.0.0.1", prefix, &o), 0);
    CHECK_RC(mdg_conn_start(c), 0);
    CHECK_RC(mdg_conn_wait_until_ready(c, WAIT_MS), 0);
    if (mine)
        mdg_pk_to_b64(mdg_keys_public(mine), pk_b64);
    int before = t_log_count("session closed by the broker: key revoked");
    CHECK(t_run(out, sizeof out, "%s --store '%s' revoke '%s'", MDG_ADMIN_BIN, uri, pk_b64) == 0);
    WAIT_FOR(t_log_count("session closed by the broker: key revoked") > before, WAIT_MS);
    CHECK(t_log_count("session closed by the broker: key revoked") > before);
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d ping", MDG_CLI_BIN, prefix,
                port) != 0);
    mdg_conn_destroy(&c);
    mdg_keys_destroy(&mine);
    /* a clean stop: the store's connections closed, nothing leaked */
    CHECK(stop_broker_status() == 0);
}
#endif

int main(void)
{
    char uri[256];

    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("all_proxy");
    unsetenv("ALL_PROXY");
    signal(SIGPIPE, SIG_IGN);
    t_capture_log();
    if (!mkdtemp(base)) {
        perror("mkdtemp");
        return 2;
    }
    if (t_pg_start(&pg) != 0) {
        fprintf(stderr, "test_identity_pg_broker: cannot start a PostgreSQL server (see above)\n");
        return 1;
    }
    if (t_pg_new_db(&pg, "fanout", uri, sizeof uri) == 0)
        test_fan_out(uri);
    if (t_pg_new_db(&pg, "account", uri, sizeof uri) == 0)
        test_account(uri);
#if defined(MDG_BROKER_BIN) && defined(MDG_ADMIN_BIN) && defined(MDG_CLI_BIN)
    if (t_pg_new_db(&pg, "tools", uri, sizeof uri) == 0)
        test_tools(uri);
#endif
    t_pg_stop(&pg);
    t_rm_tree(base);
    return t_done("test_identity_pg_broker");
}
