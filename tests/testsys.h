/* testsys.h - what test programs and their helper servers (pgserver.c,
 * natsserver.c) share without testutil.h's checks and log capture: the
 * monotonic clock that deadlines are measured by, a free loopback port to
 * start a server on, and removing a test's temporary directory. */
#ifndef MDG_TESTSYS_H
#define MDG_TESTSYS_H

#include <arpa/inet.h>
#include <ftw.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static inline int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A loopback port nothing listens on (bound to port 0, read, closed),
 * or 0 when no socket could be bound. */
static inline int t_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static inline int t_rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

/* rm -rf dir, not following symbolic links; quietly, whatever is left. */
static inline void t_rm_tree(const char *dir)
{
    nftw(dir, t_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
