/* natsserver.h - a NATS server of a test's own, or a cluster of them: nats-server on 127.0.0.1
 * on a port the test gives, its log in a temporary file, stopped by its PID when the
 * test ends (t_nats_stop, an atexit handler, or the kernel: the child gets
 * SIGKILL when the test process dies). Readiness is a TCP connection that
 * reads the server's INFO line, tried until a deadline. The binary is
 * nats-server on PATH, /usr/sbin or /usr/bin, or $MDG_NATS_SERVER. */
#ifndef MDG_NATSSERVER_H
#define MDG_NATSSERVER_H

#include <sys/types.h>

typedef struct t_nats {
    pid_t pid; /* 0 when stopped */
    int port;
    int cluster_port; /* in a cluster: where the others route to it */
    char url[64]; /* nats://127.0.0.1:PORT */
    char log[64];
} t_nats;

/* Start on port (t_free_port(); the same again for a restart: n zeroed
 * before the first start) and wait until it answers. 0, or -1 after
 * printing why (with its log). */
int t_nats_start(t_nats *n, int port);
#define T_NATS_CLUSTER_MAX 5

/* A cluster of count servers (2..T_NATS_CLUSTER_MAX), each routed to
 * every other: the caller sets n[i].port and n[i].cluster_port (each a
 * t_free_port()), the rest of n zeroed. Waits until every server's INFO
 * offers the client URLs of all the others (the routes are up). 0, or -1
 * after printing why (every server stopped). */
int t_nats_start_cluster(t_nats *n, size_t count);
/* Kill it (SIGKILL: no goodbye to its clients or routes) and wait. */
void t_nats_kill(t_nats *n);
/* Stop it (SIGTERM, then SIGKILL after 5 s) and wait for its PID. */
void t_nats_stop(t_nats *n);

#endif
