/* faultproxy.h - a TCP proxy for fault tests: it sits between a client and
 * the broker on loopback and can cut every connection through it, or stall
 * them (stop forwarding in both directions, like a black-holed link). */
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
/* Connections cut so far. */
int fp_cuts(const faultproxy *fp);
void fp_destroy(faultproxy **fp);

#endif
