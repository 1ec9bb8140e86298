/* test_tools.c - the command-line tools end to end, as separate processes
 * on loopback: the quickstart with the ready-made broker.
 *
 *   messidge-broker --port 0 ...       a child process; its ports and key
 *                                      are read from its stdout
 *   messidge-admin invite              -> a token
 *   messidge confirm / mdg_create_account   -> a user's key files
 *   messidge-admin add-node            -> a node's keys; a node connection
 *                                      with a "divide" command table
 *   user connections (mdg_conn_new from the key files): a session, the
 *   resource offer naming the node, calls routed to the node through the
 *   broker (which has no commands of its own), and `messidge call --node`
 *   messidge-admin revoke              -> the live session is closed by the
 *                                      broker within 5 s, sends fail with
 *                                      "revoked", a new connection is
 *                                      refused (MDG_EAUTH); other users
 *                                      are untouched
 *   messidge-broker --help, bad options, SIGTERM (exit 0, "stopped")
 *
 * The tools' paths come from the build (MDG_*_BIN). Every child is killed
 * on every way out: the broker by this program (and by the kernel, with
 * PR_SET_PDEATHSIG, if this program dies); the short-lived tools are run
 * with popen and waited for. */
#include "messidge_identity.h"
#include "testutil.h"

#include <sqlite3.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#if !defined(MDG_BROKER_BIN) || !defined(MDG_ADMIN_BIN) || !defined(MDG_CLI_BIN)
#error "build with MDG_BROKER_BIN, MDG_ADMIN_BIN and MDG_CLI_BIN (tests/CMakeLists.txt)"
#endif

#define WAIT_MS 10000 /* for anything that should be quick */

static char base[] = "/tmp/mdg-test-tools-XXXXXX";
static char state[300], bprefix[300], uprefix[300], uprefix2[300], broker_err[300];

/* ----------------------------------------------------------------- helpers */


static bool has(const char *out, const char *needle)
{
    bool ok = out && strstr(out, needle) != NULL;
    if (!ok)
        fprintf(stderr, "  output lacks \"%s\":\n%s\n", needle, out ? out : "(none)");
    return ok;
}

static bool last_error_has(const char *needle)
{
    bool ok = strstr(mdg_last_error(), needle) != NULL;
    if (!ok)
        fprintf(stderr, "  last error \"%s\" lacks \"%s\"\n", mdg_last_error(), needle);
    return ok;
}

/* Whole text of a (small) file, NUL-terminated, into buf. */
static bool read_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    buf[0] = '\0';
    if (!f)
        return false;
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
    return true;
}

/* The value after "NAME=" in text (up to a space or newline), into out. */
static bool field(const char *text, const char *name, char *out, size_t len)
{
    char key[64];
    snprintf(key, sizeof key, "%s=", name);
    const char *p = strstr(text, key);
    out[0] = '\0';
    if (!p)
        return false;
    p += strlen(key);
    size_t n = strcspn(p, " \n");
    if (n == 0 || n >= len)
        return false;
    memcpy(out, p, n);
    out[n] = '\0';
    return true;
}

/* The library's log lines in this process (the refusals and closings
 * that are expected here), kept for checks; shown with MDG_TEST_VERBOSE. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_text[1 << 14];

static void log_sink(int level, const char *text, void *arg)
{
    (void)level;
    (void)arg;
    pthread_mutex_lock(&log_lock);
    size_t n = strlen(log_text);
    if (n + strlen(text) + 2 < sizeof log_text)
        snprintf(log_text + n, sizeof log_text - n, "%s\n", text);
    pthread_mutex_unlock(&log_lock);
    if (getenv("MDG_TEST_VERBOSE"))
        fprintf(stderr, "  [log] %s\n", text);
}

static bool logged(const char *needle)
{
    pthread_mutex_lock(&log_lock);
    bool found = strstr(log_text, needle) != NULL;
    pthread_mutex_unlock(&log_lock);
    if (!found)
        fprintf(stderr, "  no log line with \"%s\"\n", needle);
    return found;
}

/* ------------------------------------------------------------ the broker */

static pid_t broker_pid = -1;
static int broker_out = -1; /* read end of the broker's stdout */

/* Runs at exit, whatever the path: never leave the broker behind. */
static void kill_broker(void)
{
    if (broker_pid > 0) {
        kill(broker_pid, SIGKILL);
        waitpid(broker_pid, NULL, 0);
        broker_pid = -1;
    }
}

/* Start messidge-broker with argv (NULL-terminated, argv[0] included):
 * stdout into a pipe we read, stderr into broker_err. */
