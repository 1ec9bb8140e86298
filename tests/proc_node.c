/* proc_node.c - a node in a process of its own, for test_restart.
 *
 * The test kills it (SIGKILL) in the middle of a stream and of a call it
 * never answers, and starts it again with the same keys.
 *
 *   MDG_NODE_PK, MDG_NODE_SK   the node's key pair (base64)
 *   MDG_BROKER_PK              the broker's public key (base64)
 *   proc_node --port N [--verbose]
 *
 * Commands (all need a reply):
 *   ncall {i}                  reply {i, pid}
 *   stream {n, interval_ms}    n replies {i} (i = 0..n-1), one every
 *                              interval_ms, from a thread of its own
 *                              (mdg_msg_keep, mdg_msg_reply_more, and
 *                              mdg_msg_reply for the last); a stream stops
 *                              at its first failed reply
 *   later {i, ms}              reply {i, pid} after ms, from a thread
 *   streams {}                 reply {closed, last_end, refused}: how many
 *                              streams stopped because a reply failed with
 *                              MDG_ECLOSED (their caller's session had
 *                              ended), how the last failed one ended, and
 *                              how many replies the broker refused ("reply
 *                              refused: ..." notices)
 *   hang {}                    kept and never answered
 *
 * It prints "proc_node: ready pid P" on stdout once the broker has given it
 * a session (the only line it writes there), logs to stderr, and runs until
 * SIGTERM or SIGINT: it then disconnects, stops its stream threads, frees
 * what it kept and exits 0. It reconnects by itself when the broker goes
 * and comes back (the library does). */
#include "../tools/cli_util.h"
#include "messidge.h"

#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_KEPT 256

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_bool stopping;
static pthread_t streams[MAX_KEPT];
static int n_streams;
static mdg_msg *hung[MAX_KEPT]; /* "hang" messages, freed at exit */
static int n_hung;
static int64_t streams_closed; /* streams stopped by MDG_ECLOSED */
static char last_end[512];     /* how the last stream that failed ended */
static int64_t replies_refused; /* the broker's "reply refused" notices */

static mdg_params *with_i(int64_t i)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_int(p, "i", i);
    return p;
}

static void h_ncall(mdg_msg *msg, void *arg)
{
    (void)arg;
    int64_t i = 0;
    if (mdg_params_get_int(mdg_msg_params(msg), "i", &i) != 0) {
        mdg_msg_fail(msg, "ncall needs an integer 'i'");
        return;
    }
    mdg_params *r = with_i(i);
    mdg_params_set_int(r, "pid", (int64_t)getpid());
    mdg_msg_reply(msg, r, NULL, 0);
}

typedef struct stream_job {
    mdg_msg *msg; /* kept */
    int64_t n, interval_ms;
    int64_t delay_ms, base; /* "later": wait first; replies are {base + i} */
} stream_job;

/* A long-term channel: replies from another thread, which waits when the
 * connection's queue is full (the loop thread would not). Stops at the
 * first failed reply (the connection is closing, or the session the call
 * came in on has ended: MDG_ECLOSED) or when asked to. */
static void *stream_thread(void *arg)
{
    stream_job *j = arg;
    if (j->delay_ms > 0)
        usleep((useconds_t)j->delay_ms * 1000);
    for (int64_t i = 0; i < j->n && !atomic_load(&stopping); i++) {
        mdg_params *r = with_i(j->base + i);
        if (j->delay_ms > 0)
            mdg_params_set_int(r, "pid", (int64_t)getpid());
        int rc = i + 1 < j->n ? mdg_msg_reply_more(j->msg, r, NULL, 0) : mdg_msg_reply(j->msg, r, NULL, 0);
        if (rc != 0) {
            fprintf(stderr, "proc_node: stream stopped at %lld: %s\n", (long long)i, mdg_last_error());
            pthread_mutex_lock(&lock);
            if (rc == MDG_ECLOSED)
                streams_closed++;
            snprintf(last_end, sizeof last_end, "%s: %s", mdg_strerror(rc), mdg_last_error());
            pthread_mutex_unlock(&lock);
            break;
        }
        if (j->interval_ms > 0)
            usleep((useconds_t)j->interval_ms * 1000);
    }
    mdg_msg_destroy(&j->msg);
    free(j);
    return NULL;
}

