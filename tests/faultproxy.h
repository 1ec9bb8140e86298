/* faultproxy.h - a TCP proxy for fault tests: it sits between a client and
 * the broker on loopback and can cut every connection through it, stall
 * them (stop forwarding in both directions, like a black-holed link), fail
 * new ones during their handshake, or throttle what clients send. */
#ifndef MDG_FAULTPROXY_H
#define MDG_FAULTPROXY_H

typedef struct faultproxy faultproxy;

/* Listen on a free loopback port and forward to 127.0.0.1:target_port. */
faultproxy *fp_new(int target_port);
int fp_port(const faultproxy *fp);
/* Close every connection through the proxy (both sides). New ones are
 * accepted as before. */
void fp_cut(faultproxy *fp);
/* Stop / resume forwarding and accepting; connections stay open. */
void fp_stall(faultproxy *fp, int stalled);
/* The next n connections fail during the handshake: each is closed once
 * the client has sent at least after_bytes through it (0: at once, before
 * the broker hears of it), with a TCP reset (hard) or an orderly close. */
void fp_fail_next(faultproxy *fp, int n, int after_bytes, int hard);
/* Connections failed so far by fp_fail_next. */
int fp_failed(const faultproxy *fp);
/* Forward at most bytes_per_10ms from the clients to the broker, on every
 * connection together (0: no limit). */
void fp_throttle(faultproxy *fp, int bytes_per_10ms);
/* Connections cut so far. */
int fp_cuts(const faultproxy *fp);
void fp_destroy(faultproxy **fp);

#endif
