/* test_limits.c - a broker at its file-descriptor limit (issue 11, item 7).
 *
 * proc_broker runs as a child process with RLIMIT_NOFILE at FD_LIMIT; the
 * clients are connections in this process.
 *
 *   a. At start the broker logs how many connections the limit allows (N).
 *   b. N clients get sessions. Further clients fail fast, well within their
 *      timeout, with MDG_EBUSY ("connection limit"), and the broker logs the
 *      refusals; meanwhile the N sessions' calls are answered and the
 *      broker does not spin (its CPU time over an interval, from /proc).
 *   c. When a session ends, a refused client gets in by itself.
 *   d. With the process out of descriptors (the "hog" command takes them,
 *      as an application might), a new connection is not left in the
 *      listen backlog: within a moment it is closed, or taken by libzmq
 *      (which then greets it). The broker logs the failed accepts with the
 *      limit and does not spin; open sessions are served; a new client
 *      is refused, or sees its links fail, not a silent wait. Once the
 *      descriptors are free again new clients get in.
 *   e. SIGTERM stops the broker cleanly (exit status 0).
 *
 * Usage: test_limits [PROC_BROKER] (default: next to this program). */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#define FD_LIMIT 64       /* the broker child's RLIMIT_NOFILE */
#define EXTRA 3           /* clients past the limit */
#define WAIT_MS 20000     /* the clients' own timeout */
#define FAST_MS 5000      /* "fails fast": well under WAIT_MS */
#define WINDOW_MS 1500    /* CPU time is measured over this long */
#define MAX_CPU_SHARE 0.4 /* of one core over the window; a spinning broker takes all of one */
#define MAX_CLIENTS 128

extern char **environ;

static pid_t broker_pid;
static int broker_out = -1, port;
static char log_path[] = "/tmp/mdg-test-limits-XXXXXX";
static mdg_keys *bkeys;
static char broker_path[PATH_MAX];


/* Stop the test where it cannot go on (cleanup runs at exit). */
static void need(bool ok, const char *what)
{
    if (ok)
        return;
    fprintf(stderr, "test_limits: cannot go on: %s (%d checks failed before)\n", what, t_failed);
    exit(1);
}

/* ------------------------------------------------------------ the broker */

static void cleanup(void)
{
    if (broker_pid > 0) {
        kill(broker_pid, SIGKILL);
        waitpid(broker_pid, NULL, 0);
        broker_pid = 0;
    }
    unlink(log_path);
}

/* proc_broker with RLIMIT_NOFILE at FD_LIMIT, its log (stderr) in
 * log_path; returns once it says it is ready. Everything is prepared
 * before fork: the child only makes system calls before exec. */
static void start_broker(void)
{
    char portarg[16], e_pk[80], e_sk[80], pk[MDG_KEY_B64_LEN + 1], sk[MDG_KEY_B64_LEN + 1];
    snprintf(portarg, sizeof portarg, "%d", port);
    mdg_pk_to_b64(mdg_keys_public(bkeys), pk);
    mdg_pk_to_b64(mdg_keys_secret(bkeys), sk);
    snprintf(e_pk, sizeof e_pk, "MDG_BROKER_PK=%s", pk);
    snprintf(e_sk, sizeof e_sk, "MDG_BROKER_SK=%s", sk);
    char *args[] = {"proc_broker", "--port", portarg, "--allow-any", NULL};
    static char *envp[512];
    int n = 0;
    for (char **e = environ; *e && n < 500; e++)
        envp[n++] = *e;
    envp[n++] = e_pk;
    envp[n++] = e_sk;
    envp[n] = NULL;
    int logfd = mkstemp(log_path), out[2];
    need(logfd >= 0 && pipe2(out, O_CLOEXEC) == 0, "cannot make the broker's log file and pipe");
    struct rlimit rl = {.rlim_cur = FD_LIMIT, .rlim_max = FD_LIMIT};
    pid_t parent = getpid();
    broker_pid = fork();
    need(broker_pid >= 0, "fork");
    if (broker_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        if (getppid() != parent || setrlimit(RLIMIT_NOFILE, &rl) != 0)
            _exit(127);
        dup2(out[1], 1);
        dup2(logfd, 2);
        execve(broker_path, args, envp);
        _exit(127);
    }
    close(out[1]);
    close(logfd);
    broker_out = out[0];
    char line[256];
    size_t len = 0;
    int64_t deadline = now_ms() + WAIT_MS;
    while (now_ms() < deadline && len < sizeof line - 1) {
        struct pollfd pf = {.fd = broker_out, .events = POLLIN};
        if (poll(&pf, 1, (int)(deadline - now_ms())) <= 0)
            continue;
        if (read(broker_out, line + len, 1) != 1)
            break;
        if (line[len++] == '\n')
            return;
    }
    need(false, "proc_broker did not say it is ready");
}

