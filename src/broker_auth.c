/* broker_auth.c - who may connect: the ZAP handler that admits a CURVE
 * key as a user or a node (an application's auth function, or the
 * allow-list), and the connection budget: connections are bounded by the
 * descriptors the process may open, and a listener that cannot accept is
 * cleared instead of left spinning. */
#include "broker_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/* Each connection holds one descriptor. FD_RESERVE are kept for the rest of
 * the process: the account server's 64 connections, the identity store,
 * logs, and connections accepted only to be refused (docs/guarantees.md). */
#define FD_RESERVE 96
#define FD_LOW_WARN 1000                   /* a limit allowing fewer connections is warned about */
#define LIMIT_LOG_MS 10000                 /* repeated refusals are logged this often */
#define SHED_MAX 1024                      /* waiting connections closed per accept failure */

int mdg_broker_set_auth(mdg_broker *b, mdg_auth_fn fn, void *arg)
{
    int rc = broker_before_start(b, "set authentication");
    if (rc)
        return rc;
    b->auth = fn;
    b->auth_arg = arg;
    return 0;
}

int mdg_broker_allow(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], int role)
{
    if (!b || !pk || (role != MDG_ROLE_USER && role != MDG_ROLE_NODE))
        return mdg_fail(MDG_EINVAL, "mdg_broker_allow needs a key and a user or node role");
    return mdg_map_put(b->allow, pk, MDG_KEY_BYTES, (void *)(intptr_t)role);
}

int mdg_broker_allow_any(mdg_broker *b)
{
    if (!b)
        return MDG_EINVAL;
    mdg_log(MDG_LOG_WARN, "broker admits ANY key as a user (test mode)");
    b->allow_any = true;
    return 0;
}

/* ------------------------------------------------------------------ ZAP */

int broker_role_of(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES])
{
    if (b->auth)
        return b->auth(pk, b->auth_arg);
    int role = (int)(intptr_t)mdg_map_get(b->allow, pk, MDG_KEY_BYTES);
    if (role == MDG_ROLE_NONE && b->allow_any)
        role = MDG_ROLE_USER;
    return role;
}

/* RFC 27 (ZAP): a CURVE request has 7 frames (version, request id, domain,
 * address, routing id, mechanism, client key). We answer 200 with a
 * User-Id that carries the role and the key, or 400. libzmq attaches that
 * User-Id to every message of the connection, so the broker knows who sent
 * each message without trusting anything the message says. */
#define ZAP_FRAMES 7

static void zap_answer(mdg_broker *b, zmq_msg_t *req_id, const char *status, const char *text,
                       const char *user_id)
{
    zmq_send(b->zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_msg_send(req_id, b->zap, ZMQ_SNDMORE);
    zmq_send(b->zap, status, strlen(status), ZMQ_SNDMORE);
    zmq_send(b->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(b->zap, user_id, strlen(user_id), ZMQ_SNDMORE);
    zmq_send(b->zap, "", 0, 0);
}

static void zap_request(mdg_broker *b)
{
    zmq_msg_t part[ZAP_FRAMES];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t tmp, *m = n < ZAP_FRAMES ? &part[n] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, b->zap, 0) < 0) {
            zmq_msg_close(m);
            break;
        }
        more = zmq_msg_more(m);
        if (m == &tmp)
            zmq_msg_close(m);
        n++;
    }
    if (n != ZAP_FRAMES) { /* a REP socket must answer, but this is libzmq's own request */
        mdg_log(MDG_LOG_ERROR, "malformed ZAP request (%d frames)", n);
        for (int i = 0; i < n && i < ZAP_FRAMES; i++)
            zmq_msg_close(&part[i]);
        return;
    }
    char addr[64];
    snprintf(addr, sizeof addr, "%.*s", (int)zmq_msg_size(&part[3]), (char *)zmq_msg_data(&part[3]));
    const char *why = NULL;
    char user_id[USER_ID_LEN + 1] = "", b64[MDG_KEY_B64_LEN + 1] = "?";
    bool full = false;
    if (zmq_msg_size(&part[5]) != 5 || memcmp(zmq_msg_data(&part[5]), "CURVE", 5) != 0 ||
        zmq_msg_size(&part[6]) != MDG_KEY_BYTES) {
        why = "not a CURVE client";
    } else {
        const uint8_t *pk = zmq_msg_data(&part[6]);
        mdg_pk_to_b64(pk, b64);
        int role = broker_role_of(b, pk);
        if (role != MDG_ROLE_USER && role != MDG_ROLE_NODE) {
            why = "key not known (or revoked)";
        } else {
            broker_on_monitor(b->loop, b, 0); /* count this connection and the latest drops */
            full = b->live_conns > b->max_conns;
            if (!full)
                snprintf(user_id, sizeof user_id, "%c%s", role == MDG_ROLE_NODE ? 'N' : 'U', b64);
        }
    }
    if (full) {
        /* 500, not RFC 27's 300 ("temporary"): libzmq's CURVE server drops
         * a 300 silently, which a client cannot tell from a wrong server
         * key; a 500 reaches it as ZMQ_EVENT_HANDSHAKE_FAILED_AUTH 500 */
        unsigned held;
        if (mdg_ratelog_due(&b->full_log, LIMIT_LOG_MS, &held))
            mdg_log(MDG_LOG_WARN, "refused connection from %s (key %.12s): broker at its connection limit "
                                  "(%d; RLIMIT_NOFILE %ld); %u more refused since the last such line",
                    addr, b64, b->max_conns, b->fd_limit, held);
        zap_answer(b, &part[1], "500", "broker at its connection limit", "");
        broker_count(&b->metrics.refused[REFUSED_ZAP_BUSY], 1);
    } else if (why) {
        mdg_log(MDG_LOG_WARN, "refused connection from %s (key %.12s): %s", addr, b64, why);
        broker_count(&b->metrics.refused[*b64 == '?' ? REFUSED_ZAP_NOT_CURVE : REFUSED_ZAP_UNKNOWN_KEY], 1);
        zap_answer(b, &part[1], "400", why, "");
    } else {
        mdg_log(MDG_LOG_DEBUG, "admitted %s as %s", addr, user_id);
        zap_answer(b, &part[1], "200", "OK", user_id);
        broker_count(&b->metrics.handshakes, 1);
    }
    for (int i = 0; i < ZAP_FRAMES; i++)
        zmq_msg_close(&part[i]);
}