static bool start_broker(char *const argv[])
{
    int fds[2];
    if (pipe(fds) != 0)
        return false;
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return false;
    }
    if (pid == 0) {
        /* the child: dies with us, even if we crash */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int err = open(broker_err, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (err < 0 || dup2(fds[1], 1) < 0 || dup2(err, 2) < 0)
            _exit(127);
        close(fds[0]);
        close(fds[1]);
        close(err);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    broker_out = fds[0];
    broker_pid = pid;
    return true;
}

/* Read the broker's stdout until it has said both lines (or ms pass, or
 * it exits): the base port, the account port and its public key. */
static int legacy_port;  /* the Messidge 1.x listener's, from the same line */
static int metrics_port; /* the metrics server's, from the same line */

static bool broker_ready(int *port, int *account_port, char pk_b64[MDG_KEY_B64_LEN + 1], int ms)
{
    char buf[2048];
    size_t n = 0;
    int64_t deadline = now_ms() + ms;
    const char *pk;
    buf[0] = '\0';
    while (!(pk = strstr(buf, "broker public key ")) || !strchr(pk, '\n')) {
        int left = (int)(deadline - now_ms());
        struct pollfd p = {.fd = broker_out, .events = POLLIN};
        if (left <= 0 || n + 1 >= sizeof buf || poll(&p, 1, left) <= 0)
            break;
        ssize_t k = read(broker_out, buf + n, sizeof buf - 1 - n);
        if (k <= 0)
            break; /* the broker exited */
        n += (size_t)k;
        buf[n] = '\0';
    }
    const char *l = strstr(buf, "listening on port ");
    if (!pk || !l || sscanf(l, "listening on port %d, accounts on port %d", port, account_port) != 2 ||
        sscanf(pk, "broker public key %44s", pk_b64) != 1) {
        fprintf(stderr, "the broker did not say it is ready; its stdout:\n%s\n", buf);
        return false;
    }
    const char *mp = strstr(buf, "metrics on port ");
    metrics_port = mp ? atoi(mp + strlen("metrics on port ")) : 0;
    const char *lp = strstr(buf, "Messidge 1.x on port ");
    legacy_port = lp ? atoi(lp + strlen("Messidge 1.x on port ")) : 0;
    return true;
}

/* SIGTERM the broker and wait (ms at most): its exit status, or -1. */
static int stop_broker(int ms)
{
    int st = 0;
    if (broker_pid <= 0)
        return -1;
    kill(broker_pid, SIGTERM);
    for (int64_t deadline = now_ms() + ms; now_ms() < deadline; usleep(20000)) {
        pid_t r = waitpid(broker_pid, &st, WNOHANG);
        if (r == broker_pid) {
            broker_pid = -1;
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        }
    }
    fprintf(stderr, "the broker did not stop within %d ms\n", ms);
    kill_broker();
    return -1;
}

/* ------------------------------------------------------------- the node */

static atomic_int divides;           /* calls the node handled */
static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t seen_user[MDG_KEY_BYTES]; /* 'user' stamped on the last call */

static void h_divide(mdg_msg *msg, void *arg)
{
    (void)arg;
    const mdg_params *p = mdg_msg_params(msg);
    const uint8_t *user = NULL;
    size_t len = 0;
    atomic_fetch_add(&divides, 1);
    if (mdg_params_get_bytes(p, "user", &user, &len) == 0 && len == MDG_KEY_BYTES) {
        pthread_mutex_lock(&seen_lock);
        memcpy(seen_user, user, MDG_KEY_BYTES);
        pthread_mutex_unlock(&seen_lock);
    }
    t_divide(msg, arg);
}

/* What JSON has no like: NaN, infinity, a map with an integer key, bytes.
 * `messidge call` must still print JSON. (Text that is not UTF-8 does not
 * pass the wire decoder; json_params.c replaces its bad bytes anyway.) */
static void h_awkward(mdg_msg *msg, void *arg)
{
    (void)arg;
    mdg_params *r = mdg_params_new();
    cbor_item_t *intkey = cbor_new_definite_map(1);
    cbor_item_t *k = cbor_build_uint8(1), *v = cbor_build_string("x");
    cbor_map_add(intkey, (struct cbor_pair){.key = k, .value = v});
    cbor_decref(&k);
    cbor_decref(&v);
    mdg_params_set_double(r, "nan", NAN);
    mdg_params_set_double(r, "inf", INFINITY);
    mdg_params_set_item(r, "intkey", intkey);
    mdg_params_set_bytes(r, "bytes", "\x00\x01\x02", 3);
    mdg_params_set_double(r, "tenth", 0.1);
    mdg_msg_reply(msg, r, NULL, 0);
}

/* The params back as they came (with the broker's stamps). */
static void h_echo(mdg_msg *msg, void *arg)
{
    (void)arg;
    mdg_params *r = mdg_params_new();
    cbor_item_t *m = mdg_params_map(mdg_msg_params(msg));
    for (size_t i = 0; i < cbor_map_size(m); i++) {
        struct cbor_pair kv = cbor_map_handle(m)[i];
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)cbor_string_length(kv.key), cbor_string_handle(kv.key));
        mdg_params_set_item(r, key, cbor_incref(kv.value));
    }
    mdg_msg_reply(msg, r, NULL, 0);
}

