/* test_fleet_tools.c - messidge-broker --fleet end to end: two broker
 * processes that share a PostgreSQL identity store (pgserver.h) join one
 * fleet through a nats-server of the test's own (natsserver.h). A node
 * registered as "divide" connects to broker B; through broker A,
 * `messidge nodes` lists it and `messidge call --node divide` resolves the
 * name fleet-wide and gets the guide's answers (2.0, and the error). Both
 * brokers stop cleanly (status 0). */
#include "messidge_identity.h"
#include "natsserver.h"
#include "pgserver.h"
#include "testutil.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>

#define WAIT_MS 10000

static char base[] = "/tmp/mdg-test-fleet-tools-XXXXXX";
static pid_t pids[2];


/* SIGTERM, and the exit status (-1: killed, or not running). */
static int stop(int i)
{
    int status = -1;
    if (pids[i] <= 0)
        return -1;
    kill(pids[i], SIGTERM);
    pid_t done = 0;
    for (int64_t until = now_ms() + WAIT_MS; (done = waitpid(pids[i], &status, WNOHANG)) == 0 && now_ms() < until;)
        usleep(10000);
    if (done != pids[i]) {
        kill(pids[i], SIGKILL);
        waitpid(pids[i], &status, 0);
        status = -1;
    }
    pids[i] = 0;
    return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void stop_all(void)
{
    stop(0);
    stop(1);
}

/* Broker i (its keys under PREFIX/localhost_broker) in the fleet, with
 * the other as member; its port from its "listening on port N" line. */
static int start_broker(int i, const char *uri, const char *nats_url, const char *other_b64)
{
    char prefix[300], out_path[320], err_path[320], text[4096];
    snprintf(prefix, sizeof prefix, "%s/broker%d", base, i);
    snprintf(out_path, sizeof out_path, "%s/broker%d.out", base, i);
    snprintf(err_path, sizeof err_path, "%s/broker%d.err", base, i);
    pid_t parent = getpid();
    pids[i] = fork();
    if (pids[i] == 0) {
        /* never outlive the test, even one that crashes or is killed (no atexit) */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(127);
        int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int err = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(out, 1);
        dup2(err, 2);
        execl(MDG_BROKER_BIN, MDG_BROKER_BIN, "--port", "0", "--bind", "127.0.0.1", "--no-accounts", "--store", uri,
              "--prefix", prefix, "--fleet", nats_url, "--fleet-name", "tools", "--fleet-member", other_b64, "-v",
              (char *)NULL);
        _exit(127);
    }
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until; usleep(20000)) {
        const char *at;
        int port;
        if (t_read_file(out_path, text, sizeof text) && (at = strstr(text, "listening on port ")) != NULL &&
            sscanf(at, "listening on port %d", &port) == 1)
            return port;
        if (waitpid(pids[i], NULL, WNOHANG) == pids[i]) {
            pids[i] = 0;
            break;
        }
    }
    t_read_file(err_path, text, sizeof text);
    fprintf(stderr, "messidge-broker %d did not start:\n%s\n", i, text);
    return 0;
}

