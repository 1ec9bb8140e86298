/* faultproxy.c - see faultproxy.h. One thread polls the listening socket
 * and every pair of connections; commands from the test arrive through a
 * pipe so that the thread alone touches the sockets. */
#include "faultproxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FP_MAX_PAIRS 64

struct faultproxy {
    int listen_fd, target_port, port;
    int cmd[2]; /* pipe: 'c' cut, 's' stall, 'r' resume, 'w' wake, 'q' quit */
    int pairs[FP_MAX_PAIRS][2]; /* [client side, broker side]; -1 = free */
    int doom[FP_MAX_PAIRS];     /* bytes from the client until it fails; -1: none */
    int doom_hard[FP_MAX_PAIRS];
    int stalled;
    atomic_int cuts;
    atomic_int fail_left, fail_after, fail_hard; /* fp_fail_next */
    atomic_int failed;                           /* by fp_fail_next so far */
    atomic_int throttle;                         /* fp_throttle */
    pthread_t thread;
};

/* A TCP reset instead of an orderly close. */
static void close_hard(int fd)
{
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

static void close_pair(faultproxy *fp, int i)
{
    if (fp->doom_hard[i]) {
        close_hard(fp->pairs[i][0]);
        close_hard(fp->pairs[i][1]);
    } else {
        close(fp->pairs[i][0]);
        close(fp->pairs[i][1]);
    }
    fp->pairs[i][0] = fp->pairs[i][1] = -1;
    if (fp->doom[i] == 0)
        atomic_fetch_add(&fp->failed, 1);
    fp->doom[i] = -1;
    fp->doom_hard[i] = 0;
}

static void accept_one(faultproxy *fp)
{
    int c = accept(fp->listen_fd, NULL, NULL);
    if (c < 0)
        return;
    int doom = -1, hard = 0;
    for (int left = atomic_load(&fp->fail_left); left > 0;)
        if (atomic_compare_exchange_weak(&fp->fail_left, &left, left - 1)) {
            doom = atomic_load(&fp->fail_after);
            hard = atomic_load(&fp->fail_hard);
            break;
        }
    if (doom == 0) { /* fails at once: the broker never hears of it */
        if (hard)
            close_hard(c);
        else
            close(c);
        atomic_fetch_add(&fp->failed, 1);
        return;
    }
    int t = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fp->target_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(t, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (t < 0 || connect(t, (struct sockaddr *)&a, sizeof a) != 0) {
        close(c);
        if (t >= 0)
            close(t);
        return;
    }
    for (int i = 0; i < FP_MAX_PAIRS; i++)
        if (fp->pairs[i][0] < 0) {
            fp->pairs[i][0] = c;
            fp->pairs[i][1] = t;
            fp->doom[i] = doom;
            fp->doom_hard[i] = hard;
            return;
        }
    close(c);
    close(t);
}

/* Move what is readable from one side to the other, at most max bytes:
 * how many, 0 when closed. */
static ssize_t pump(int from, int to, size_t max)
{
    char buf[65536];
    ssize_t n = read(from, buf, max < sizeof buf ? max : sizeof buf);
    if (n <= 0)
        return 0;
    for (ssize_t off = 0; off < n;) {
        ssize_t w = send(to, buf + off, (size_t)(n - off), MSG_NOSIGNAL); /* a reset peer: EPIPE, not SIGPIPE */
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return 0;
        }
        off += w;
    }
    return n;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *proxy_thread(void *arg)
{
    faultproxy *fp = arg;
    struct pollfd pfd[2 + 2 * FP_MAX_PAIRS];
    int64_t refill_at = 0;
    size_t budget = 0; /* bytes clients may still send until refill_at */
    for (;;) {
        int n = 0, throttle = atomic_load(&fp->throttle);
        if (throttle && now_ms() >= refill_at) {
            budget = (size_t)throttle;
            refill_at = now_ms() + 10;
        }
        bool client_paused = throttle && budget == 0;
        pfd[n++] = (struct pollfd){.fd = fp->cmd[0], .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = fp->stalled ? -1 : fp->listen_fd, .events = POLLIN};
        for (int i = 0; i < FP_MAX_PAIRS; i++)
            for (int s = 0; s < 2; s++)
                pfd[n++] = (struct pollfd){.fd = fp->stalled || (s == 0 && client_paused) ? -1 : fp->pairs[i][s],
                                           .events = POLLIN};
        if (poll(pfd, (nfds_t)n, throttle ? 10 : 1000) < 0 && errno != EINTR)
            break;
        if (pfd[0].revents) {
            char c;
            if (read(fp->cmd[0], &c, 1) != 1 || c == 'q')
                break;
            if (c == 'c') {
                for (int i = 0; i < FP_MAX_PAIRS; i++)
                    if (fp->pairs[i][0] >= 0) {
                        close_pair(fp, i);
                        atomic_fetch_add(&fp->cuts, 1);
                    }
            }
            fp->stalled = c == 's' ? 1 : c == 'r' ? 0 : fp->stalled;
            continue;
        }
        if (pfd[1].revents)
            accept_one(fp);
        for (int i = 0; i < FP_MAX_PAIRS; i++)
            for (int s = 0; s < 2; s++) {
                if (fp->pairs[i][0] < 0 || !pfd[2 + 2 * i + s].revents)
                    continue;
                size_t max = s == 0 && throttle ? budget : SIZE_MAX;
                if (max == 0)
                    continue;
                ssize_t moved = pump(fp->pairs[i][s], fp->pairs[i][1 - s], max);
                if (s == 0 && throttle)
                    budget -= (size_t)moved;
                if (s == 0 && fp->doom[i] > 0) /* failing during the handshake */
                    fp->doom[i] = moved >= fp->doom[i] ? 0 : fp->doom[i] - (int)moved;
                if (!moved || fp->doom[i] == 0)
                    close_pair(fp, i);
            }
    }
    for (int i = 0; i < FP_MAX_PAIRS; i++)
        if (fp->pairs[i][0] >= 0)
            close_pair(fp, i);
    return NULL;
}

faultproxy *fp_new(int target_port)
{
    faultproxy *fp = calloc(1, sizeof *fp);
    if (!fp)
        return NULL;
    fp->target_port = target_port;
    for (int i = 0; i < FP_MAX_PAIRS; i++) {
        fp->pairs[i][0] = fp->pairs[i][1] = -1;
        fp->doom[i] = -1;
    }
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int one = 1;
    fp->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(fp->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fp->listen_fd < 0 || bind(fp->listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(fp->listen_fd, 16) != 0 || getsockname(fp->listen_fd, (struct sockaddr *)&a, &len) != 0 ||
        pipe(fp->cmd) != 0) {
        free(fp);
        return NULL;
    }
    fp->port = ntohs(a.sin_port);
    pthread_create(&fp->thread, NULL, proxy_thread, fp);
    return fp;
}

int fp_port(const faultproxy *fp)
{
    return fp->port;
}

static void command(faultproxy *fp, char c)
{
    ssize_t w = write(fp->cmd[1], &c, 1);
    (void)w;
}

void fp_cut(faultproxy *fp)
{
    command(fp, 'c');
}

void fp_stall(faultproxy *fp, int stalled)
{
    command(fp, stalled ? 's' : 'r');
}

void fp_fail_next(faultproxy *fp, int n, int after_bytes, int hard)
{
    atomic_store(&fp->fail_after, after_bytes);
    atomic_store(&fp->fail_hard, hard);
    atomic_store(&fp->fail_left, n);
}

void fp_throttle(faultproxy *fp, int bytes_per_10ms)
{
    atomic_store(&fp->throttle, bytes_per_10ms);
    command(fp, 'w'); /* wake the thread to poll with the new timeout */
}

int fp_failed(const faultproxy *fp)
{
    return atomic_load(&((faultproxy *)fp)->failed);
}

int fp_cuts(const faultproxy *fp)
{
    return atomic_load(&((faultproxy *)fp)->cuts);
}

void fp_destroy(faultproxy **pfp)
{
    if (!pfp || !*pfp)
        return;
    faultproxy *fp = *pfp;
    command(fp, 'q');
    pthread_join(fp->thread, NULL);
    close(fp->listen_fd);
    close(fp->cmd[0]);
    close(fp->cmd[1]);
    free(fp);
    *pfp = NULL;
}