int broker_on_zap(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    mdg_broker *b = arg;
    while (mdg_loop_socket_events(b->zap) & ZMQ_POLLIN)
        zap_request(b);
    return 0;
}

/* ------------------------------------------------ the connection budget */

/* Hold SPARE_FDS descriptors again, as far as there are free ones. */
void broker_take_spares(mdg_broker *b)
{
    int fd;
    while (b->n_spare < SPARE_FDS && (fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
        b->spare[b->n_spare++] = fd;
}

/* libzmq's listener could not accept a connection (zeromq 4.3.4,
 * tcp_listener.cpp). Out of descriptors (EMFILE, ENFILE) the connection
 * stays in the backlog and the listening socket stays readable, so libzmq's
 * I/O thread spins and the client hangs. We give up the spare descriptors,
 * take the waiting connections ourselves and reset them: those clients see
 * their link drop at once, and the spin ends. libzmq may accept one of them
 * first with a freed descriptor; it then goes through the handshake as
 * usual (refused while the broker is full), and spares are taken again
 * once descriptors are free (broker_on_grace_timer). Open sessions go on.
 * (zmq_unbind would stop the spin too, but libzmq closes every connection
 * the listener accepted along with it.) */
void broker_accept_failed(mdg_broker *b, broker_listener *l, int err)
{
    if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM)
        return; /* EAGAIN, ECONNABORTED...: nothing is left waiting */
    int lfd = l->listen_fd, closed = 0, s;
    struct pollfd pfd = {.fd = lfd, .events = POLLIN};
    if (lfd >= 0 && poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN)) {
        while (b->n_spare)
            close(b->spare[--b->n_spare]);
        /* a reset, not an orderly close: to a client, a broker closing the
         * link in order during the handshake suggests a wrong server key */
        struct linger reset = {.l_onoff = 1, .l_linger = 0};
        while (closed < SHED_MAX && (s = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
            setsockopt(s, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
            close(s);
            closed++;
        }
        broker_take_spares(b);
    }
    unsigned held;
    if (mdg_ratelog_due(&b->accept_log, LIMIT_LOG_MS, &held))
        mdg_log(MDG_LOG_ERROR, "cannot accept connections on the %s listener: %s (RLIMIT_NOFILE %ld, "
                               "%ld connections open, at most %d served): closed %d waiting; "
                               "%u more failures since the last such line",
                l->ops->name, strerror(err), b->fd_limit, b->live_conns, b->max_conns, closed, held);
}

/* A listener is bound: its socket is non-blocking from now on, so that
 * broker_accept_failed never waits (libzmq takes EAGAIN in its stride). */
void broker_listening(broker_listener *l, int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0)
        l->listen_fd = fd;
}

/* Descriptors open now (/proc/self/fd, else a scan of the first ones). */
static long open_fds(long limit)
{
    long n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        for (struct dirent *e; (e = readdir(d)) != NULL;)
            n += e->d_name[0] != '.';
        closedir(d);
        return n - 1; /* the directory's own */
    }
    for (long fd = 0; fd < limit && fd < 65536; fd++)
        n += fcntl((int)fd, F_GETFD) != -1;
    return n;
}

/* How many connections fit: one descriptor each, in what RLIMIT_NOFILE
 * leaves once the broker is set up, less FD_RESERVE for the rest of the
 * process (half of what is left when that is small). Said at start; a
 * warning when it is lower than asked, or low. */
void broker_set_budget(mdg_broker *b)
{
    struct rlimit rl;
    long limit = INT_MAX;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < INT_MAX)
        limit = (long)rl.rlim_cur;
    broker_take_spares(b); /* counted below */
    long open_now = open_fds(limit), avail = limit - open_now;
    long fit = avail > 2 * FD_RESERVE ? avail - FD_RESERVE : avail / 2;
    if (fit < 1)
        fit = 1;
    b->fd_limit = limit;
    b->max_conns = b->max_conns_asked && b->max_conns_asked < fit ? b->max_conns_asked : (int)fit;
    const char *how = "raise it for more (ulimit -n, or LimitNOFILE= in a systemd unit)";
    if (b->max_conns_asked > fit)
        mdg_log(MDG_LOG_WARN, "max_connections %d is more than RLIMIT_NOFILE %ld allows: the broker admits at most "
                              "%ld connections (one descriptor each; %ld open, %d kept for the rest); %s",
                b->max_conns_asked, limit, fit, open_now, FD_RESERVE, how);
    else if (!b->max_conns_asked && fit < FD_LOW_WARN)
        mdg_log(MDG_LOG_WARN, "RLIMIT_NOFILE %ld is low: the broker admits at most %ld connections (one "
                              "descriptor each; %ld open, %d kept for the rest); %s",
                limit, fit, open_now, FD_RESERVE, how);
    else
        mdg_log(MDG_LOG_INFO, "the broker admits at most %d connections (RLIMIT_NOFILE %ld)", b->max_conns, limit);
}