static const mdg_cmd node_cmds[] = {
    {"divide", t_divide, MDG_REQUIRE("dividend", "devisor"), MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

static void run(const char *uri, const char *nats_url)
{
    mdg_identity *id = NULL;
    mdg_keys *bk[2] = {NULL, NULL}, *nk = NULL, *uk = NULL;
    char prefix[300], uprefix[300], b64[2][MDG_KEY_B64_LEN + 1], out[8192];
    CHECK_RC(mdg_identity_open_ex(&id, uri, MDG_IDENTITY_CREATE), 0);
    for (int i = 0; i < 2; i++) {
        snprintf(prefix, sizeof prefix, "%s/broker%d", base, i);
        CHECK_RC(mdg_keys_new(&bk[i]), 0);
        CHECK_RC(mdg_keys_save(bk[i], "localhost_broker", prefix), 0);
        mdg_pk_to_b64(mdg_keys_public(bk[i]), b64[i]);
    }
    /* the node and the user, in the one store both brokers read */
    CHECK_RC(mdg_keys_new(&nk), 0);
    CHECK_RC(mdg_keys_new(&uk), 0);
    CHECK_RC(mdg_identity_add_node(id, "divide", mdg_keys_public(nk), NULL), 0);
    CHECK_RC(mdg_identity_add_user(id, "ann@example.com", mdg_keys_public(uk), NULL), 0);
    snprintf(uprefix, sizeof uprefix, "%s/ann", base);
    CHECK_RC(mdg_keys_save(uk, "127.0.0.1", uprefix), 0);
    CHECK_RC(mdg_server_pk_save(mdg_keys_public(bk[0]), "127.0.0.1", uprefix), 0);

    atexit(stop_all);
    int port_a = start_broker(0, uri, nats_url, b64[1]), port_b = start_broker(1, uri, nats_url, b64[0]);
    CHECK(port_a && port_b);
    if (!port_a || !port_b)
        goto out;
    mdg_conn *node = NULL;
    mdg_conn_options no = {.port = port_b, .reflect_errors = true};
    CHECK_RC(mdg_conn_new_with_keys(&node, "127.0.0.1", mdg_keys_public(bk[1]), nk, &no), 0);
    CHECK_RC(mdg_conn_register_commands(node, node_cmds, NULL), 0);
    CHECK_RC(mdg_conn_start(node), 0);
    CHECK_RC(mdg_conn_wait_until_ready(node, WAIT_MS), 0);

    /* one directory: A names B's node, from the shared store */
    bool listed = false;
    for (int64_t until = now_ms() + WAIT_MS; !listed && now_ms() < until; usleep(100000))
        listed = t_run(out, sizeof out, "%s nodes --prefix %s --location 127.0.0.1 --port %d", MDG_CLI_BIN, uprefix,
                       port_a) == 0 &&
                 strstr(out, "divide") != NULL;
    CHECK(listed);
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --location 127.0.0.1 --port %d --node divide divide "
                "dividend=10.0 devisor=5.0", MDG_CLI_BIN, uprefix, port_a) == 0);
    CHECK(strstr(out, "\"quotient\"") && strstr(out, "2"));
    printf("through broker A, `messidge call --node divide` at broker B: %s", out);
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --location 127.0.0.1 --port %d --node divide divide "
                "dividend=10.0 devisor=0.0", MDG_CLI_BIN, uprefix, port_a) != 0);
    CHECK(strstr(out, "Devisor cannot be zero") != NULL);

    mdg_conn_disconnect(node);
    mdg_conn_destroy(&node);
    CHECK(stop(0) == 0);
    CHECK(stop(1) == 0);
out:
    stop_all();
    for (int i = 0; i < 2; i++)
        mdg_keys_destroy(&bk[i]);
    mdg_keys_destroy(&nk);
    mdg_keys_destroy(&uk);
    mdg_identity_destroy(&id);
}

int main(void)
{
    char uri[256];
    t_pg pg;
    t_nats nats = {0};
    signal(SIGPIPE, SIG_IGN);
    t_capture_log();
    if (!mkdtemp(base)) {
        perror("mkdtemp");
        return 2;
    }
    if (t_pg_start(&pg) != 0 || t_nats_start(&nats, t_free_port()) != 0) {
        fprintf(stderr, "test_fleet_tools: cannot start PostgreSQL or NATS (see above)\n");
        t_pg_stop(&pg);
        return 1;
    }
    if (t_pg_new_db(&pg, "fleet", uri, sizeof uri) == 0)
        run(uri, nats.url);
    t_nats_stop(&nats);
    unlink(nats.log);
    t_pg_stop(&pg);
    t_rm_tree(base);
    return t_done("test_fleet_tools");
}