/* Answer msg from a thread of its own: n replies {base + i}. */
static void start_job(mdg_msg *msg, int64_t n, int64_t ivl, int64_t delay_ms, int64_t base)
{
    stream_job *j = calloc(1, sizeof *j);
    if (!j) {
        mdg_msg_fail(msg, "out of memory");
        return;
    }
    j->msg = mdg_msg_keep(msg); /* before the thread can destroy it */
    j->n = n;
    j->interval_ms = ivl;
    j->delay_ms = delay_ms;
    j->base = base;
    pthread_mutex_lock(&lock);
    bool started = n_streams < MAX_KEPT && !atomic_load(&stopping) &&
                   pthread_create(&streams[n_streams], NULL, stream_thread, j) == 0;
    if (started)
        n_streams++;
    pthread_mutex_unlock(&lock);
    if (started)
        return;
    free(j);
    mdg_msg_fail(msg, "cannot start another stream");
    mdg_msg_destroy(&msg); /* kept: ours */
}

static void h_stream(mdg_msg *msg, void *arg)
{
    (void)arg;
    int64_t n = 0, ivl = 0;
    const mdg_params *p = mdg_msg_params(msg);
    if (mdg_params_get_int(p, "n", &n) != 0 || n < 1 || mdg_params_get_int(p, "interval_ms", &ivl) != 0 ||
        ivl < 0) {
        mdg_msg_fail(msg, "stream needs integers n >= 1 and interval_ms >= 0");
        return;
    }
    start_job(msg, n, ivl, 0, 0);
}

static void h_later(mdg_msg *msg, void *arg)
{
    (void)arg;
    int64_t i = 0, ms = 0;
    if (mdg_params_get_int(mdg_msg_params(msg), "i", &i) != 0 ||
        mdg_params_get_int(mdg_msg_params(msg), "ms", &ms) != 0 || ms < 1) {
        mdg_msg_fail(msg, "later needs integers i and ms >= 1");
        return;
    }
    start_job(msg, 1, 0, ms, i);
}

static void h_streams(mdg_msg *msg, void *arg)
{
    (void)arg;
    mdg_params *r = mdg_params_new();
    pthread_mutex_lock(&lock);
    mdg_params_set_int(r, "closed", streams_closed);
    mdg_params_set_str(r, "last_end", last_end);
    mdg_params_set_int(r, "refused", replies_refused);
    pthread_mutex_unlock(&lock);
    mdg_msg_reply(msg, r, NULL, 0);
}

static void h_hang(mdg_msg *msg, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&lock);
    bool room = n_hung < MAX_KEPT;
    if (room)
        hung[n_hung++] = mdg_msg_keep(msg); /* never answered */
    pthread_mutex_unlock(&lock);
    if (!room)
        mdg_msg_fail(msg, "too many hanging calls");
}

