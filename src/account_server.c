/* account_server.c - the HTTP server that turns invitations into users.
 *
 * libmicrohttpd serves one thing: POST / with the body
 *
 *     TOKEN PUBLIC_KEY_BASE64
 *
 * (one space; the key as in key files, 44 chars of standard base64). On
 * success it answers 200 and the broker's public key in base64, exactly as
 * the original Messidge did, so its Python create_account works against
 * us. Every refusal answers a 4xx status (5xx for our own failures) and a
 * text starting "Fail: " with the reason, and stores nothing; the store's
 * confirm is one transaction, so a token races to at most one winner.
 *
 * The body is read into a fixed buffer of MDG_ACCOUNT_MAX_BODY bytes. A
 * declared Content-Length over that is refused before the body is read;
 * a chunked body that grows past it is discarded as it arrives and then
 * refused, and one that goes on past DISCARD_CAP has its connection cut.
 * Connections are limited in number (in all, and per client address by our
 * accept policy), in memory, and in time: libmicrohttpd's own timeout is
 * an idle one, which a client sending a byte a second never meets, so a
 * watchdog thread cuts every connection whose request is not complete
 * request_timeout_ms after it opened. A slow or greedy client cannot hold
 * the server (mdg_account_server_options).
 */
#include "http_listen.h"
#include "internal.h"
#include "messidge_identity.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

/* Statuses by number: their MHD_HTTP_ names changed across versions. */
#define HTTP_OK 200
#define HTTP_BAD_REQUEST 400
#define HTTP_FORBIDDEN 403
#define HTTP_NOT_FOUND 404
#define HTTP_METHOD_NOT_ALLOWED 405
#define HTTP_CONFLICT 409
#define HTTP_GONE 410
#define HTTP_TOO_LARGE 413
#define HTTP_INTERNAL_ERROR 500

#define DISCARD_CAP (64 * 1024)   /* bytes of an oversized body we drain */
#define DEFAULT_CONNECTIONS 64
#define DEFAULT_PER_ADDRESS 8
#define DEFAULT_REQUEST_TIMEOUT_MS 5000
#define CONNECTION_MEMORY (32 * 1024)
#define LIMIT_LOG_MS 10000 /* repeated refusals and cuts are logged this often */

/* A connection from its start to its close: when it opened, and whether
 * its request is all in (then it is never cut: it may be confirming). */
typedef struct tracked {
    struct tracked *prev, *next;
    int fd;
    int64_t opened;
    bool complete, cut;
    struct sockaddr_storage addr;
} tracked;

struct mdg_account_server {
    struct MHD_Daemon *daemon;
    mdg_identity *id;                    /* borrowed */
    char broker_pk_b64[MDG_KEY_B64_LEN + 1];
    int port;
    struct sockaddr_storage addr;
    atomic_bool starting;                /* MHD messages go to start_error */
    char start_error[256];
    int max_connections, max_per_address, request_timeout_ms;
    /* the open connections, shared by MHD's thread and the watchdog */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    tracked *conns;
    int n_conns;
    bool stopping;
    pthread_t watchdog;
    bool watchdog_started;
    mdg_ratelog refused_log, full_log; /* MHD's thread */
    mdg_ratelog cut_log;               /* the watchdog */
};

/* One request's body, as it arrives. */
typedef struct request {
    size_t len;  /* bytes kept in body */
    size_t seen; /* bytes received in all */
    bool too_big;
    char body[MDG_ACCOUNT_MAX_BODY + 1];
} request;

/* ----------------------------------------------------------------- replies */

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status, const char *text)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ok;
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "Connection", "close"); /* request_timeout_ms counts per connection */
    ok = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ok;
}

/* An address, for log lines. */
static void addr_name(const struct sockaddr *sa, char *buf, size_t len)
{
    snprintf(buf, len, "?");
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, buf,
                  (socklen_t)len);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, buf,
                  (socklen_t)len);
}

/* The client's address, for log lines. */
static void peer_name(struct MHD_Connection *conn, char *buf, size_t len)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    addr_name(ci ? ci->client_addr : NULL, buf, len);
}

/* A refusal: log it and answer "Fail: reason". */
static enum MHD_Result refuse(struct MHD_Connection *conn, unsigned status, const char *reason)
{
    char text[320], who[INET6_ADDRSTRLEN];
    peer_name(conn, who, sizeof who);
    mdg_log(MDG_LOG_WARN, "account server: refused a request from %s (%u): %s", who, status,
            reason);
    snprintf(text, sizeof text, "Fail: %s", reason);
    return answer(conn, status, text);
}

