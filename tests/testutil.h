/* testutil.h - what every test program shares: checks that count, and a
 * broker on loopback on a free port with clients that connect to it. */
#ifndef MDG_TESTUTIL_H
#define MDG_TESTUTIL_H

#include "messidge.h"
#include "testsys.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int t_checks, t_failed;

#define CHECK(expr)                                                                          \
    do {                                                                                     \
        t_checks++;                                                                          \
        if (!(expr)) {                                                                       \
            t_failed++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__, \
                    #expr, mdg_last_error());                                                \
        }                                                                                    \
    } while (0)

#define CHECK_RC(call, want)                                                                      \
    do {                                                                                          \
        int rc_ = (call);                                                                         \
        t_checks++;                                                                               \
        if (rc_ != (want)) {                                                                      \
            t_failed++;                                                                           \
            fprintf(stderr, "%s:%d: %s returned %d (%s), wanted %d (%s); last error: %s\n",        \
                    __FILE__, __LINE__, #call, rc_, mdg_strerror(rc_), want, mdg_strerror(want), \
                    mdg_last_error());                                                            \
        }                                                                                         \
    } while (0)

static inline int t_done(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, t_checks, t_failed);
    return t_failed ? 1 : 0;
}

/* Log capture: tests assert that the broker logged a refusal. */
static pthread_mutex_t t_log_lock = PTHREAD_MUTEX_INITIALIZER;
static char t_log[1 << 16];
static size_t t_log_len; /* not strlen: a flood of lines must stay cheap */

static void t_log_fn(int level, const char *text, void *arg)
{
    (void)arg;
    size_t len = strlen(text);
    pthread_mutex_lock(&t_log_lock);
    if (t_log_len + len + 2 < sizeof t_log) {
        memcpy(t_log + t_log_len, text, len);
        t_log_len += len;
        t_log[t_log_len++] = '\n';
        t_log[t_log_len] = '\0';
    }
    pthread_mutex_unlock(&t_log_lock);
    if (level <= MDG_LOG_WARN || getenv("MDG_TEST_VERBOSE"))
        fprintf(stderr, "  [log] %s\n", text);
}

static inline void t_capture_log(void)
{
    mdg_set_log(t_log_fn, NULL, MDG_LOG_DEBUG);
}

static inline bool t_logged(const char *needle)
{
    pthread_mutex_lock(&t_log_lock);
    bool found = strstr(t_log, needle) != NULL;
    pthread_mutex_unlock(&t_log_lock);
    return found;
}

/* How many times needle is in the captured log. */
static inline int t_log_count(const char *needle)
{
    int n = 0;
    pthread_mutex_lock(&t_log_lock);
    for (const char *at = t_log; (at = strstr(at, needle)) != NULL; at += strlen(needle))
        n++;
    pthread_mutex_unlock(&t_log_lock);
    return n;
}

static inline void t_clear_log(void)
{
    pthread_mutex_lock(&t_log_lock);
    t_log[0] = '\0';
    t_log_len = 0;
    pthread_mutex_unlock(&t_log_lock);
}

/* Run a shell command (printf-style); out gets its stdout and stderr. The
 * exit status, or -1 when it did not exit normally. */
