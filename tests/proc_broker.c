/* proc_broker.c - a broker in a process of its own, for test_restart,
 * test_limits and test_failover.
 *
 * The test kills it (SIGKILL) and starts it again on the same port with
 * the same key pair, or stops it (SIGTERM) and checks that it exits 0.
 *
 *   MDG_BROKER_PK, MDG_BROKER_SK   the broker's key pair (base64), from the
 *                                  environment so that a restart has it too
 *   proc_broker --port N [--node-grace MS] [--session-grace MS]
 *               [--allow-user B64]... [--allow-node B64]... [--allow-any]
 *               [--max-connections N] [--verbose]
 *               [--fleet NATS_URL --fleet-member B64...]  (fleet "test-fleet")
 *
 * Commands:
 *   echo {i?}        reply {i, pid}: pid tells a restarted broker apart
 *   slow {ms}        reply {pid} after ms milliseconds, from another thread
 *                    (a call that is still pending when the broker dies)
 *   hog {on}         on: open /dev/null until the process is out of file
 *                    descriptors (an application using up what the broker's
 *                    budget left it); off: close them. Reply {count}
 * User calls naming a node in the param 'node' are routed to it as usual,
 * and each new user session is offered the connected nodes.
 *
 * It prints "proc_broker: ready port N pid P" on stdout once bound (the only
 * line it writes there), logs to stderr, and runs until SIGTERM or SIGINT,
 * which stops it cleanly: exit status 0. */
#include "../tools/cli_util.h"
#include "messidge.h"

#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------- slow calls */

/* A "slow" call answers from a thread of its own after a delay. At a clean
 * stop the waiting threads are woken, drop their message and are joined
 * before the broker is destroyed. */
#define MAX_SLOW 64

static pthread_mutex_t slow_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slow_cond = PTHREAD_COND_INITIALIZER;
static bool slow_stop;
static pthread_t slow_threads[MAX_SLOW];
static int n_slow;

typedef struct slow_call {
    mdg_msg *msg; /* kept */
    int64_t ms;
} slow_call;

static void *slow_thread(void *arg)
{
    slow_call *sc = arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += sc->ms / 1000;
    until.tv_nsec += (sc->ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&slow_lock);
    int rc = 0;
    while (!slow_stop && rc == 0)
        rc = pthread_cond_timedwait(&slow_cond, &slow_lock, &until);
    bool answer = !slow_stop;
    pthread_mutex_unlock(&slow_lock);
    if (answer) {
        mdg_params *r = mdg_params_new();
        mdg_params_set_int(r, "pid", (int64_t)getpid());
        mdg_msg_reply(sc->msg, r, NULL, 0); /* from another thread: queued to the loop */
    }
    mdg_msg_destroy(&sc->msg);
    free(sc);
    return NULL;
}

static void h_slow(mdg_msg *msg, void *arg)
{
    (void)arg;
    int64_t ms = 0;
    if (mdg_params_get_int(mdg_msg_params(msg), "ms", &ms) != 0 || ms < 0) {
        mdg_msg_fail(msg, "slow needs an integer 'ms' >= 0");
        return;
    }
    slow_call *sc = calloc(1, sizeof *sc);
    if (!sc) {
        mdg_msg_fail(msg, "out of memory");
        return;
    }
    sc->msg = mdg_msg_keep(msg); /* before the thread can reply and destroy it */
    sc->ms = ms;
    /* one locked step: a thread is started only while stop_slow_calls can
     * still see it (and join it) */
    pthread_mutex_lock(&slow_lock);
    bool started = n_slow < MAX_SLOW && !slow_stop &&
                   pthread_create(&slow_threads[n_slow], NULL, slow_thread, sc) == 0;
    if (started)
        n_slow++;
    pthread_mutex_unlock(&slow_lock);
    if (started)
        return; /* the thread replies and destroys the message */
    free(sc);
    mdg_msg_fail(msg, "cannot take another slow call");
    mdg_msg_destroy(&msg); /* kept: ours to destroy */
}

