/* http_listen.c - see http_listen.h. */
#include "http_listen.h"
#include "internal.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <string.h>

int mdg_http_resolve_bind(struct sockaddr_storage *addr, const char *bind_address, int port, const char *what)
{
    struct addrinfo hints = {0}, *res = NULL;
    int err;

    memset(addr, 0, sizeof *addr);
    if (!bind_address || !*bind_address || strcmp(bind_address, "*") == 0) {
        struct sockaddr_in *in = (struct sockaddr_in *)addr;
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_ANY);
        in->sin_port = htons((uint16_t)port);
        return 0;
    }
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    err = getaddrinfo(bind_address, NULL, &hints, &res);
    if (err != 0 || !res)
        return mdg_fail(MDG_EINVAL, "%s: cannot resolve bind address %s: %s", what, bind_address,
                        gai_strerror(err));
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (addr->ss_family == AF_INET)
        ((struct sockaddr_in *)addr)->sin_port = htons((uint16_t)port);
    else if (addr->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)addr)->sin6_port = htons((uint16_t)port);
    else
        return mdg_fail(MDG_EINVAL, "%s: %s is not an IP address", what, bind_address);
    return 0;
}

int mdg_http_bound_port(struct MHD_Daemon *d)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (!info || getsockname(info->listen_fd, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}
