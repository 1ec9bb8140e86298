/* http_listen.h - where a libmicrohttpd server listens: the account server
 * and the metrics server share this. */
#ifndef MDG_HTTP_LISTEN_H
#define MDG_HTTP_LISTEN_H

#include <sys/socket.h>

#include <microhttpd.h>

/* addr = bind_address ("*", NULL or "" for all IPv4 addresses) and port.
 * 0, or MDG_EINVAL with the reason (what names the server in it). */
int mdg_http_resolve_bind(struct sockaddr_storage *addr, const char *bind_address, int port, const char *what);
/* The port a started daemon listens on, or 0. */
int mdg_http_bound_port(struct MHD_Daemon *d);

#endif