/* The broker's log so far (stderr of the child). */
static const char *broker_log(void)
{
    static char buf[1 << 20];
    int fd = open(log_path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0)
        close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static bool broker_logged(const char *needle)
{
    return strstr(broker_log(), needle) != NULL;
}

/* The broker's CPU time (user + system) in ms, from /proc/PID/stat. */
static int64_t broker_cpu_ms(void)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)broker_pid);
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long utime = 0, stime = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (int64_t)((utime + stime) * 1000 / (unsigned long long)sysconf(_SC_CLK_TCK));
}

/* The broker's CPU share of one core while fn runs for WINDOW_MS (fn is
 * called repeatedly and should do a little and return). */
static double cpu_share_during(void (*fn)(void *), void *arg)
{
    int64_t cpu0 = broker_cpu_ms(), t0 = now_ms();
    while (now_ms() - t0 < WINDOW_MS)
        fn(arg);
    int64_t cpu1 = broker_cpu_ms(), t1 = now_ms();
    double share = (double)(cpu1 - cpu0) / (double)(t1 - t0);
    printf("  broker CPU: %lld ms in %lld ms (%.0f%% of a core)\n", (long long)(cpu1 - cpu0), (long long)(t1 - t0),
           share * 100);
    return cpu0 < 0 || cpu1 < 0 ? 1.0 : share;
}

/* ------------------------------------------------------------ the clients */

static mdg_conn *new_client(void)
{
    mdg_keys *ck = NULL;
    mdg_conn *c = NULL;
    mdg_conn_options o = {.port = port, .reconnect_min_ms = 100, .reconnect_max_ms = 1000};
    need(mdg_keys_new(&ck) == 0 && mdg_conn_new_with_keys(&c, "127.0.0.1", mdg_keys_public(bkeys), ck, &o) == 0 &&
             mdg_conn_start(c) == 0,
         "cannot make a client");
    mdg_keys_destroy(&ck);
    return c;
}

static int call_echo(mdg_conn *c, int64_t i)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_int(p, "i", i);
    mdg_msg *r = NULL;
    int rc = mdg_conn_call(c, "echo", p, NULL, 0, WAIT_MS, &r);
    int64_t got = -1;
    if (rc == 0 && (mdg_params_get_int(mdg_msg_params(r), "i", &got) != 0 || got != i))
        rc = MDG_EPROTO;
    mdg_msg_destroy(&r);
    return rc;
}

static int hog(mdg_conn *c, bool on, int64_t *count)
{
    mdg_params *p = mdg_params_new();
    mdg_params_set_bool(p, "on", on);
    mdg_msg *r = NULL;
    int rc = mdg_conn_call(c, "hog", p, NULL, 0, WAIT_MS, &r);
    if (rc == 0)
        rc = mdg_params_get_int(mdg_msg_params(r), "count", count);
    mdg_msg_destroy(&r);
    return rc;
}