static void stop_slow_calls(void)
{
    pthread_mutex_lock(&slow_lock);
    slow_stop = true;
    pthread_cond_broadcast(&slow_cond);
    int n = n_slow;
    pthread_mutex_unlock(&slow_lock);
    for (int i = 0; i < n; i++)
        pthread_join(slow_threads[i], NULL);
}

/* ------------------------------------------------------------------- hog */

static int *hogged;
static size_t n_hogged, hog_cap;

static void hog_release(void)
{
    while (n_hogged)
        close(hogged[--n_hogged]);
    free(hogged);
    hogged = NULL;
    hog_cap = 0;
}

static void h_hog(mdg_msg *msg, void *arg)
{
    (void)arg;
    bool on = false;
    int64_t count = 0;
    if (mdg_params_get_bool(mdg_msg_params(msg), "on", &on) != 0) {
        mdg_msg_fail(msg, "hog needs a boolean 'on'");
        return;
    }
    if (on) {
        for (;;) {
            if (n_hogged == hog_cap) {
                int *more = realloc(hogged, (hog_cap * 2 + 64) * sizeof *hogged);
                if (!more)
                    break;
                hogged = more;
                hog_cap = hog_cap * 2 + 64;
            }
            int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                break; /* EMFILE: the process is out of descriptors */
            hogged[n_hogged++] = fd;
        }
        count = (int64_t)n_hogged;
    } else {
        count = (int64_t)n_hogged;
        hog_release();
    }
    mdg_params *r = mdg_params_new();
    mdg_params_set_int(r, "count", count);
    mdg_msg_reply(msg, r, NULL, 0);
}

/* ------------------------------------------------------------------ echo */

static void h_echo(mdg_msg *msg, void *arg)
{
    (void)arg;
    int64_t i = 0;
    mdg_params *r = mdg_params_new();
    if (mdg_params_get_int(mdg_msg_params(msg), "i", &i) == 0)
        mdg_params_set_int(r, "i", i);
    mdg_params_set_int(r, "pid", (int64_t)getpid());
    mdg_msg_reply(msg, r, NULL, 0);
}