static const mdg_cmd node_commands[] = {
    {"divide", h_divide, MDG_REQUIRE("dividend", "devisor"), MDG_CMD_NEEDS_REPLY},
    {"awkward", h_awkward, NULL, MDG_CMD_NEEDS_REPLY},
    {"echo", h_echo, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* --------------------------------------------------------------- users */

/* What the broker offered a user session. */
typedef struct offer {
    pthread_mutex_t lock;
    int count;                   /* offers received */
    uint8_t nodes[4][MDG_KEY_BYTES];
    size_t n;
} offer;

static void h_resource_offer(mdg_msg *msg, void *arg)
{
    offer *o = arg;
    const cbor_item_t *list = mdg_params_get(mdg_msg_params(msg), "nodes");
    pthread_mutex_lock(&o->lock);
    o->count++;
    o->n = 0;
    if (list && cbor_isa_array(list))
        for (size_t i = 0; i < cbor_array_size(list) && o->n < 4; i++) {
            const cbor_item_t *it = cbor_array_handle(list)[i];
            if (cbor_isa_bytestring(it) && cbor_bytestring_is_definite(it) &&
                cbor_bytestring_length(it) == MDG_KEY_BYTES)
                memcpy(o->nodes[o->n++], cbor_bytestring_handle(it), MDG_KEY_BYTES);
        }
    pthread_mutex_unlock(&o->lock);
}

static const mdg_cmd user_commands[] = {
    {"resource_offer", h_resource_offer, MDG_REQUIRE("nodes"), 0},
    MDG_CMD_END,
};

static bool offered(offer *o, const uint8_t pk[MDG_KEY_BYTES])
{
    bool found = false;
    pthread_mutex_lock(&o->lock);
    for (size_t i = 0; i < o->n; i++)
        found = found || memcmp(o->nodes[i], pk, MDG_KEY_BYTES) == 0;
    pthread_mutex_unlock(&o->lock);
    return found;
}

static int offer_count(offer *o)
{
    pthread_mutex_lock(&o->lock);
    int n = o->count;
    pthread_mutex_unlock(&o->lock);
    return n;
}

/* A user connection from the key files in prefix (its default location),
 * started and ready; NULL (and *rc) on failure. */
static mdg_conn *user_conn(const char *prefix, int port, offer *o, int *rc)
{
    mdg_conn *c = NULL;
    mdg_conn_options opts = {.port = port};
    int r = mdg_conn_new(&c, NULL, prefix, &opts);
    if (r == 0 && o)
        r = mdg_conn_register_commands(c, user_commands, o);
    if (r == 0)
        r = mdg_conn_start(c);
    if (r == 0)
        r = mdg_conn_wait_until_ready(c, WAIT_MS);
    if (rc)
        *rc = r;
    if (r != 0)
        mdg_conn_destroy(&c);
    return c;
}

/* divide through the broker: {node, dividend, devisor}; 0 with *q, or the
 * call's error. */
static int divide(mdg_conn *c, const uint8_t node[MDG_KEY_BYTES], double a, double b, double *q)
{
    mdg_msg *reply = NULL;
    mdg_params *p = mdg_params_new();
    if (node)
        mdg_params_set_bytes(p, "node", node, MDG_KEY_BYTES);
    mdg_params_set_double(p, "dividend", a);
    mdg_params_set_double(p, "devisor", b);
    int rc = mdg_conn_call(c, "divide", p, NULL, 0, WAIT_MS, &reply);
    if (rc == 0) {
        rc = mdg_params_get_double(mdg_msg_params(reply), "quotient", q);
        mdg_msg_destroy(&reply);
    }
    return rc;
}

/* ----------------------------------------------------------------- tests */

/* --help documents every option; misuse is a usage error (exit 2). */
static void test_help(void)
{
    static char out[8192];
    static const char *const options[] = {
        "--port",  "--bind",      "--key",       "--prefix",  "--state", "--account-port",
        "--no-accounts", "--port-file", "--verbose", "--help", "--max-connections",
        "--account-max-connections", "--account-per-address", "--account-timeout", NULL,
    };
    CHECK(t_run(out, sizeof out, "%s --help", MDG_BROKER_BIN) == 0);
    for (int i = 0; options[i]; i++)
        CHECK(has(out, options[i]));
    CHECK(has(out, "SIGTERM") && has(out, "messidge-admin"));
    CHECK(t_run(out, sizeof out, "%s --frobnicate", MDG_BROKER_BIN) == 2);
    CHECK(t_run(out, sizeof out, "%s extra-argument", MDG_BROKER_BIN) == 2);
    /* a port that is not a number is refused, not taken for 0 */
    CHECK(t_run(out, sizeof out, "%s --port abc --state %s/unused", MDG_BROKER_BIN, base) == 2);
    CHECK(has(out, "bad port"));
    CHECK(t_run(out, sizeof out, "%s --port 0 --account-port 70000 --state %s/unused",
              MDG_BROKER_BIN, base) == 2);
    CHECK(t_run(out, sizeof out, "%s --max-connections 0 --state %s/unused", MDG_BROKER_BIN, base) == 2);
    CHECK(has(out, "bad number"));
    CHECK(t_run(out, sizeof out, "%s --account-timeout 5s --state %s/unused", MDG_BROKER_BIN, base) == 2);
    /* the soft open-file limit is raised to the hard one before anything
     * else (this one then fails: its state directory cannot be made) */
    CHECK(t_run(out, sizeof out, "ulimit -S -n 256 && ulimit -H -n 1024 && exec %s -v --state /dev/null/x",
              MDG_BROKER_BIN) == 1);
    CHECK(has(out, "raised the open-file limit from 256 to 1024"));
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* A mistyped --state is refused; a broker that cannot bind writes nothing. */
static void test_state_refused(int taken_port)
{
    static char out[4096];
    char dir[400], keys[400], key_file[450];
    snprintf(dir, sizeof dir, "%s/mistyped-state", base);
    snprintf(keys, sizeof keys, "%s/mistyped-keys", base);
    snprintf(key_file, sizeof key_file, "%s/localhost_broker", keys);
    CHECK(t_run(out, sizeof out, "%s --port 0 --bind 127.0.0.1 --state %s --prefix %s", MDG_BROKER_BIN,
              dir, keys) == 1);
    CHECK(has(out, "no identity store at") && has(out, "--create"));
    CHECK(!exists(dir) && !exists(key_file));
    /* with --create, but the port is taken: neither the store nor the keys */
    CHECK(t_run(out, sizeof out, "%s --create --port %d --bind 127.0.0.1 --state %s --prefix %s",
              MDG_BROKER_BIN, taken_port, dir, keys) == 1);
    CHECK(has(out, "cannot start the broker"));
    CHECK(!exists(dir) && !exists(key_file));
}

/* Is v the JSON string s? */
static bool str_is(const json_t *v, const char *s)
{
    return json_is_string(v) && strcmp(json_string_value(v), s) == 0;
}

/* messidge nodes, call --node NAME, ping, JSON out and in, and a refused
 * broker reported at once. */
static void test_cli(int port, const char *prefix, const char *node_pk_b64)
{
    static char out[16384];
    json_error_t err;
    json_t *v;

    /* nodes by the names add-node gave them */
    CHECK(t_run(out, sizeof out, "%s nodes --prefix %s --port %d", MDG_CLI_BIN, prefix, port) == 0);
    CHECK(has(out, "divide") && has(out, node_pk_b64));
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d nodes", MDG_CLI_BIN, prefix, port) == 0);
    v = json_loads(out, 0, &err);
    CHECK(v != NULL);
    json_t *first = json_array_get(json_object_get(v, "nodes"), 0);
    CHECK(str_is(json_object_get(first, "name"), "divide") && str_is(json_object_get(first, "pk"), node_pk_b64));
    json_decref(v);
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d ping", MDG_CLI_BIN, prefix, port) == 0);
    v = json_loads(out, 0, &err);
    CHECK(json_is_true(json_object_get(v, "pong")) && str_is(json_object_get(v, "version"), mdg_version()));
    json_decref(v);
    /* --broker: 127.0.0.2 (the same keys; the broker listens on 127.0.0.1
     * only) refuses, so the connection fails over to 127.0.0.1 */
    CHECK(t_run(out, sizeof out, "cd %s && cp 127.0.0.1 127.0.0.2 && cp 127.0.0.1.pub 127.0.0.2.pub && "
                "cp 127.0.0.1.spub 127.0.0.2.spub", prefix) == 0);
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d --location 127.0.0.2 --broker 127.0.0.1 ping",
                MDG_CLI_BIN, prefix, port) == 0);
    v = json_loads(out, 0, &err);
    CHECK(json_is_true(json_object_get(v, "pong")));
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d --broker nosuch ping", MDG_CLI_BIN, prefix,
                port) == 1);
    CHECK(has(out, "nosuch"));
    json_decref(v);
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d --node divide divide dividend=10.0 devisor=5.0",
              MDG_CLI_BIN, prefix, port) == 0);
    CHECK(has(out, "\"quotient\": 2.0"));
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d --node nosuch divide dividend=1.0 devisor=1.0",
              MDG_CLI_BIN, prefix, port) == 1);
    CHECK(has(out, "no node named \"nosuch\""));

    /* what JSON cannot say still prints as JSON */
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d --node divide awkward", MDG_CLI_BIN, prefix,
              port) == 0);
    v = json_loads(out, 0, &err);
    if (!v)
        fprintf(stderr, "not JSON (%s): %s\n", err.text, out);
    CHECK(v != NULL);
    CHECK(json_is_null(json_object_get(v, "nan")) && json_is_null(json_object_get(v, "inf")));
    json_t *want = json_pack("{s:s}", "1", "x");
    CHECK(json_equal(json_object_get(v, "intkey"), want) || !"intkey is {\"1\": \"x\"}");
    json_decref(want);
    CHECK(str_is(json_object_get(v, "bytes"), "b64:AAEC"));
    CHECK(json_real_value(json_object_get(v, "tenth")) == 0.1 && has(out, "\"tenth\": 0.1"));
    json_decref(v);

    /* JSON in: --params and key:=JSON come back equal through a JSON parser */
    const char *in = "{\"xs\": [1, -2, 2.5, \"a\", true, null, {\"k\": [\"\\u00e9\"]}], "
                     "\"big\": -9007199254740993, \"third\": 0.3333333333333333}";
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d --node divide --params '%s' echo 'm:={\"a\": {}}'",
              MDG_CLI_BIN, prefix, port, in) == 0);
    json_t *sent = json_loads(in, 0, &err);
    v = json_loads(out, 0, &err);
    if (!v)
        fprintf(stderr, "not JSON (%s): %s\n", err.text, out);
    CHECK(v && sent);
    const char *key;
    json_t *member;
    json_object_foreach(sent, key, member)
        CHECK(json_equal(member, json_object_get(v, key)) || !"a --params member came back equal");
    json_t *m = json_pack("{s:{}}", "a");
    CHECK(json_equal(json_object_get(v, "m"), m));
    json_decref(m);
    json_decref(sent);
    json_decref(v);
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d ping 'xs:=[1,'", MDG_CLI_BIN, prefix, port) == 2);
    CHECK(has(out, "not JSON"));

    /* nothing listens: said at once, not after the 10 s timeout */
    int64_t t0 = now_ms();
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --location 127.0.0.1 --port %d ping", MDG_CLI_BIN,
              prefix, t_free_port()) == 1);
    CHECK(now_ms() - t0 < 1000);
    CHECK(has(out, "refused"));
}