/* Every open session answers a call. */
static void check_sessions_served(mdg_conn **cs, int n, const char *when)
{
    int ok = 0;
    for (int i = 0; i < n; i++)
        ok += cs[i] && call_echo(cs[i], i) == 0;
    int open = 0;
    for (int i = 0; i < n; i++)
        open += cs[i] != NULL;
    printf("  %d of %d sessions answered %s\n", ok, open, when);
    CHECK(ok == open);
}

/* Refused clients retry during a CPU window: nothing to do but wait. */
static void idle(void *arg)
{
    (void)arg;
    usleep(50000);
}

/* ------------------------------------------------ out of descriptors (d) */

typedef struct raw_stats {
    int tried, closed, greeted, hung;
} raw_stats;

/* One raw TCP connection to the broker: the kernel completes it from the
 * listen backlog whatever the broker does; then within FAST_MS it must be
 * closed (the broker took it from the backlog and closed it) or greeted
 * (libzmq accepted it after all and sent its ZMTP greeting). Never left
 * hanging. Closed by us at once, so that it holds nothing. */
static void raw_connect(void *arg)
{
    raw_stats *st = arg;
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        st->closed++; /* refused at once: not hanging either */
        st->tried++;
        if (s >= 0)
            close(s);
        return;
    }
    st->tried++;
    struct pollfd pf = {.fd = s, .events = POLLIN};
    char buf[64];
    if (poll(&pf, 1, FAST_MS) != 1)
        st->hung++;
    else if (recv(s, buf, sizeof buf, MSG_DONTWAIT) > 0)
        st->greeted++;
    else
        st->closed++;
    close(s);
    usleep(50000);
}

