/* legacy_peer.h - run the Python 1.x peers (tests/legacy/peer.py) as child
 * processes: a user, a node or a stand-in 1.x broker, with their stdout
 * read line by line so a test can wait for "READY <port>" or "node ready"
 * and check what the peer printed. MDG_PYTHON and MDG_LEGACY_PEER come
 * from tests/CMakeLists.txt. */
#ifndef MDG_LEGACY_PEER_H
#define MDG_LEGACY_PEER_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct py_peer {
    pid_t pid;
    int out_fd;        /* the child's stdout */
    char out[1 << 16]; /* everything it printed so far */
    size_t len;
} py_peer;

/* Start peer.py with the given arguments (NULL-terminated); stderr is
 * inherited so its log shows in the test output. */
static inline int py_start(py_peer *p, const char *const args[])
{
    const char *argv[64] = {MDG_PYTHON, "-u", "-B", MDG_LEGACY_PEER}; /* -B: no __pycache__ in the tree */
    int n = 4;
    for (int i = 0; args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    memset(p, 0, sizeof *p);
    p->pid = fork();
    if (p->pid < 0)
        return -1;
    if (p->pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    p->out_fd = fds[0];
    fcntl(p->out_fd, F_SETFL, O_NONBLOCK);
    return 0;
}

/* Read what the child printed, for up to ms; true once needle appears. */
static inline bool py_wait_for(py_peer *p, const char *needle, int ms)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        p->out[p->len] = '\0';
        if (strstr(p->out, needle))
            return true;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int left = ms - (int)((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0 || p->out_fd < 0)
            return false;
        struct pollfd pfd = {.fd = p->out_fd, .events = POLLIN};
        if (poll(&pfd, 1, left) <= 0)
            continue;
        ssize_t r = read(p->out_fd, p->out + p->len, sizeof p->out - 1 - p->len);
        if (r > 0) {
            p->len += (size_t)r;
        } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
            close(p->out_fd); /* the child closed its stdout: it is done */
            p->out_fd = -1;
        }
    }
}

/* Wait for the child to exit (reading its output); its exit status, or
 * -1 when it had to be killed after ms. */
static inline int py_wait_exit(py_peer *p, int ms)
{
    py_wait_for(p, "\x01never printed\x01", ms); /* drains stdout until EOF or ms */
    int status = 0;
    for (int i = 0; i < 50; i++) {
        if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
            p->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        usleep(20000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &status, 0);
    p->pid = 0;
    return -1;
}

/* Stop a long-running peer (SIGTERM, then SIGKILL) and reap it. */
static inline void py_stop(py_peer *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGTERM);
        if (py_wait_exit(p, 3000) == -1)
            fprintf(stderr, "  python peer did not stop on SIGTERM\n");
    }
    if (p->out_fd >= 0)
        close(p->out_fd);
    p->out_fd = -1;
}

#endif