static inline int t_run(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline int t_run(char *out, size_t len, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd - 8, fmt, ap);
    va_end(ap);
    strcat(cmd, " 2>&1");
    FILE *f = popen(cmd, "r");
    size_t n = 0;
    out[0] = '\0';
    if (!f)
        return -1;
    while (n + 1 < len) {
        size_t k = fread(out + n, 1, len - 1 - n, f);
        if (k == 0)
            break;
        n += k;
    }
    out[n] = '\0';
    int st = pclose(f);
    if (getenv("MDG_TEST_VERBOSE"))
        fprintf(stderr, "$ %s\n%s[exit %d]\n", cmd, out, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The start of a (small) file, NUL-terminated, into buf: true when it
 * had something. */
static inline bool t_read_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, len - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    return n > 0;
}

/* Poll for a condition until it holds or ms have passed by the clock
 * (however long each look takes on a busy machine). */
#define WAIT_UNTIL(cond, ms)                                                    \
    do {                                                                        \
        for (int64_t w_until = now_ms() + (ms); !(cond) && now_ms() < w_until;) \
            usleep(20000);                                                      \
    } while (0)

/* Poll for a condition (other threads set it) for up to ms. */
#define WAIT_FOR(cond, ms)                                       \
    do {                                                         \
        for (int w_ = 0; w_ < (ms) / 10 && !(cond); w_++)        \
            usleep(10000);                                       \
    } while (0)

/* The guide's divide node, shared by the tests: the quotient, the guide's
 * error texts, and any bulk echoed back as it came. */
static inline void t_divide(mdg_msg *m, void *arg)
{
    (void)arg;
    double a, b;
    size_t blen = 0;
    const void *bulk = mdg_msg_bulk(m, &blen);
    if (mdg_params_get_double(mdg_msg_params(m), "dividend", &a) ||
        mdg_params_get_double(mdg_msg_params(m), "devisor", &b)) {
        mdg_msg_fail(m, "Divide only takes two floats.");
        return;
    }
    if (b == 0) {
        mdg_msg_fail(m, "Devisor cannot be zero");
        return;
    }
    mdg_params *r = mdg_params_new();
    mdg_params_set_double(r, "quotient", a / b);
    mdg_msg_reply(m, r, bulk, blen);
}

/* Say who the broker says called: the user and session it stamped, how
 * many params came, whether a "node" came (it must not); any bulk echoed. */
static inline void t_whoami(mdg_msg *m, void *arg)
{
    (void)arg;
    mdg_params *r = mdg_params_new();
    const uint8_t *v;
    size_t len;
    if (mdg_params_get_bytes(mdg_msg_params(m), "user", &v, &len) == 0)
        mdg_params_set_bytes(r, "user", v, len);
    if (mdg_params_get_bytes(mdg_msg_params(m), "session", &v, &len) == 0)
        mdg_params_set_bytes(r, "session", v, len);
    mdg_params_set_int(r, "count", (int64_t)mdg_params_count(mdg_msg_params(m)));
    mdg_params_set_bool(r, "saw_node", mdg_params_has(mdg_msg_params(m), "node"));
    size_t blen;
    const void *bulk = mdg_msg_bulk(m, &blen);
    mdg_msg_reply(m, r, bulk, blen);
}

/* A node command "stream": n replies (param "n", default T_STREAM_PARTS)
 * numbered by "i", sent from a thread of its own, the last one final;
 * "pace_us" between replies (a stream that lasts a while). */
#define T_STREAM_PARTS 10000

typedef struct t_stream_job {
    mdg_msg *m;
    int64_t n, pace_us;
} t_stream_job;

static inline void *t_stream_thread(void *arg)
{
    t_stream_job *j = arg;
    for (int64_t i = 0; i < j->n; i++) {
        mdg_params *r = mdg_params_new();
        mdg_params_set_int(r, "i", i);
        if (i + 1 < j->n)
            mdg_msg_reply_more(j->m, r, NULL, 0);
        else
            mdg_msg_reply(j->m, r, NULL, 0);
        if (j->pace_us)
            usleep((useconds_t)j->pace_us);
    }
    mdg_msg_destroy(&j->m);
    free(j);
    return NULL;
}

static inline void t_stream(mdg_msg *m, void *arg)
{
    (void)arg;
    t_stream_job *j = calloc(1, sizeof *j);
    j->n = T_STREAM_PARTS;
    mdg_params_get_int(mdg_msg_params(m), "n", &j->n);
    mdg_params_get_int(mdg_msg_params(m), "pace_us", &j->pace_us);
    j->m = mdg_msg_keep(m);
    pthread_t t;
    pthread_create(&t, NULL, t_stream_thread, j);
    pthread_detach(t);
}

/* A caller reading a stream of replies numbered by param "i": counts them
 * in order; while hold is set its callback stalls (a caller that stopped
 * reading). The callback of mdg_conn_send_cb(..., t_on_part, &reader). */
typedef struct t_reader {
    atomic_long next, bad;
    atomic_int done, hold, errors;
} t_reader;

static inline void t_on_part(mdg_msg *r, void *arg)
{
    t_reader *rd = arg;
    while (atomic_load(&rd->hold))
        usleep(1000);
    if (mdg_msg_is_error(r)) {
        fprintf(stderr, "stream error: %s\n", mdg_msg_error(r));
        atomic_fetch_add(&rd->errors, 1);
        atomic_store(&rd->done, 1);
        return;
    }
    int64_t i = -1;
    mdg_params_get_int(mdg_msg_params(r), "i", &i);
    if (i != atomic_load(&rd->next))
        atomic_fetch_add(&rd->bad, 1);
    atomic_store(&rd->next, i + 1);
    if (!mdg_msg_more(r))
        atomic_store(&rd->done, 1);
}

/* Params that address node pk: the "node" param the broker routes by. */
static inline mdg_params *t_to_node(const uint8_t *pk)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_bytes(p, "node", pk, MDG_KEY_BYTES);
    return p;
}