/* --------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    if (argc > 1) {
        snprintf(broker_path, sizeof broker_path, "%s", argv[1]);
    } else {
        snprintf(broker_path, sizeof broker_path, "%s", argv[0]);
        char *slash = strrchr(broker_path, '/');
        snprintf(slash ? slash + 1 : broker_path, sizeof broker_path - (size_t)(slash ? slash + 1 - broker_path : 0),
                 "proc_broker");
    }
    signal(SIGPIPE, SIG_IGN);
    t_capture_log();
    atexit(cleanup);
    need(mdg_keys_new(&bkeys) == 0, "cannot make the broker's keys");
    port = t_free_port();
    need(port > 0, "no free port");
    start_broker();

    /* a. the budget, from the start-up warning */
    const char *at = strstr(broker_log(), "admits at most ");
    int n = at ? atoi(at + strlen("admits at most ")) : 0;
    printf("a. RLIMIT_NOFILE %d: the broker admits %d connections\n", FD_LIMIT, n);
    CHECK(broker_logged("RLIMIT_NOFILE 64 is low"));
    CHECK(broker_logged("ulimit -n"));
    need(n > 4 && n < FD_LIMIT && n + EXTRA < MAX_CLIENTS, "the broker did not log a connection limit below RLIMIT_NOFILE");

    /* b. n sessions; the next clients are refused, fast and clearly */
    mdg_conn *cs[MAX_CLIENTS] = {0}, *extra[EXTRA];
    for (int i = 0; i < n; i++)
        cs[i] = new_client();
    int ready = 0;
    for (int i = 0; i < n; i++)
        ready += mdg_conn_wait_until_ready(cs[i], WAIT_MS) == 0;
    printf("b. %d of %d clients have sessions\n", ready, n);
    CHECK(ready == n);
    int64_t t0 = now_ms();
    for (int i = 0; i < EXTRA; i++)
        extra[i] = new_client();
    for (int i = 0; i < EXTRA; i++) {
        CHECK_RC(mdg_conn_wait_until_ready(extra[i], WAIT_MS), MDG_EBUSY);
        CHECK(strstr(mdg_last_error(), "connection limit") != NULL);
    }
    int64_t took = now_ms() - t0;
    printf("   %d more clients refused in %lld ms (%s)\n", EXTRA, (long long)took, mdg_last_error());
    CHECK(took < FAST_MS);
    check_sessions_served(cs, n, "while others are refused");
    CHECK(cpu_share_during(idle, NULL) < MAX_CPU_SHARE);
    CHECK(broker_logged("broker at its connection limit"));
    CHECK(t_logged("the broker is at its connection limit"));

    /* c. a session ends: a refused client gets in by itself */
    mdg_conn_destroy(&cs[0]);
    int in = -1;
    for (int64_t deadline = now_ms() + WAIT_MS; in < 0 && now_ms() < deadline; usleep(20000))
        for (int i = 0; i < EXTRA && in < 0; i++)
            if (mdg_conn_wait_until_ready(extra[i], 0) == 0)
                in = i;
    printf("c. after a session ended, refused client %d got in\n", in);
    CHECK(in >= 0);
    if (in >= 0) {
        CHECK_RC(call_echo(extra[in], 42), 0);
        cs[0] = extra[in];
        extra[in] = NULL;
    }
    for (int i = 0; i < EXTRA; i++)
        mdg_conn_destroy(&extra[i]);

    /* d. the application takes every free descriptor: the broker is full
     * and new connections would hang in the listen backlog */
    int64_t hogged = 0;
    CHECK_RC(hog(cs[1], true, &hogged), 0);
    printf("d. the broker process took its %lld free descriptors\n", (long long)hogged);
    CHECK(hogged > 0);
    raw_stats st = {0};
    double share = cpu_share_during(raw_connect, &st);
    printf("   %d connections: %d closed by the broker, %d taken by libzmq, %d left hanging\n", st.tried, st.closed,
           st.greeted, st.hung);
    CHECK(st.tried > 0 && st.hung == 0);
    CHECK(share < MAX_CPU_SHARE);
    CHECK(broker_logged("cannot accept connections on the native listener: Too many open files (RLIMIT_NOFILE 64"));
    check_sessions_served(cs, n, "while out of descriptors");
    /* a new client knows at once: refused (libzmq took its link and the
     * broker is full), or its links are reset (the broker took them) */
    mdg_conn *late = new_client();
    int rc = mdg_conn_wait_until_ready(late, FAST_MS);
    printf("   a new client: %s (%s)\n", mdg_strerror(rc), mdg_last_error());
    CHECK(rc == MDG_EBUSY || (rc == MDG_ETIMEDOUT && strstr(mdg_last_error(), "link(s) failed")));
    mdg_conn_destroy(&late);

    /* ... and gives them back: with a session gone, a new client gets in */
    CHECK_RC(hog(cs[1], false, &hogged), 0);
    mdg_conn_destroy(&cs[2]);
    late = new_client();
    rc = MDG_ETIMEDOUT;
    for (int64_t deadline = now_ms() + WAIT_MS; rc != 0 && now_ms() < deadline; usleep(20000))
        rc = mdg_conn_wait_until_ready(late, 200);
    printf("   descriptors given back: a new client %s\n", rc == 0 ? "got in" : mdg_last_error());
    CHECK_RC(rc, 0);
    CHECK_RC(call_echo(late, 7), 0);
    mdg_conn_destroy(&late);

    /* e. a clean stop */
    for (int i = 0; i < n; i++)
        mdg_conn_destroy(&cs[i]);
    kill(broker_pid, SIGTERM);
    int status = -1;
    for (int64_t deadline = now_ms() + WAIT_MS; now_ms() < deadline; usleep(20000))
        if (waitpid(broker_pid, &status, WNOHANG) == broker_pid) {
            broker_pid = 0;
            break;
        }
    printf("e. the broker stopped: %s\n", broker_pid == 0 && WIFEXITED(status) ? "exit" : "did not");
    CHECK(broker_pid == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (t_failed)
        fprintf(stderr, "--- broker log ---\n%s--- end ---\n", broker_log());
    mdg_keys_destroy(&bkeys);
    return t_done("test_limits");
}