/* ------------------------------------------- connections and deadlines */

static bool same_ip(const struct sockaddr *a, const struct sockaddr *b)
{
    if (a->sa_family != b->sa_family)
        return false;
    if (a->sa_family == AF_INET)
        return ((const struct sockaddr_in *)(const void *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)(const void *)b)->sin_addr.s_addr;
    if (a->sa_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)(const void *)a)->sin6_addr,
                      &((const struct sockaddr_in6 *)(const void *)b)->sin6_addr,
                      sizeof(struct in6_addr)) == 0;
    return false;
}

/* Accept policy: at most max_per_address open connections from one IP
 * address. (libmicrohttpd's own per-IP limit logs no address.) */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    mdg_account_server *s = cls;
    int same = 0;
    unsigned held;
    (void)addrlen;
    pthread_mutex_lock(&s->lock);
    for (tracked *t = s->conns; t; t = t->next)
        same += same_ip((const struct sockaddr *)&t->addr, addr);
    pthread_mutex_unlock(&s->lock);
    if (same < s->max_per_address)
        return MHD_YES;
    if (mdg_ratelog_due(&s->refused_log, LIMIT_LOG_MS, &held)) {
        char who[INET6_ADDRSTRLEN];
        addr_name(addr, who, sizeof who);
        mdg_log(MDG_LOG_WARN,
                "account server: refused a connection from %s: %d already open from that address "
                "(max_per_address); %u more refused since the last such line",
                who, same, held);
    }
    return MHD_NO;
}

/* Connections are tracked from their start to their close, for the
 * per-address limit and the watchdog. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    mdg_account_server *s = cls;
    tracked *t = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        if (!t)
            return;
        pthread_mutex_lock(&s->lock);
        if (t->prev)
            t->prev->next = t->next;
        else
            s->conns = t->next;
        if (t->next)
            t->next->prev = t->prev;
        s->n_conns--;
        pthread_mutex_unlock(&s->lock);
        free(t);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *fd = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!(t = calloc(1, sizeof *t)))
        return; /* then only the idle timeout bounds it */
    t->fd = fd ? fd->connect_fd : -1;
    t->opened = mdg_now_ms();
    if (ci && ci->client_addr)
        memcpy(&t->addr, ci->client_addr,
               ci->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    pthread_mutex_lock(&s->lock);
    t->next = s->conns;
    if (s->conns)
        s->conns->prev = t;
    s->conns = t;
    int n = ++s->n_conns;
    pthread_mutex_unlock(&s->lock);
    *socket_context = t;
    unsigned held;
    if (n >= s->max_connections && mdg_ratelog_due(&s->full_log, LIMIT_LOG_MS, &held))
        mdg_log(MDG_LOG_WARN, "account server: at its connection limit (%d open, max_connections): new "
                              "connections wait until one closes; %u more times since the last such line",
                n, held);
}

/* The request on conn is all in: from now on the watchdog leaves it alone.
 * False when the watchdog has cut it already (too late to confirm). */