/* dividend / devisor at the divide node pk, called through u (waiting up
 * to ms): the call's result, *q the quotient (-1 without one). */
static inline int t_divide_via(mdg_conn *u, const uint8_t *pk, double dividend, double devisor, int ms, double *q)
{
    mdg_params *p = t_to_node(pk);
    mdg_msg *r = NULL;
    mdg_params_set_double(p, "dividend", dividend);
    mdg_params_set_double(p, "devisor", devisor);
    int rc = mdg_conn_call(u, "divide", p, NULL, 0, ms, &r);
    *q = -1;
    if (rc == 0 && mdg_params_get_double(mdg_msg_params(r), "quotient", q) != 0)
        rc = MDG_ETYPE;
    mdg_msg_destroy(&r);
    return rc;
}

/* A started broker on 127.0.0.1 on a free port. */
static inline mdg_broker *t_broker(mdg_keys **bkeys, const mdg_cmd *cmds, void *arg,
                                   const mdg_broker_hooks *hooks, bool allow_any)
{
    mdg_broker *b = NULL;
    mdg_broker_options o = {.bind_address = "127.0.0.1", .port = 0};
    if (mdg_keys_new(bkeys) || mdg_broker_new(&b, *bkeys, &o)) {
        fprintf(stderr, "cannot make a broker: %s\n", mdg_last_error());
        exit(2);
    }
    if (cmds)
        mdg_broker_set_commands(b, cmds, arg);
    if (hooks)
        mdg_broker_set_hooks(b, hooks, arg);
    if (allow_any)
        mdg_broker_allow_any(b);
    if (mdg_broker_start(b)) {
        fprintf(stderr, "cannot start the broker: %s\n", mdg_last_error());
        exit(2);
    }
    return b;
}

/* A client with new keys for broker b (keys returned when wanted). */
static inline mdg_conn *t_client(const mdg_broker *b, const mdg_keys *bkeys, mdg_keys **ckeys_out,
                                 const mdg_cmd *cmds, void *arg)
{
    mdg_keys *ck = NULL;
    mdg_conn *c = NULL;
    mdg_conn_options o = {.port = mdg_broker_port(b)};
    if (mdg_keys_new(&ck) || mdg_conn_new_with_keys(&c, "127.0.0.1", mdg_keys_public(bkeys), ck, &o)) {
        fprintf(stderr, "cannot make a client: %s\n", mdg_last_error());
        exit(2);
    }
    if (cmds)
        mdg_conn_register_commands(c, cmds, arg);
    if (ckeys_out)
        *ckeys_out = ck;
    else
        mdg_keys_destroy(&ck);
    return c;
}

/* A blocking call on a thread of its own, so that the test can act while
 * it waits (close the connection under it, kill a broker). */
typedef struct t_call {
    mdg_conn *c;
    const char *command;
    mdg_params *params; /* taken by the call */
    int timeout_ms;
    int rc;
    char text[512]; /* mdg_last_error() of a failed call, else "" */
    int64_t pid;    /* the reply's "pid" (proc_broker answers with its own) */
    int64_t ended;  /* now_ms() when the call returned */
    atomic_int done;
    pthread_t t;
} t_call;

static inline void *t_call_thread(void *arg)
{
    t_call *j = arg;
    mdg_msg *r = NULL;
    j->rc = mdg_conn_call(j->c, j->command, j->params, NULL, 0, j->timeout_ms, &r);
    snprintf(j->text, sizeof j->text, "%s", j->rc ? mdg_last_error() : "");
    if (r)
        mdg_params_get_int(mdg_msg_params(r), "pid", &j->pid);
    mdg_msg_destroy(&r);
    j->ended = now_ms();
    atomic_store(&j->done, 1);
    return NULL;
}

/* Start the call; pthread_join(j->t, NULL) waits for it. */
static inline void t_call_start(t_call *j, mdg_conn *c, const char *command, mdg_params *p,
                                int timeout_ms)
{
    memset(j, 0, sizeof *j);
    j->c = c;
    j->command = command;
    j->params = p;
    j->timeout_ms = timeout_ms;
    if (pthread_create(&j->t, NULL, t_call_thread, j) != 0) {
        fprintf(stderr, "cannot start a call thread\n");
        exit(2);
    }
}

#endif
