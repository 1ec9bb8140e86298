/* natsserver.c - see natsserver.h. */
#include "natsserver.h"

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

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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

/* Whether the server answers: its INFO line on a new connection. */
static bool answers(int port)
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
        char buf[5] = {0};
        ok = recv(fd, buf, 4, MSG_WAITALL) == 4 && memcmp(buf, "INFO", 4) == 0;
    }
    close(fd);
    return ok;
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

int t_nats_start(t_nats *n, int port)
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
        execlp(bin, bin, "-a", "127.0.0.1", "-p", portarg, (char *)NULL);
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
