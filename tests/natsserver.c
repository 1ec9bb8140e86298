/* natsserver.c - see natsserver.h. */
#include "natsserver.h"
#include "testsys.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define READY_MS 10000

static pid_t started[8]; /* for the atexit handler */

static void stop_left(void)
{
    for (size_t i = 0; i < sizeof started / sizeof started[0]; i++)
        if (started[i] > 0) {
            kill(started[i], SIGKILL);
            waitpid(started[i], NULL, 0);
            started[i] = 0;
        }
}

static void remember(pid_t pid, pid_t was)
{
    static bool registered;
    if (!registered) {
        atexit(stop_left);
        registered = true;
    }
    for (size_t i = 0; i < sizeof started / sizeof started[0]; i++)
        if (started[i] == was) {
            started[i] = pid;
            return;
        }
}

static const char *binary(void)
{
    static const char *const places[] = {"/usr/sbin/nats-server", "/usr/bin/nats-server",
                                         "/usr/local/bin/nats-server"};
    const char *env = getenv("MDG_NATS_SERVER");
    if (env && *env)
        return env;
    for (size_t i = 0; i < sizeof places / sizeof places[0]; i++)
        if (access(places[i], X_OK) == 0)
            return places[i];
    return "nats-server";
}

/* Whether the server answers: its INFO line on a new connection; with
 * info, that line (NUL-terminated, cut to len). */
static bool answers_info(int port, char *info, size_t len)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    bool ok = false;
    struct timeval tv = {.tv_sec = 1};
    if (fd < 0)
        return false;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        char buf[4096];
        size_t got = 0;
        ssize_t k;
        /* up to the line's end: the INFO line is sent whole at once */
        while (got + 1 < sizeof buf && (k = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0) {
            got += (size_t)k;
            buf[got] = '\0';
            if (strchr(buf, '\n'))
                break;
        }
        buf[got] = '\0';
        ok = got >= 4 && memcmp(buf, "INFO", 4) == 0;
        if (info && len)
            snprintf(info, len, "%s", buf);
    }
    close(fd);
    return ok;
}

static bool answers(int port)
{
    return answers_info(port, NULL, 0);
}

static void print_log(const t_nats *n)
{
    char buf[4096];
    size_t k;
    FILE *f = fopen(n->log, "r");
    if (!f)
        return;
    fprintf(stderr, "---- %s\n", n->log);
    while ((k = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, k, stderr);
    fprintf(stderr, "----\n");
    fclose(f);
}

/* Start nats-server on port with extra arguments (cluster, routes). */
static int start_with(t_nats *n, int port, char *const extra[])
{
    if (!n->log[0]) { /* a first start: its log */
        snprintf(n->log, sizeof n->log, "/tmp/mdg-nats-XXXXXX");
        int fd = mkstemp(n->log);
        if (fd < 0) {
            perror("natsserver: mkstemp");
            return -1;
        }
        close(fd);
    }
    n->port = port;
    snprintf(n->url, sizeof n->url, "nats://127.0.0.1:%d", port);
    char portarg[16];
    snprintf(portarg, sizeof portarg, "%d", port);
    const char *bin = binary();
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("natsserver: fork");
        return -1;
    }
    if (pid == 0) {
        int fd = open(n->log, O_WRONLY | O_APPEND);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(127);
        const char *argv[16] = {bin, "-a", "127.0.0.1", "-p", portarg};
        size_t k = 5;
        for (size_t i = 0; extra && extra[i] && k + 1 < sizeof argv / sizeof argv[0]; i++)
            argv[k++] = extra[i];
        argv[k] = NULL;
        execvp(bin, (char *const *)argv);
        perror("natsserver: exec");
        _exit(127);
    }
    remember(pid, 0);
    n->pid = pid;
    for (int64_t until = now_ms() + READY_MS; now_ms() < until;) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "natsserver: %s exited before answering\n", bin);
            remember(0, pid);
            n->pid = 0;
            print_log(n);
            return -1;
        }
        if (answers(port))
            return 0;
        usleep(20000);
    }
    fprintf(stderr, "natsserver: no answer on port %d within %d ms\n", port, READY_MS);
    print_log(n);
    t_nats_stop(n);
    return -1;
}

int t_nats_start(t_nats *n, int port)
{
    return start_with(n, port, NULL);
}

/* Whether server n's INFO line offers every other member's client URL:
 * its routes are up. */
static bool routed(const t_nats *n, const t_nats *all, size_t count)
{
    char info[4096], want[40];
    if (!answers_info(n->port, info, sizeof info))
        return false;
    for (size_t i = 0; i < count; i++) {
        snprintf(want, sizeof want, "127.0.0.1:%d\"", all[i].port);
        if (&all[i] != n && !strstr(info, want))
            return false;
    }
    return true;
}

int t_nats_start_cluster(t_nats *n, size_t count)
{
    char cluster[T_NATS_CLUSTER_MAX][48], routes[T_NATS_CLUSTER_MAX * 48];
    if (count < 2 || count > T_NATS_CLUSTER_MAX)
        return -1;
    for (size_t i = 0; i < count; i++)
        snprintf(cluster[i], sizeof cluster[i], "nats://127.0.0.1:%d", n[i].cluster_port);
    for (size_t i = 0; i < count; i++) {
        routes[0] = '\0';
        for (size_t j = 0; j < count; j++) {
            size_t at = strlen(routes);
            int k = j == i ? 0 : snprintf(routes + at, sizeof routes - at, "%s%s", at ? "," : "", cluster[j]);
            if (k < 0 || (size_t)k >= sizeof routes - at)
                return -1; /* cannot happen: room for every route */
        }
        char *extra[] = {"--cluster_name", "mdg-test", "--cluster", cluster[i], "--routes", routes, NULL};
        if (start_with(&n[i], n[i].port, extra) != 0) {
            for (size_t j = 0; j < i; j++)
                t_nats_stop(&n[j]);
            return -1;
        }
    }
    /* every server knows every other: a client can move to any of them */
    for (int64_t until = now_ms() + READY_MS; now_ms() < until; usleep(20000)) {
        size_t ok = 0;
        for (size_t i = 0; i < count; i++)
            ok += routed(&n[i], n, count);
        if (ok == count)
            return 0;
    }
    fprintf(stderr, "natsserver: the cluster's routes were not up within %d ms\n", READY_MS);
    for (size_t i = 0; i < count; i++) {
        print_log(&n[i]);
        t_nats_stop(&n[i]);
    }
    return -1;
}

void t_nats_kill(t_nats *n)
{
    if (n->pid <= 0)
        return;
    kill(n->pid, SIGKILL);
    waitpid(n->pid, NULL, 0);
    remember(0, n->pid);
    n->pid = 0;
}

void t_nats_stop(t_nats *n)
{
    if (n->pid <= 0)
        return;
    kill(n->pid, SIGTERM);
    int64_t until = now_ms() + 5000;
    while (waitpid(n->pid, NULL, WNOHANG) == 0) {
        if (now_ms() > until) {
            kill(n->pid, SIGKILL);
            waitpid(n->pid, NULL, 0);
            break;
        }
        usleep(10000);
    }
    remember(0, n->pid);
    n->pid = 0;
}
