/* bench_scale.c - many idle sessions held by one broker.
 *
 * The broker runs as a child process (this program, re-executed as
 * "serve-mdg"), so that its resident set can be read from /proc/PID/status
 * without the clients' memory in it. 10,000 mdg_conn objects would mean
 * 10,000 contexts and threads, so the idle sessions are plain CURVE DEALER
 * sockets, one context per helper process ("idle-mdg", 5,000 sockets each:
 * a libzmq socket costs two fds and the hard fd limit here is 20,000), that
 * speak just enough of the wire format (src/wire.c) to open a session: a
 * HELLO (one head frame: header [2, 1, 0, 0, 0, "", 0], params {}) and then the WELCOME.
 * To the broker they are sessions like any other. One real mdg_conn in
 * this process measures the round trip before and while they are held.
 *
 * The same is done against the raw libzmq echo server ("serve-zmq", one
 * 64-byte round trip per connection) to show what libzmq alone holds per
 * idle CURVE connection. */
#include "bench.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#define OPEN_BATCH 100 /* the listen backlog of a libzmq socket is 100 */

typedef struct child {
    int pid;
    FILE *in, *out; /* its stdin (we close it to stop it) and stdout */
} child;

/* Run this program again with argv (NULL-terminated) as a child process. */
static int child_start(child *c, const char *self, char *const argv[])
{
    int to[2], from[2];
    *c = (child){0};
    if (pipe(to))
        return -1;
    if (pipe(from)) {
        close(to[0]);
        close(to[1]);
        return -1;
    }
    c->pid = fork();
    if (c->pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        close(to[0]);
        close(to[1]);
        close(from[0]);
        close(from[1]);
        execv(self, argv);
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    if (c->pid < 0) {
        close(to[1]);
        close(from[0]);
        return -1;
    }
    c->in = fdopen(to[1], "w");
    c->out = fdopen(from[0], "r");
    return c->in && c->out ? 0 : -1;
}

/* The child's next line of output (NUL-terminated, no newline). */
static int child_line(child *c, char *buf, size_t len)
{
    if (!c->out || !fgets(buf, (int)len, c->out))
        return -1;
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

static void child_stop(child *c)
{
    if (c->in)
        fclose(c->in); /* EOF on its stdin: it shuts down */
    if (c->pid > 0) {
        int st;
        for (int i = 0; i < 200; i++) {
            if (waitpid(c->pid, &st, WNOHANG) == c->pid) {
                c->pid = 0;
                break;
            }
            usleep(50 * 1000);
        }
        if (c->pid > 0) { /* ours, and stuck: end it */
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &st, 0);
        }
    }
    if (c->out)
        fclose(c->out);
    *c = (child){0};
}

/* --------------------------------------------------------- idle sessions */

typedef struct idle {
    void *ctx;
    void **socks;
    int n;    /* sockets */
    int open; /* sessions that got their WELCOME (echo) */
} idle;

static void idle_close(idle *I)
{
    for (int i = 0; i < I->n; i++)
        zmq_close(I->socks[i]);
    if (I->ctx)
        zmq_ctx_term(I->ctx);
    free(I->socks);
    *I = (idle){0};
}

/* A CURVE client socket connected to endpoint (bench.h). */
void *raw_dealer(void *ctx, const char *endpoint, const char *server_pk, const char *pk,
                 const char *sk, int linger, int rcvhwm)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    if (s && (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server_pk, 40) ||
              zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pk, 40) ||
              zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sk, 40) ||
              zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger) ||
              (rcvhwm >= 0 && zmq_setsockopt(s, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm)) ||
              zmq_connect(s, endpoint))) {
        int err = errno;
        zmq_close(s);
        errno = err;
        return NULL;
    }
    return s;
}

int raw_hello(void *s)
{
    /* one head frame: the header [2,1,0,0,0,"",0], then the params {} */
    static const uint8_t hello[] = {0x87, 2, 1, 0, 0, 0, 0x60, 0, 0xa0};
    return zmq_send(s, hello, sizeof hello, 0) < 0;
}

/* The first reply on a fresh socket: the WELCOME (mdg) or the echo. */
int raw_first_reply(void *s, bool mdg)
{
    zmq_msg_t m;
    int frames = 0, ok = 0, more = 1;
    while (more) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, frames ? 0 : ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return frames == 0 && errno == EAGAIN ? 1 : -1;
        }
        const uint8_t *d = zmq_msg_data(&m);
        if (frames == 0)
            ok = mdg ? zmq_msg_size(&m) > 2 && d[0] == 0x87 && d[2] == 2 /* kind WELCOME */
                     : zmq_msg_size(&m) == PARAMS_BYTES;
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        frames++;
    }
    return ok ? 0 : -1;
}