static const mdg_cmd commands[] = {
    {"echo", h_echo, NULL, MDG_CMD_NEEDS_REPLY},
    {"slow", h_slow, MDG_REQUIRE("ms"), MDG_CMD_NEEDS_REPLY},
    {"hog", h_hog, MDG_REQUIRE("on"), MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* ------------------------------------------------------------------ main */

static void log_line(int level, const char *text, void *arg)
{
    (void)level;
    (void)arg;
    fprintf(stderr, "  [proc_broker %d] %s\n", (int)getpid(), text);
}

static int number(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv)
{
    enum { O_PORT = 1, O_NODE_GRACE, O_SESSION_GRACE, O_USER, O_NODE, O_VERBOSE, O_ANY, O_MAX_CONNS,
           O_FLEET, O_MEMBER };
    static const struct option longopts[] = {
        {"port", required_argument, NULL, O_PORT},
        {"node-grace", required_argument, NULL, O_NODE_GRACE},
        {"session-grace", required_argument, NULL, O_SESSION_GRACE},
        {"allow-user", required_argument, NULL, O_USER},
        {"allow-node", required_argument, NULL, O_NODE},
        {"verbose", no_argument, NULL, O_VERBOSE},
        {"allow-any", no_argument, NULL, O_ANY},
        {"max-connections", required_argument, NULL, O_MAX_CONNS},
        {"fleet", required_argument, NULL, O_FLEET},
        {"fleet-member", required_argument, NULL, O_MEMBER},
        {NULL, 0, NULL, 0},
    };
    mdg_broker_options bo = {.bind_address = "127.0.0.1", .node_grace_ms = 500};
    uint8_t allow[64][MDG_KEY_BYTES], members[8][MDG_KEY_BYTES];
    int roles[64], n_allow = 0, n_members = 0, opt, rc;
    mdg_fleet_options fo = {.name = "test-fleet", .beat_ms = 100, .silence_ms = 5000};
    bool verbose = false, any = false;

    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        int *field = NULL;
        switch (opt) {
        case O_PORT: field = &bo.port; break;
        case O_NODE_GRACE: field = &bo.node_grace_ms; break;
        case O_SESSION_GRACE: field = &bo.session_grace_ms; break;
        case O_USER:
        case O_NODE:
            if (n_allow == 64 || mdg_pk_from_b64(allow[n_allow], optarg) != 0) {
                fprintf(stderr, "proc_broker: bad or too many keys: %s\n", optarg);
                return 2;
            }
            roles[n_allow++] = opt == O_USER ? MDG_ROLE_USER : MDG_ROLE_NODE;
            break;
        case O_VERBOSE: verbose = true; break;
        case O_ANY: any = true; break;
        case O_MAX_CONNS: field = &bo.max_connections; break;
        case O_FLEET: fo.url = optarg; break;
        case O_MEMBER:
            if (n_members == 8 || mdg_pk_from_b64(members[n_members], optarg) != 0) {
                fprintf(stderr, "proc_broker: bad or too many fleet members: %s\n", optarg);
                return 2;
            }
            n_members++;
            break;
        default: return 2;
        }
        if (field && number(optarg, 1, opt == O_PORT ? 65535 : 3600000, field) != 0) {
            fprintf(stderr, "proc_broker: bad number '%s'\n", optarg);
            return 2;
        }
    }
    if (optind != argc || !bo.port) {
        fprintf(stderr, "proc_broker: --port N is needed (a fixed port, so that a restart binds it again)\n");
        return 2;
    }
    mdg_set_log(log_line, NULL, verbose ? MDG_LOG_INFO : MDG_LOG_WARN);

    /* SIGINT/SIGTERM are taken by sigwait below: block them before any
     * thread starts, so that every thread inherits the mask. */
    sigset_t stop_signals;
    cli_block_stop_signals(&stop_signals);

    mdg_keys *keys = NULL;
    const char *pk = getenv("MDG_BROKER_PK"), *sk = getenv("MDG_BROKER_SK");
    if (!pk || !sk || (rc = mdg_keys_from_b64(&keys, pk, sk)) != 0) {
        fprintf(stderr, "proc_broker: MDG_BROKER_PK and MDG_BROKER_SK must hold the key pair: %s\n",
                mdg_last_error());
        return 2;
    }
    mdg_broker *b = NULL;
    rc = mdg_broker_new(&b, keys, &bo);
    mdg_keys_destroy(&keys); /* the broker keeps a copy */
    if (rc == 0)
        rc = mdg_broker_set_commands(b, commands, NULL);
    for (int i = 0; rc == 0 && i < n_allow; i++)
        rc = mdg_broker_allow(b, allow[i], roles[i]);
    if (rc == 0 && any)
        rc = mdg_broker_allow_any(b);
    if (rc == 0 && fo.url)
        rc = mdg_broker_join_fleet(b, &fo);
    for (int i = 0; rc == 0 && i < n_members; i++)
        rc = mdg_broker_fleet_member(b, members[i]);
    if (rc == 0)
        rc = mdg_broker_start(b);
    if (rc != 0) {
        fprintf(stderr, "proc_broker: %s: %s\n", mdg_strerror(rc), mdg_last_error());
        mdg_broker_destroy(&b);
        return 1;
    }
    printf("proc_broker: ready port %d pid %d\n", mdg_broker_port(b), (int)getpid());
    fflush(stdout);

    int sig = 0;
    sigwait(&stop_signals, &sig);
    fprintf(stderr, "proc_broker: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    stop_slow_calls();     /* no thread may reply to a destroyed broker */
    hog_release();
    mdg_broker_destroy(&b); /* closes every session; bounded by the socket linger */
    fprintf(stderr, "proc_broker: stopped\n");
    return 0;
}
