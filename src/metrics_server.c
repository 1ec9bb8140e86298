/* metrics_server.c - the broker's metrics over HTTP (libmicrohttpd):
 *
 *   GET /metrics   200, the Prometheus text exposition format (0.0.4) of
 *                  mdg_broker_metrics_text
 *   GET /healthz   200 "ok" while the broker's loop runs, else 503
 *   anything else  404 (405 for another method)
 *
 * Opt-in, and meant for a private address: it says how busy the broker is,
 * not who uses it (no keys, no commands). One internal thread; requests
 * are small and answered at once. */
#include "http_listen.h"
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define HTTP_OK 200
#define HTTP_NOT_FOUND 404
#define HTTP_METHOD_NOT_ALLOWED 405
#define HTTP_INTERNAL_ERROR 500
#define HTTP_UNAVAILABLE 503
#define METRICS_CONNECTIONS 16

struct mdg_metrics_server {
    struct MHD_Daemon *daemon;
    const mdg_broker *broker;
    int port;
};

static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const char *type, char *body, bool owned)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen(body), body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (owned)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_len, void **state)
{
    mdg_metrics_server *s = cls;
    (void)version;
    (void)upload;
    if (!*state) { /* first call: headers only; answer on the next */
        *state = s;
        return MHD_YES;
    }
    if (*upload_len) {
        *upload_len = 0; /* a body is ignored */
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return answer(c, HTTP_METHOD_NOT_ALLOWED, "text/plain", "GET only\n", false);
    if (strcmp(url, "/healthz") == 0)
        return mdg_broker_healthy(s->broker) ? answer(c, HTTP_OK, "text/plain", "ok\n", false)
                                             : answer(c, HTTP_UNAVAILABLE, "text/plain", "broker not running\n", false);
    if (strcmp(url, "/metrics") == 0) {
        char *text = mdg_broker_metrics_text(s->broker);
        return text ? answer(c, HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, true)
                    : answer(c, HTTP_INTERNAL_ERROR, "text/plain", "out of memory\n", false);
    }
    return answer(c, HTTP_NOT_FOUND, "text/plain", "/metrics or /healthz\n", false);
}

int mdg_metrics_server_new(mdg_metrics_server **out, const mdg_broker *b, const char *bind_address, int port)
{
    struct sockaddr_storage addr;
    unsigned flags = MHD_USE_AUTO | MHD_USE_INTERNAL_POLLING_THREAD;
    int rc;

    if (!out)
        return mdg_fail(MDG_EINVAL, "mdg_metrics_server_new: out is NULL");
    *out = NULL;
    if (!b || port < 0 || port > 65535)
        return mdg_fail(MDG_EINVAL, "metrics server: no broker, or port %d out of range", port);
    if ((rc = mdg_http_resolve_bind(&addr, bind_address, port, "metrics server")) != 0)
        return rc;
    mdg_metrics_server *s = calloc(1, sizeof *s);
    if (!s)
        return mdg_fail_plain(MDG_ENOMEM);
    s->broker = b;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR,
                                 (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT,
                                 (unsigned int)METRICS_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                                 MHD_OPTION_END);
    if (!s->daemon) {
        rc = mdg_fail(MDG_ESYS, "cannot start the metrics server on %s port %d: %s",
                      bind_address ? bind_address : "*", port, strerror(errno));
        free(s);
        return rc;
    }
    s->port = mdg_http_bound_port(s->daemon);
    mdg_log(MDG_LOG_INFO, "metrics server on port %d (/metrics, /healthz)", s->port);
    *out = s;
    return 0;
}

int mdg_metrics_server_port(const mdg_metrics_server *s)
{
    return s ? s->port : 0;
}

void mdg_metrics_server_destroy(mdg_metrics_server **sp)
{
    if (!sp || !*sp)
        return;
    MHD_stop_daemon((*sp)->daemon);
    free(*sp);
    *sp = NULL;
}