int main(void)
{
    static char out[16384], text[256];
    char broker_pk_b64[MDG_KEY_B64_LEN + 1] = "", token[64] = "", token2[64] = "";
    char user_b64[MDG_KEY_B64_LEN + 1] = "", user2_b64[MDG_KEY_B64_LEN + 1] = "";
    char node_pk_b64[64] = "", node_sk_b64[64] = "", node_bpk_b64[64] = "";
    char port_file[320], path[400], port_text[32], pid_path[320];
    pid_t pid_of_broker = 0;
    uint8_t broker_pk[MDG_KEY_BYTES], node_pk[MDG_KEY_BYTES];
    int port = 0, account_port = 0, rc;
    mdg_keys *node_keys = NULL, *ukeys = NULL;
    mdg_conn *node = NULL, *alice = NULL, *bob = NULL, *again = NULL;
    offer alice_offer = {.lock = PTHREAD_MUTEX_INITIALIZER};
    offer bob_offer = {.lock = PTHREAD_MUTEX_INITIALIZER};
    double q = 0;

    /* The exchanges are on loopback: no proxy may get in the way. And no
     * default key directory: everything goes under base. */
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("all_proxy");
    unsetenv("ALL_PROXY");
    mdg_set_log(log_sink, NULL, MDG_LOG_INFO);
    if (!mkdtemp(base)) {
        perror("mkdtemp");
        return 2;
    }
    snprintf(state, sizeof state, "%s/state", base);
    snprintf(bprefix, sizeof bprefix, "%s/broker-keys", base);
    snprintf(uprefix, sizeof uprefix, "%s/alice", base);
    snprintf(uprefix2, sizeof uprefix2, "%s/bob", base);
    snprintf(broker_err, sizeof broker_err, "%s/broker.err", base);
    snprintf(port_file, sizeof port_file, "%s/broker.port", base);
    snprintf(pid_path, sizeof pid_path, "%s/broker.pid", base);
    snprintf(path, sizeof path, "%s/default-prefix", base);
    setenv("MESSIDGE_PREFIX", path, 1);
    atexit(kill_broker);
    signal(SIGPIPE, SIG_IGN);

    test_help();

    /* ---- the broker: free ports on loopback, its key made on first run */
    char *const argv[] = {MDG_BROKER_BIN, "--port", "0", "--bind", "127.0.0.1", "--create",
                          "--state", state, "--prefix", bprefix, "--account-port", "0",
                          "--port-file", port_file, "--legacy-port", "0", "--verbose",
                          "--max-connections", "50", "--account-max-connections", "16",
                          "--account-per-address", "3", "--account-timeout", "4000",
                          "--metrics-port", "0", "--pid-file", pid_path, NULL};
    CHECK(start_broker(argv));
    bool up = broker_ready(&port, &account_port, broker_pk_b64, WAIT_MS);
    CHECK(up);
    if (!up)
        goto out;
    CHECK(port > 0 && account_port > 0 && port != account_port);
    /* the limits were taken (logged at start, before stdout's lines) */
    CHECK(read_file(broker_err, out, sizeof out) && has(out, "the broker admits at most 50 connections"));
    CHECK(has(out, "(at most 16 connections, 3 per address, 4000 ms per request)"));
    /* the port file (written after stdout) agrees; the key is the saved one */
    WAIT_FOR(read_file(port_file, port_text, sizeof port_text) && port_text[0], 2000);
    CHECK(atoi(port_text) == port);
    pid_of_broker = broker_pid;
    WAIT_FOR(read_file(pid_path, port_text, sizeof port_text) && port_text[0], 2000);
    CHECK(atoi(port_text) == (int)broker_pid);
    CHECK(metrics_port > 0);
    snprintf(path, sizeof path, "%s/localhost_broker.pub", bprefix);
    CHECK(read_file(path, text, sizeof text) && strncmp(text, broker_pk_b64, MDG_KEY_B64_LEN) == 0);
    CHECK_RC(mdg_pk_from_b64(broker_pk, broker_pk_b64), 0);

    test_state_refused(port);

    /* ---- invite (the broker made the store: no --create needed) */
    CHECK(t_run(out, sizeof out, "%s --state %s invite alice@example.com", MDG_ADMIN_BIN, state) == 0);
    CHECK(sscanf(out, "%63s", token) == 1 && strlen(token) == MDG_TOKEN_LEN);
    CHECK(t_run(out, sizeof out, "%s --state %s invite bob@example.com", MDG_ADMIN_BIN, state) == 0);
    CHECK(sscanf(out, "%63s", token2) == 1 && strlen(token2) == MDG_TOKEN_LEN);

    /* ---- confirm: alice with the tool, bob with the library; both pin the
     * broker's key that the account server answered */
    CHECK(t_run(out, sizeof out, "%s confirm 127.0.0.1 '%s' --port %d --prefix %s", MDG_CLI_BIN,
              token, account_port, uprefix) == 0);
    CHECK(has(out, "account created at 127.0.0.1"));
    snprintf(path, sizeof path, "%s/127.0.0.1.spub", uprefix);
    CHECK(read_file(path, text, sizeof text) && strncmp(text, broker_pk_b64, MDG_KEY_B64_LEN) == 0);
    snprintf(path, sizeof path, "%s/default_location", uprefix);
    CHECK(read_file(path, text, sizeof text) && strncmp(text, "127.0.0.1", 9) == 0);
    CHECK_RC(mdg_create_account("127.0.0.1", account_port, token2, uprefix2, 0), 0);
    /* a used token does not work twice */
    CHECK(t_run(out, sizeof out, "%s confirm 127.0.0.1 '%s' --port %d --prefix %s/again",
              MDG_CLI_BIN, token, account_port, base) == 1);
    CHECK(has(out, "already been used"));
    CHECK_RC(mdg_keys_load(&ukeys, "127.0.0.1", uprefix), 0);
    if (ukeys)
        mdg_pk_to_b64(mdg_keys_public(ukeys), user_b64);
    mdg_keys_destroy(&ukeys);
    CHECK_RC(mdg_keys_load(&ukeys, "127.0.0.1", uprefix2), 0);
    if (ukeys)
        mdg_pk_to_b64(mdg_keys_public(ukeys), user2_b64);
    mdg_keys_destroy(&ukeys);

    /* ---- add-node: the node's keys, and the broker's key from its prefix */
    CHECK(t_run(out, sizeof out, "%s --state %s --prefix %s add-node divide --port %d", MDG_ADMIN_BIN, state,
              bprefix, port) == 0);
    snprintf(text, sizeof text, "divide_node --location localhost --port %d\n", port);
    CHECK(has(out, text)); /* the printed command names the port */
    CHECK(field(out, "MESSIDGE_NODE_PK", node_pk_b64, sizeof node_pk_b64) &&
          field(out, "MESSIDGE_NODE_SK", node_sk_b64, sizeof node_sk_b64) &&
          field(out, "MESSIDGE_BROKER_PK", node_bpk_b64, sizeof node_bpk_b64));
    CHECK(strcmp(node_bpk_b64, broker_pk_b64) == 0);
    CHECK(t_run(out, sizeof out, "%s --state %s list", MDG_ADMIN_BIN, state) == 0);
    CHECK(has(out, user_b64) && has(out, user2_b64) && has(out, node_pk_b64) &&
          has(out, "alice@example.com"));

    /* ---- the node connects with those keys and serves "divide" */
    mdg_conn_options nopts = {.port = port, .reflect_errors = true};
    CHECK_RC(mdg_keys_from_b64(&node_keys, node_pk_b64, node_sk_b64), 0);
    memset(node_sk_b64, 0, sizeof node_sk_b64);
    if (!node_keys)
        goto out;
    memcpy(node_pk, mdg_keys_public(node_keys), MDG_KEY_BYTES);
    CHECK_RC(mdg_conn_new_with_keys(&node, "127.0.0.1", broker_pk, node_keys, &nopts), 0);
    mdg_keys_destroy(&node_keys);
    if (!node)
        goto out;
    CHECK_RC(mdg_conn_register_commands(node, node_commands, NULL), 0);
    CHECK_RC(mdg_conn_start(node), 0);
    CHECK_RC(mdg_conn_wait_until_ready(node, WAIT_MS), 0);

    /* ---- alice: a session from her key files, and the offer names the node */
    alice = user_conn(uprefix, port, &alice_offer, &rc);
    CHECK_RC(rc, 0);
    if (!alice)
        goto out;
    size_t sid_len = 0;
    CHECK(mdg_conn_session_id(alice, &sid_len) && sid_len > 0);
    WAIT_FOR(offer_count(&alice_offer) > 0, WAIT_MS);
    CHECK(offer_count(&alice_offer) == 1);
    CHECK(offered(&alice_offer, node_pk));

    /* ---- calls through the generic broker to the node */
    CHECK_RC(divide(alice, node_pk, 10.0, 5.0, &q), 0);
    CHECK(q == 2.0);
    uint8_t alice_pk[MDG_KEY_BYTES];
    pthread_mutex_lock(&seen_lock);
    CHECK(mdg_pk_from_b64(alice_pk, user_b64) == 0 &&
          memcmp(seen_user, alice_pk, MDG_KEY_BYTES) == 0); /* stamped by the broker */
    pthread_mutex_unlock(&seen_lock);
    CHECK_RC(divide(alice, node_pk, 10.0, 0.0, &q), MDG_EREMOTE);
    CHECK(last_error_has("Devisor cannot be zero"));
    /* the broker itself has no commands; an absent node is an error */
    CHECK_RC(divide(alice, NULL, 10.0, 5.0, &q), MDG_EREMOTE);
    uint8_t stranger[MDG_KEY_BYTES];
    memcpy(stranger, node_pk, MDG_KEY_BYTES);
    stranger[0] ^= 1;
    CHECK_RC(divide(alice, stranger, 10.0, 5.0, &q), MDG_EREMOTE);
    CHECK(last_error_has("not connected"));

    /* ---- the same from the command line, with alice's key files */
    CHECK(t_run(out, sizeof out,
              "%s call --prefix %s --port %d --node '%s' divide dividend=10.0 devisor=5.0",
              MDG_CLI_BIN, uprefix, port, node_pk_b64) == 0);
    CHECK(has(out, "\"quotient\": 2.0"));
    CHECK(t_run(out, sizeof out,
              "%s call --prefix %s --port %d --node '%s' divide dividend=10.0 devisor=0.0",
              MDG_CLI_BIN, uprefix, port, node_pk_b64) == 1);
    CHECK(has(out, "Devisor cannot be zero"));
    test_cli(port, uprefix, node_pk_b64);

    /* ---- bob too */
    bob = user_conn(uprefix2, port, &bob_offer, &rc);
    CHECK_RC(rc, 0);
    if (!bob)
        goto out;
    WAIT_FOR(offer_count(&bob_offer) > 0, WAIT_MS);
    CHECK(offered(&bob_offer, node_pk));

    /* ---- carol is a Python 1.x user: 1.x's create_account against our
     * account server writes her key files, which the C tool reads to call
     * natively; and she calls the same C node over the 1.x listener */
    char token3[64] = "", cprefix[320];
    snprintf(cprefix, sizeof cprefix, "%s/carol", base);
    CHECK(legacy_port > 0 && legacy_port != port);
    CHECK(t_run(out, sizeof out, "%s --state %s invite carol@example.com", MDG_ADMIN_BIN, state) == 0);
    CHECK(sscanf(out, "%63s", token3) == 1);
    CHECK(t_run(out, sizeof out, "%s -B %s create-account --prefix %s --location 127.0.0.1 --port %d --token '%s'",
                MDG_PYTHON, MDG_LEGACY_PEER, cprefix, account_port, token3) == 0);
    CHECK(has(out, "account created at 127.0.0.1"));
    CHECK(t_run(out, sizeof out, "%s -B %s create-account --prefix %s/again --location 127.0.0.1 --port %d --token '%s'",
                MDG_PYTHON, MDG_LEGACY_PEER, cprefix, account_port, token3) == 1);
    CHECK(has(out, "Fail:")); /* a used token, as 1.x says it */
    CHECK(t_run(out, sizeof out,
              "%s call --prefix %s --port %d --node '%s' divide dividend=10.0 devisor=5.0",
              MDG_CLI_BIN, cprefix, port, node_pk_b64) == 0);
    CHECK(has(out, "\"quotient\": 2.0"));
    CHECK(t_run(out, sizeof out, "%s -B %s divide --prefix %s --port %d", MDG_PYTHON, MDG_LEGACY_PEER, cprefix,
                legacy_port) == 0);
    CHECK(has(out, "10.0/5.0=2.0"));

    /* ---- revoke alice while she is connected: the broker polls the store
     * every second and closes her session, telling her why */
    int64_t t0 = now_ms();
    CHECK(t_run(out, sizeof out, "%s --state %s revoke '%s'", MDG_ADMIN_BIN, state, user_b64) == 0);
    CHECK_RC(mdg_conn_wait_until_complete(alice, 5000), 0);
    CHECK(now_ms() - t0 < 5000);
    CHECK_RC(mdg_conn_send(alice, "divide", NULL, NULL, 0), MDG_ECLOSED);
    CHECK(last_error_has("revoked"));
    CHECK_RC(divide(alice, node_pk, 10.0, 5.0, &q), MDG_ECLOSED);
    CHECK(last_error_has("revoked"));
    mdg_conn_destroy(&alice);
    /* a new connection with her key is refused at the handshake */
    again = user_conn(uprefix, port, NULL, &rc);
    CHECK_RC(rc, MDG_EAUTH);
    mdg_conn_destroy(&again);
    CHECK(logged("session closed by the broker: key revoked") && logged("refused our key"));
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d --timeout 5000 --node '%s' divide "
                               "dividend=1.0 devisor=1.0",
              MDG_CLI_BIN, uprefix, port, node_pk_b64) == 1);
    CHECK(has(out, "refused our key"));
    /* bob is untouched */
    CHECK_RC(divide(bob, node_pk, 9.0, 3.0, &q), 0);
    CHECK(q == 3.0);

    /* ---- revoke the node: its connection ends, and calls to it fail */
    t0 = now_ms();
    CHECK(t_run(out, sizeof out, "%s --state %s revoke '%s'", MDG_ADMIN_BIN, state, node_pk_b64) ==
          0);
    CHECK_RC(mdg_conn_wait_until_complete(node, 5000), 0);
    CHECK(now_ms() - t0 < 5000);
    int before = atomic_load(&divides);
    CHECK_RC(divide(bob, node_pk, 9.0, 3.0, &q), MDG_EREMOTE);
    CHECK(last_error_has("not connected"));
    CHECK(atomic_load(&divides) == before);
    mdg_conn_disconnect(bob);
    mdg_conn_destroy(&bob);
    mdg_conn_destroy(&node);

    /* ---- export-1x: the admitted keys in the 1.x schema, revoked ones left out */
    char export_path[400];
    snprintf(export_path, sizeof export_path, "%s/export-1x.db", base);
    CHECK(t_run(out, sizeof out, "%s --state %s export-1x %s", MDG_ADMIN_BIN, state, export_path) == 0);
    CHECK(has(out, "exported 2 user(s) and 0 node(s)") && has(out, "left out 2 revoked key(s)"));
    CHECK(t_run(out, sizeof out, "%s --state %s export-1x %s", MDG_ADMIN_BIN, state, export_path) == 1);
    sqlite3 *x = NULL;
    sqlite3_stmt *st = NULL;
    int found = 0;
    CHECK(sqlite3_open_v2(export_path, &x, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
          sqlite3_prepare_v2(x, "SELECT pk, email, json FROM users ORDER BY email", -1, &st, NULL) == SQLITE_OK);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        const char *pk = (const char *)sqlite3_column_text(st, 0);
        found += strcmp(pk, user2_b64) == 0 && strcmp((const char *)sqlite3_column_text(st, 1), "bob@example.com") == 0;
        CHECK(strcmp(pk, user_b64) != 0); /* alice was revoked */
    }
    CHECK(found == 1);
    sqlite3_finalize(st);
    sqlite3_close(x);

    /* ---- a second broker on the same port says why and exits 1 (and,
     * under ASan, leaks nothing on that path) */
    CHECK(t_run(out, sizeof out, "timeout 20 %s --port %d --bind 127.0.0.1 --state %s --prefix %s",
              MDG_BROKER_BIN, port, state, bprefix) == 1);
    CHECK(has(out, "cannot start the broker") && !strstr(out, "Sanitizer"));

    /* ---- SIGTERM: the broker stops cleanly (exit 0, no leaks under ASan) */
    CHECK(stop_broker(WAIT_MS) == 0);
    CHECK(read_file(broker_err, out, sizeof out));
    CHECK(has(out, "revoked: 1 session(s) closed") && has(out, "SIGTERM, stopping") &&
          has(out, "] info: stopped"));
    /* every line: UTC time, program[pid], level */
    snprintf(text, sizeof text, "Z messidge-broker[%d] info: SIGTERM, stopping\n", (int)pid_of_broker);
    CHECK(has(out, text));
    CHECK(!exists(pid_path)); /* the pid file goes on a clean stop */
    CHECK(!strstr(out, "Sanitizer"));

out:
    mdg_conn_destroy(&alice);
    mdg_conn_destroy(&bob);
    mdg_conn_destroy(&again);
    mdg_conn_destroy(&node);
    mdg_keys_destroy(&node_keys);
    if (broker_pid > 0 && stop_broker(WAIT_MS) != 0)
        CHECK(!"the broker stopped cleanly");
    if (broker_out >= 0)
        close(broker_out);
    t_rm_tree(base);
    return t_done("test_tools");
}
