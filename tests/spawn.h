/* spawn.h - child processes of a test (a broker, a node as programs of
 * their own): started with their stdout on a pipe, waited for until they
 * say they are ready, reaped or killed. A child never outlives its test
 * (PR_SET_PDEATHSIG). */
#ifndef MDG_TEST_SPAWN_H
#define MDG_TEST_SPAWN_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

extern char **environ;


typedef struct child {
    const char *name;
    pid_t pid; /* 0: not running */
    int out;   /* read end of its stdout */
    int64_t started;
} child;

/* Start path with args and the environment plus extra ("K=V", NULL-ended).
 * Everything is prepared before fork: the child, a copy of a threaded
 * process, only calls async-signal-safe functions before exec. */
static inline void spawn(child *c, const char *path, char *const args[], char *const extra[])
{
    static char *envp[512];
    int n = 0;
    for (char **e = environ; *e && n < 480; e++)
        envp[n++] = *e;
    for (int i = 0; extra[i] && n < 511; i++)
        envp[n++] = extra[i];
    envp[n] = NULL;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        perror("pipe2");
        exit(2);
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        if (getppid() != parent)
            _exit(127);
        dup2(fds[1], 1); /* dup2 clears close-on-exec on 1 */
        execve(path, args, envp);
        _exit(127);
    }
    close(fds[1]);
    c->pid = pid;
    c->out = fds[0];
    c->started = now_ms();
}

/* Wait up to ms for the child's "NAME: ready ..." line; its pid is in it.
 * The read end stays open until the child is reaped (no SIGPIPE). */
static inline int wait_ready(child *c, int ms)
{
    char line[256];
    size_t len = 0;
    int64_t deadline = now_ms() + ms;
    while (now_ms() < deadline && len < sizeof line - 1) {
        struct pollfd pf = {.fd = c->out, .events = POLLIN};
        if (poll(&pf, 1, (int)(deadline - now_ms())) <= 0)
            continue;
        ssize_t r = read(c->out, line + len, 1);
        if (r <= 0)
            break; /* it exited */
        if (line[len] == '\n') {
            line[len] = '\0';
            return strstr(line, ": ready") ? 0 : -1;
        }
        len++;
    }
    fprintf(stderr, "%s (pid %d) not ready within %d ms\n", c->name, (int)c->pid, ms);
    return -1;
}

/* Reap the child within ms: its wait status, or -1 (still running). */
static inline int reap(child *c, int ms)
{
    int status = 0;
    int64_t deadline = now_ms() + ms;
    for (;;) {
        pid_t r = waitpid(c->pid, &status, WNOHANG);
        if (r == c->pid || (r < 0 && errno == ECHILD))
            break;
        if (now_ms() >= deadline)
            return -1;
        usleep(5000);
    }
    close(c->out);
    c->out = -1;
    c->pid = 0;
    return status;
}

static inline void kill_hard(child *c)
{
    if (c->pid > 0) {
        kill(c->pid, SIGKILL);
        reap(c, 10000);
    }
}

#endif