static const mdg_cmd commands[] = {
    {"ncall", h_ncall, MDG_REQUIRE("i"), MDG_CMD_NEEDS_REPLY},
    {"stream", h_stream, MDG_REQUIRE("n", "interval_ms"), MDG_CMD_NEEDS_REPLY},
    {"later", h_later, MDG_REQUIRE("i", "ms"), MDG_CMD_NEEDS_REPLY},
    {"streams", h_streams, NULL, MDG_CMD_NEEDS_REPLY},
    {"hang", h_hang, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* The broker's notices: logged, and its refusals of our replies counted. */
static void on_notice(const char *command, const char *text, void *arg)
{
    (void)arg;
    fprintf(stderr, "  [proc_node %d] broker reports an error for '%s': %s\n", (int)getpid(), command, text);
    pthread_mutex_lock(&lock);
    if (strstr(text, "reply refused"))
        replies_refused++;
    pthread_mutex_unlock(&lock);
}

static void log_line(int level, const char *text, void *arg)
{
    (void)level;
    (void)arg;
    fprintf(stderr, "  [proc_node %d] %s\n", (int)getpid(), text);
}

int main(int argc, char **argv)
{
    enum { O_PORT = 1, O_VERBOSE };
    static const struct option longopts[] = {
        {"port", required_argument, NULL, O_PORT},
        {"verbose", no_argument, NULL, O_VERBOSE},
        {NULL, 0, NULL, 0},
    };
    mdg_conn_options co = {.reflect_errors = true};
    bool verbose = false;
    int opt, rc;
    char *end;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case O_PORT:
            co.port = (int)strtol(optarg, &end, 10);
            if (!*optarg || *end || co.port < 1 || co.port > 65535) {
                fprintf(stderr, "proc_node: bad port '%s'\n", optarg);
                return 2;
            }
            break;
        case O_VERBOSE: verbose = true; break;
        default: return 2;
        }
    }
    if (optind != argc || !co.port) {
        fprintf(stderr, "proc_node: --port N is needed\n");
        return 2;
    }
    mdg_set_log(log_line, NULL, verbose ? MDG_LOG_INFO : MDG_LOG_WARN);

    mdg_keys *keys = NULL;
    uint8_t server_pk[MDG_KEY_BYTES];
    const char *pk = getenv("MDG_NODE_PK"), *sk = getenv("MDG_NODE_SK"), *bpk = getenv("MDG_BROKER_PK");
    if (!pk || !sk || !bpk || mdg_keys_from_b64(&keys, pk, sk) != 0 || mdg_pk_from_b64(server_pk, bpk) != 0) {
        fprintf(stderr, "proc_node: MDG_NODE_PK, MDG_NODE_SK and MDG_BROKER_PK must hold the keys\n");
        mdg_keys_destroy(&keys);
        return 2;
    }

    cli_signal_waiter w;
    cli_signal_waiter_init(&w, "proc_node"); /* before any thread starts */

    mdg_conn *conn = NULL;
    rc = mdg_conn_new_with_keys(&conn, "127.0.0.1", server_pk, keys, &co);
    mdg_keys_destroy(&keys);
    if (rc == 0)
        rc = mdg_conn_register_commands(conn, commands, NULL);
    if (rc == 0)
        rc = mdg_conn_set_error_handler(conn, on_notice, NULL);
    if (rc == 0)
        rc = mdg_conn_start(conn);
    if (rc != 0) {
        fprintf(stderr, "proc_node: %s: %s\n", mdg_strerror(rc), mdg_last_error());
        mdg_conn_destroy(&conn);
        return 1;
    }
    if (cli_signal_waiter_start(&w, conn) != 0) {
        fprintf(stderr, "proc_node: cannot start the signal thread\n");
        mdg_conn_destroy(&conn);
        return 1;
    }

    rc = mdg_conn_wait_until_ready(conn, 30000);
    if (rc == 0) {
        printf("proc_node: ready pid %d\n", (int)getpid());
        fflush(stdout);
        rc = mdg_conn_wait_until_complete(conn, -1); /* serves until SIGTERM */
    } else {
        fprintf(stderr, "proc_node: no session: %s: %s\n", mdg_strerror(rc), mdg_last_error());
    }

    /* the signal thread: still waiting unless a signal came */
    int status = cli_signal_waiter_stop(&w) ? 0 : 1;

    /* streams stop at their next reply (the connection is closed) or at
     * the flag, then everything kept is freed */
    atomic_store(&stopping, true);
    mdg_conn_disconnect(conn);
    pthread_mutex_lock(&lock);
    int ns = n_streams;
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < ns; i++)
        pthread_join(streams[i], NULL);
    mdg_conn_destroy(&conn);
    for (int i = 0; i < n_hung; i++)
        mdg_msg_destroy(&hung[i]);
    fprintf(stderr, "proc_node: stopped\n");
    return status;
}