static bool request_complete(mdg_account_server *s, struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    tracked *t = ci ? ci->socket_context : NULL;
    bool ok = true;
    if (!t)
        return true;
    pthread_mutex_lock(&s->lock);
    t->complete = true;
    ok = !t->cut;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

/* The watchdog: a few times per request_timeout_ms, shut down the sockets
 * of connections whose request is still not complete that long after they
 * opened. libmicrohttpd's thread then sees them end and closes them; until
 * it does they are still tracked (it tells us before it closes a socket),
 * so a socket is never shut down after its number was reused. */
static void *watchdog(void *arg)
{
    mdg_account_server *s = arg;
    int tick = s->request_timeout_ms / 4 < 20 ? 20 : s->request_timeout_ms / 4 > 250 ? 250 : s->request_timeout_ms / 4;
    pthread_mutex_lock(&s->lock);
    while (!s->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += (long)tick * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&s->wake, &s->lock, &ts);
        int64_t now = mdg_now_ms();
        for (tracked *t = s->conns; t; t = t->next) {
            if (t->complete || t->cut || t->fd < 0 || now - t->opened <= s->request_timeout_ms)
                continue;
            shutdown(t->fd, SHUT_RDWR);
            t->cut = true;
            unsigned held;
            if (mdg_ratelog_due(&s->cut_log, LIMIT_LOG_MS, &held)) {
                char who[INET6_ADDRSTRLEN];
                addr_name((const struct sockaddr *)&t->addr, who, sizeof who);
                mdg_log(MDG_LOG_WARN,
                        "account server: cut a connection from %s: its request was not complete "
                        "%d ms after it opened (request_timeout_ms); %u more cut since the last such line",
                        who, s->request_timeout_ms, held);
            }
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* ---------------------------------------------------------- confirmation */

/* Parse "TOKEN KEY" and confirm; answers on conn. */
static enum MHD_Result confirm(mdg_account_server *s, struct MHD_Connection *conn, request *r)
{
    char *body = r->body, *space;
    size_t len = r->len;
    uint8_t pk[MDG_KEY_BYTES];
    int rc;

    /* One trailing newline is tolerated, for people testing with curl. */
    if (len > 0 && body[len - 1] == '\n')
        len--;
    if (len > 0 && body[len - 1] == '\r')
        len--;
    body[len] = '\0';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)body[i];
        if (c < ' ' || c == 0x7f)
            return refuse(conn, HTTP_BAD_REQUEST,
                          "malformed request: control characters in the body");
    }
    space = memchr(body, ' ', len);
    if (len == 0 || !space || space == body || space == body + len - 1 ||
        memchr(space + 1, ' ', len - (size_t)(space + 1 - body)))
        return refuse(conn, HTTP_BAD_REQUEST,
                      "malformed request: expected \"TOKEN PUBLIC_KEY\" separated by one space");
    *space = '\0';
    if (mdg_pk_from_b64(pk, space + 1) != 0)
        return refuse(conn, HTTP_BAD_REQUEST,
                      "the public key is not a 32-byte key in standard base64 (44 characters)");

    rc = mdg_identity_confirm(s->id, body, pk);
    switch (rc) {
    case 0: {
        char who[INET6_ADDRSTRLEN];
        peer_name(conn, who, sizeof who);
        mdg_log(MDG_LOG_INFO, "account server: confirmed an account for %s", who);
        return answer(conn, HTTP_OK, s->broker_pk_b64);
    }
    case MDG_EINVAL: return refuse(conn, HTTP_BAD_REQUEST, mdg_last_error());
    case MDG_ENOTFOUND: return refuse(conn, HTTP_FORBIDDEN, mdg_last_error());
    case MDG_ESTATE: return refuse(conn, HTTP_CONFLICT, mdg_last_error());
    case MDG_ETIMEDOUT: return refuse(conn, HTTP_GONE, mdg_last_error());
    default:
        /* The detail names files: log it, do not send it. */
        mdg_log(MDG_LOG_ERROR, "account server: %s", mdg_last_error());
        return answer(conn, HTTP_INTERNAL_ERROR, "Fail: internal error, see the broker's log");
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    mdg_account_server *s = cls;
    request *r = *con_cls;
    (void)version;

    if (!r) {
        /* Headers only, so far: refuse what we can before reading a body. */
        const char *cl;
        if (strcmp(method, "POST") != 0)
            return refuse(conn, HTTP_METHOD_NOT_ALLOWED, "only POST is served");
        if (strcmp(url, "/") != 0)
            return refuse(conn, HTTP_NOT_FOUND, "unknown path: POST to /");
        cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > MDG_ACCOUNT_MAX_BODY)
            return refuse(conn, HTTP_TOO_LARGE, "request body is over 4096 bytes");
        r = malloc(sizeof *r);
        if (!r)
            return MHD_NO;
        r->len = r->seen = 0;
        r->too_big = false;
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        r->seen += n;
        if (r->seen > DISCARD_CAP)
            return MHD_NO; /* drop the connection: not worth reading */
        if (!r->too_big && r->len + n <= MDG_ACCOUNT_MAX_BODY) {
            memcpy(r->body + r->len, upload_data, n);
            r->len += n;
        } else {
            r->too_big = true;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    /* The whole body is in. */
    if (!request_complete(s, conn))
        return MHD_NO; /* cut by the watchdog meanwhile: nothing stored */
    if (r->too_big)
        return refuse(conn, HTTP_TOO_LARGE, "request body is over 4096 bytes");
    return confirm(s, conn, r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode code)
{
    (void)cls;
    (void)conn;
    (void)code;
    free(*con_cls);
    *con_cls = NULL;
}

/* libmicrohttpd's own messages. While starting they are kept for the
 * error text (only this thread runs then); later they are logged. */
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    mdg_account_server *s = cls;
    char text[256];
    size_t n;
    vsnprintf(text, sizeof text, fmt, ap);
    n = strlen(text);
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        text[--n] = '\0';
    if (atomic_load(&s->starting))
        snprintf(s->start_error, sizeof s->start_error, "%s", text);
    mdg_log(MDG_LOG_WARN, "account server: %s", text);
}

/* ---------------------------------------------------------------- life */

/* Stop the watchdog thread (before the daemon: it shuts sockets down). */
static void stop_watchdog(mdg_account_server *s)
{
    if (!s->watchdog_started)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->watchdog, NULL);
    s->watchdog_started = false;
}

static void server_free(mdg_account_server *s)
{
    stop_watchdog(s);
    if (s->daemon)
        MHD_stop_daemon(s->daemon); /* closes every connection: none stays tracked */
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

int mdg_account_server_new_opts(mdg_account_server **out, mdg_identity *id,
                                const uint8_t broker_pk[MDG_KEY_BYTES],
                                const mdg_account_server_options *opts)
{
    mdg_account_server_options o = {0};
    mdg_account_server *s;
    unsigned flags = MHD_USE_AUTO | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    pthread_condattr_t ca;
    int rc, err;

    if (!out)
        return mdg_fail(MDG_EINVAL, "mdg_account_server_new: out is NULL");
    *out = NULL;
    if (!id || !broker_pk)
        return mdg_fail(MDG_EINVAL, "mdg_account_server_new: NULL argument");
    if (opts)
        o = *opts;
    if (o.port < 0 || o.port > 65535)
        return mdg_fail(MDG_EINVAL, "account server: port %d is out of range", o.port);
    if (o.max_connections < 0 || o.max_per_address < 0 || o.request_timeout_ms < 0)
        return mdg_fail(MDG_EINVAL, "account server: limits cannot be negative (0 = the default)");
    s = calloc(1, sizeof *s);
    if (!s)
        return mdg_fail_plain(MDG_ENOMEM);
    s->id = id;
    s->max_connections = o.max_connections ? o.max_connections : DEFAULT_CONNECTIONS;
    s->max_per_address = o.max_per_address ? o.max_per_address : DEFAULT_PER_ADDRESS;
    s->request_timeout_ms = o.request_timeout_ms ? o.request_timeout_ms : DEFAULT_REQUEST_TIMEOUT_MS;
    mdg_pk_to_b64(broker_pk, s->broker_pk_b64);
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the watchdog's ticks */
    pthread_cond_init(&s->wake, &ca);
    pthread_condattr_destroy(&ca);
    if ((rc = mdg_http_resolve_bind(&s->addr, o.bind_address, o.port, "account server")) != 0) {
        server_free(s);
        return rc;
    }
    if (s->addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;

    atomic_store(&s->starting, true);
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)o.port, on_accept, s, on_request, s,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s, /* first, to catch every message */
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&s->addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)s->max_connections,
        /* an idle timeout: a backstop to the watchdog */
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)((s->request_timeout_ms + 999) / 1000),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
        MHD_OPTION_END);
    err = errno;
    atomic_store(&s->starting, false);
    if (!s->daemon) {
        rc = mdg_fail(MDG_ESYS, "cannot start the account server on %s port %d: %s",
                      o.bind_address ? o.bind_address : "*", o.port,
                      s->start_error[0] ? s->start_error : strerror(err));
        server_free(s);
        return rc;
    }
    if (pthread_create(&s->watchdog, NULL, watchdog, s) != 0) {
        server_free(s);
        return mdg_fail(MDG_ESYS, "account server: cannot start its watchdog thread");
    }
    s->watchdog_started = true;
    s->port = mdg_http_bound_port(s->daemon);
    mdg_log(MDG_LOG_INFO,
            "account server listening on %s port %d (at most %d connections, %d per address, "
            "%d ms per request)",
            o.bind_address ? o.bind_address : "*", s->port, s->max_connections, s->max_per_address,
            s->request_timeout_ms);
    *out = s;
    return 0;
}

int mdg_account_server_new(mdg_account_server **out, mdg_identity *id,
                           const uint8_t broker_pk[MDG_KEY_BYTES], const char *bind_address,
                           int port)
{
    mdg_account_server_options o = {.bind_address = bind_address, .port = port};
    return mdg_account_server_new_opts(out, id, broker_pk, &o);
}

int mdg_account_server_port(const mdg_account_server *s)
{
    return s ? s->port : 0;
}

void mdg_account_server_destroy(mdg_account_server **sp)
{
    if (!sp || !*sp)
        return;
    server_free(*sp);
    *sp = NULL;
}
