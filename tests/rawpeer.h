/* rawpeer.h - reading the native wire by hand, for tests whose peers are
 * raw sockets: a head frame may hold several messages (MDG_F_NEXT), so a
 * raw peer keeps the frame it is reading and takes its messages in turn. */
#ifndef MDG_TEST_RAWPEER_H
#define MDG_TEST_RAWPEER_H

#include "inbound.h"

#include <zmq.h>

typedef struct t_wire_reader {
    mdg_frames f; /* the frames being read, while has */
    mdg_inbound_cursor at; /* how far the head frame is read */
    bool has;
} t_wire_reader;

/* The next message on sock (a DEALER: no routing id) within ms: 0 with *in
 * (the caller closes it), -1 when nothing came in time, -2 when what came
 * is not a message (the rest of its frame is dropped). */
static inline int t_wire_next(t_wire_reader *r, void *sock, mdg_inbound *in, int ms)
{
    int64_t end = mdg_now_ms() + ms;
    for (;;) {
        if (r->has) {
            int rc = mdg_inbound_next(in, &r->f, 0, &r->at);
            if (rc == 0)
                return 0;
            mdg_frames_close(&r->f);
            r->has = false;
            if (rc < 0)
                return -2;
        }
        zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
        int64_t left = end - mdg_now_ms();
        if (zmq_poll(&it, 1, left > 0 ? (long)left : 0) <= 0 || mdg_frames_recv(sock, &r->f) != 0)
            return -1;
        r->has = true;
        r->at = (mdg_inbound_cursor){0};
    }
}

static inline void t_wire_reader_close(t_wire_reader *r)
{
    if (r->has)
        mdg_frames_close(&r->f);
    r->has = false;
}

#endif