/* Open up to n sessions, OPEN_BATCH at a time, until `secs` have passed;
 * I->open counts those that got their first reply. -1 on a hard error. */
static int idle_open(idle *I, int port, const char *server_pk, int n, bool mdg, double secs,
                     char *why, size_t wlen)
{
    char pk[41], sk[41], ep[64];
    double deadline = now_s() + secs;
    *I = (idle){0};
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    if (zmq_curve_keypair(pk, sk) || !(I->socks = calloc((size_t)n, sizeof *I->socks)) ||
        !(I->ctx = zmq_ctx_new()) || zmq_ctx_set(I->ctx, ZMQ_MAX_SOCKETS, n + 64)) {
        snprintf(why, wlen, "cannot set up %d sockets: %s", n, zmq_strerror(errno));
        return -1;
    }
    for (int base = 0; base < n && now_s() < deadline; base += OPEN_BATCH) {
        int end = base + OPEN_BATCH < n ? base + OPEN_BATCH : n;
        for (int i = base; i < end; i++) {
            void *s = raw_dealer(I->ctx, ep, server_pk, pk, sk, 0, -1);
            if (!s) {
                snprintf(why, wlen, "socket %d: %s", i, zmq_strerror(errno));
                return -1;
            }
            I->socks[I->n++] = s;
            if (mdg ? raw_hello(s) : zmq_send(s, payload, PARAMS_BYTES, 0) < 0) {
                snprintf(why, wlen, "socket %d: %s", i, zmq_strerror(errno));
                return -1;
            }
        }
        /* Wait for the batch (a slow broker may not answer before the deadline). */
        for (int i = base; i < end;) {
            int rc = raw_first_reply(I->socks[i], mdg);
            if (rc < 0) {
                snprintf(why, wlen, "session %d: unexpected first reply", i);
                return -1;
            }
            if (rc == 0) {
                I->open++;
                i++;
            } else if (now_s() >= deadline) {
                return 0;
            } else {
                zmq_pollitem_t it = {I->socks[i], 0, ZMQ_POLLIN, 0};
                zmq_poll(&it, 1, 100);
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------ child programs */

/* serve-mdg | serve-zmq: a server that prints "READY port pk-z85" and runs
 * until stdin closes; serve-mdg-node: a broker and a node serving
 * node_echo, "READY port broker-pk-b64 node-pk-b64" (bench_python.py). idle-mdg | idle-zmq PORT PK N SECS: opens up to N
 * idle sessions within SECS seconds, prints "OPEN count" (or "FAIL why")
 * and holds them until stdin closes. */
int serve_child(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc == 1 && strcmp(argv[0], "serve-mdg") == 0)
        return mdg_serve_child(false);
    if (argc == 1 && strcmp(argv[0], "serve-mdg-node") == 0)
        return mdg_serve_child(true);
    if (argc == 1 && strcmp(argv[0], "serve-zmq") == 0)
        return zmq_serve_child();
    if (argc == 5 && strncmp(argv[0], "idle-", 5) == 0) {
        idle I;
        char why[160] = "";
        int n = atoi(argv[3]);
        raise_nofile(2L * n + 256);
        for (int i = 0; i < PARAMS_BYTES; i++)
            payload[i] = (uint8_t)i;
        if (idle_open(&I, atoi(argv[1]), argv[2], n, strcmp(argv[0], "idle-mdg") == 0,
                      atof(argv[4]), why, sizeof why))
            printf("FAIL %s\n", why);
        else
            printf("OPEN %d\n", I.open);
        fflush(stdout);
        char buf[64];
        while (fgets(buf, sizeof buf, stdin))
            ;
        idle_close(&I);
        return 0;
    }
    fprintf(stderr, "unknown child mode %s\n", argv[0]);
    return 2;
}

/* ------------------------------------------------------------- scenario */

/* Median p50/p99 of cfg.runs RTT runs of the active client. */
static bool active_rtt(void *conn, double *p50, double *p99, char *why, size_t wlen)
{
    double a[64], b[64];
    int n = 0;
    for (int i = 0; i < cfg.runs && i < 64; i++) {
        bres r = mdg_ext_rtt(conn);
        if (!r.ok) {
            snprintf(why, wlen, "%s", r.why);
            return false;
        }
        a[n] = r.p50;
        b[n++] = r.p99;
    }
    *p50 = median(a, n);
    *p99 = median(b, n);
    return true;
}

#define PER_HELPER 5000 /* idle sessions per helper process: 2 fds each */
#define MAX_HELPERS 64
#define OPEN_SECS 100.0 /* at most this long to open them all */

/* Open n idle sessions from helper processes (their fds and memory are
 * their own) and report the server's RSS growth per open session. */
static bool open_idle(const char *self, pid_t server, int port, const char *pk, int n, bool mdg,
                      double *kib, int *opened, double *secs, child *helpers, int *nh, char *why,
                      size_t wlen)
{
    char line[200] = "", sport[16], count[16], limit[16];
    usleep(200 * 1000);
    long before = rss_kib(server);
    double t0 = now_s();
    snprintf(sport, sizeof sport, "%d", port);
    snprintf(limit, sizeof limit, "%.0f", OPEN_SECS);
    for (*nh = 0; *nh * PER_HELPER < n && *nh < MAX_HELPERS; (*nh)++) {
        int k = n - *nh * PER_HELPER < PER_HELPER ? n - *nh * PER_HELPER : PER_HELPER;
        snprintf(count, sizeof count, "%d", k);
        char *argv[] = {(char *)self, mdg ? "idle-mdg" : "idle-zmq", sport, (char *)pk, count, limit,
                        NULL};
        if (child_start(&helpers[*nh], self, argv)) {
            snprintf(why, wlen, "cannot start a client helper");
            (*nh)++;
            return false;
        }
    }
    *opened = 0;
    for (int i = 0; i < *nh; i++) {
        int k;
        if (child_line(&helpers[i], line, sizeof line) || sscanf(line, "OPEN %d", &k) != 1) {
            snprintf(why, wlen, "idle sessions: %.100s", line[0] ? line : "a helper died");
            return false;
        }
        *opened += k;
    }
    *secs = now_s() - t0;
    usleep(500 * 1000); /* let the last handshakes settle */
    long after = rss_kib(server);
    if (!before || !after) {
        snprintf(why, wlen, "cannot read /proc/%d/status", (int)server);
        return false;
    }
    if (!*opened) {
        snprintf(why, wlen, "no session opened in %.0f s", OPEN_SECS);
        return false;
    }
    *kib = (double)(after - before) / *opened;
    return true;
}

static void close_idle(child *helpers, int *nh)
{
    for (int i = 0; i < *nh; i++)
        child_stop(&helpers[i]);
    *nh = 0;
}

/* Start a server child; its port and Z85 key from its READY line. */
static int server_start(child *c, const char *self, const char *mode, int *port, char pk[41])
{
    char line[200];
    char *argv[] = {(char *)self, (char *)mode, NULL};
    if (child_start(c, self, argv) || child_line(c, line, sizeof line) ||
        sscanf(line, "READY %d %40s", port, pk) != 2)
        return -1;
    return 0;
}

scale_res scale_run(const char *self)
{
    scale_res r = {.sessions = cfg.sessions};
    child srv = {0}, helpers[MAX_HELPERS];
    int nh = 0, port;
    char pk[41];
    uint8_t spk[32];
    void *conn = NULL;
    double secs;
    if (cfg.sessions > PER_HELPER * MAX_HELPERS) {
        snprintf(r.why, sizeof r.why, "at most %d sessions", PER_HELPER * MAX_HELPERS);
        return r;
    }
    /* The broker holds one fd per session. */
    long lim = raise_nofile(cfg.sessions + 1024L);
    if (lim < cfg.sessions + 256L) {
        snprintf(r.why, sizeof r.why, "RLIMIT_NOFILE is %ld, too low for %d sessions", lim,
                 cfg.sessions);
        return r;
    }

    /* libmessidge: RTT with no idle session, RSS growth, RTT with them. */
    if (server_start(&srv, self, "serve-mdg", &port, pk) || !zmq_z85_decode(spk, pk)) {
        snprintf(r.why, sizeof r.why, "cannot start the broker child");
        goto out;
    }
    if (!(conn = mdg_ext_connect(port, spk))) {
        snprintf(r.why, sizeof r.why, "the active client cannot connect");
        goto out;
    }
    if (!active_rtt(conn, &r.rtt0_p50, &r.rtt0_p99, r.why, sizeof r.why) ||
        !open_idle(self, srv.pid, port, pk, cfg.sessions, true, &r.mdg_kib, &r.opened,
                   &r.connect_secs, helpers, &nh, r.why, sizeof r.why) ||
        !active_rtt(conn, &r.rttn_p50, &r.rttn_p99, r.why, sizeof r.why))
        goto out;
    mdg_ext_close(&conn);
    close_idle(helpers, &nh);
    child_stop(&srv);

    /* raw libzmq: RSS growth only. */
    if (server_start(&srv, self, "serve-zmq", &port, pk)) {
        snprintf(r.why, sizeof r.why, "cannot start the raw server child");
        goto out;
    }
    if (!open_idle(self, srv.pid, port, pk, cfg.sessions, false, &r.zmq_kib, &r.zmq_opened, &secs,
                   helpers, &nh, r.why, sizeof r.why))
        goto out;
    r.ok = true;
out:
    mdg_ext_close(&conn);
    close_idle(helpers, &nh);
    child_stop(&srv);
    return r;
}
