/* bench.h - what the benchmark programs share: the scenarios, their
 * results, timing and statistics.
 *
 * Every scenario is one function that sets its peers up, warms up,
 * measures for cfg.secs seconds and tears everything down again, so that
 * one run of it is independent of the others. The runner (bench_main.c)
 * calls each variant of a figure in turn, round after round, and keeps the
 * median; ratios are always between figures of the same invocation. */
#ifndef MDG_BENCH_H
#define MDG_BENCH_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PARAMS_BYTES 64          /* encoded params map (or raw frame) per request */
#define BULK_BYTES (1u << 20)    /* the bulk scenario: 1 MiB each way */
#define WINDOW 1000              /* calls in flight in the throughput scenarios */
#define REFILL 100               /* the sender tops the window up in batches of this */
#define MAX_CLIENTS 8
#define CALL_TIMEOUT_MS 10000    /* any single call longer than this is a failure */

/* A pipelined sender's window: its thread keeps up to WINDOW calls in
 * flight, topping up once REFILL have been answered; the reply callback
 * (another thread) counts down and wakes it. */
typedef struct window {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int inflight;
    bool waiting;
    long done;
} window;

void window_init(window *w);
void window_destroy(window *w);
/* One reply arrived (takes the lock). */
void window_reply(window *w);
/* With w->lock held: wait for room (drain false) or for nothing in flight
 * (drain true); false after CALL_TIMEOUT_MS. */
bool window_wait(window *w, bool drain);
#define CONNECT_MAX 200          /* handshakes per connect run, at most */
#define NODE_COMMAND "node_echo" /* served by the node, unknown to the broker */
#define STREAM_COMMAND "node_stream" /* the node streams replies until stopped */
#define FAIR_TIMEOUT_MS 1000     /* fairness: a normal call unanswered this long failed */
#define FLOOD_CALLS 100000       /* fairness: calls the flooder sends, never reading */

/* Settings from the command line. */
typedef struct bench_cfg {
    double secs;          /* measuring time per run */
    double warm;          /* warm-up before each measurement */
    int runs;             /* rounds; each figure is the median of them */
    int sessions;         /* idle sessions in the scale scenario */
    const char *nats_url; /* plain nats-server, or NULL */
    const char *nats_tls_url;
    const char *nats_ca;  /* the TLS server's self-signed certificate */
    const char *json;     /* where results go */
    const char *table;    /* a copy of the printed table */
    const char *only;     /* comma list of groups to run, NULL = all */
} bench_cfg;

extern bench_cfg cfg;

/* What a scenario is asked to do. */
enum kind { K_RTT, K_TPUT, K_CONNECT, K_FAIR };
enum path { P_BROKER, P_NODE }; /* raw zmq: direct echo, or a relay to a worker */

typedef struct spec {
    int kind;
    int path;
    int clients;  /* throughput: clients at once */
    size_t bulk;  /* RTT: bulk bytes each way (0 = 64-byte params) */
    bool tls;     /* NATS: the TLS server */
    int other;    /* fairness: who shares the node with the normal user */
    bool fleet;   /* node path, libmessidge: the node at a second broker of a
                     fleet over the plain nats-server, the user at the first */
} spec;

/* The other user of the fairness scenario. */
enum other { O_NONE, O_FLOOD, O_STALL };

/* One run's result. ok = false means "not available" with the reason. */
typedef struct bres {
    bool ok;
    char why[160];
    double rate;     /* calls/s, replies/s, MB/s (bulk) or handshakes/s */
    double p50, p99; /* microseconds (RTT and connect) */
    /* Fairness: the normal user's calls, and how many of them failed (no
     * answer within FAIR_TIMEOUT_MS, or refused); what the other side sent
     * (the flooder's calls handed to its socket, or the replies of the
     * node's stream), how long the flood took to send, and the longest
     * one mdg_msg_reply_more of the stream blocked. */
    long calls, failed, other_sent;
    double flood_secs, block_ms;
} bres;

/* The three implementations of every scenario. */
bres mdg_run(const spec *s);
bres zmq_run(const spec *s);
bres nats_run(const spec *s);
void nats_shutdown(void); /* frees libnats' global state at exit */

/* The scale scenario, and the child-process servers it measures. */
typedef struct scale_res {
    bool ok;
    char why[160];
    int sessions;                   /* asked for */
    int opened, zmq_opened;         /* opened within the time limit */
    double mdg_kib, zmq_kib;        /* RSS growth per idle session, KiB */
    double rtt0_p50, rtt0_p99;      /* one active client, no idle sessions */
    double rttn_p50, rttn_p99;      /* the same with `sessions` idle ones */
    double connect_secs;            /* time to open all idle sessions */
} scale_res;

scale_res scale_run(const char *self);
/* The child programs: serve-mdg, serve-zmq, idle-mdg/idle-zmq PORT PK N. */
int serve_child(int argc, char **argv);
int mdg_serve_child(bool with_node); /* bench_mdg.c: a broker (and a node) until stdin closes */
int zmq_serve_child(void);         /* bench_zmq.c: the raw echo server, likewise */

/* A raw CURVE DEALER that speaks just enough of the native protocol
 * (src/wire.c) to open a session (bench_scale.c): raw_dealer makes it
 * (keys and the server's key in Z85, linger in ms, rcvhwm < 0: libzmq's
 * default), raw_hello sends its HELLO (params {}), raw_first_reply reads
 * the WELCOME (mdg) or the raw echo: 0, 1 for "not yet" (nothing to read),
 * -1 for anything else. */
void *raw_dealer(void *ctx, const char *endpoint, const char *server_pk, const char *pk,
                 const char *sk, int linger, int rcvhwm);
int raw_hello(void *sock);
int raw_first_reply(void *sock, bool mdg);

/* A libmessidge client of a broker in another process (scale scenario):
 * connect, one RTT measurement (warm-up + cfg.secs), close. */
void *mdg_ext_connect(int port, const uint8_t server_pk[32]);
bres mdg_ext_rtt(void *conn);
void mdg_ext_close(void **conn);

/* ------------------------------------------------------------- utilities */

uint64_t now_ns(void);
double now_s(void);

/* Latency samples in microseconds. */
typedef struct lat {
    double *us;
    size_t n, cap;
} lat;
void lat_add(lat *l, double us);
/* Fills p50/p99 and rate (calls per second of summed latency is not used:
 * rate = n / elapsed, given). Frees the samples. */
void lat_finish(lat *l, bres *r, double elapsed);

double median(double *v, int n); /* sorts v */
bres na(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* The 64-byte request payload (a fixed pattern). */
extern uint8_t payload[PARAMS_BYTES];
/* 1 MiB of pattern for the bulk scenario. */
const uint8_t *bulk_data(void);
void bulk_free(void);

/* Raise RLIMIT_NOFILE as far as we may (root: up to want). Returns the
 * soft limit now in force. */
long raise_nofile(long want);

/* Resident set of a process, KiB, from /proc/PID/status (0 = self). */
long rss_kib(int pid);

#endif
