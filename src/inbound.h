/* inbound.h - one received message, whatever protocol brought it: what a
 * listener hands on once it has decoded a message, and all that the later
 * steps read of it. Its way through the broker:
 *
 *   socket -> decode (broker_native.c, broker_legacy.c: an mdg_inbound)
 *          -> session (broker_session.c) -> in order, once (broker_channel.c)
 *          -> route (broker_route.c): forwarded to a node, a node's reply
 *             sent back, or dispatched to a handler as an mdg_msg (msg.c)
 *
 * Its params stay in the form they came in, which is the cheapest: a native
 * message's encoded CBOR map (a node's reply is passed on as it came, never
 * decoded), a 1.x message's decoded params (its frame is decoded to be
 * opened). Whoever needs the other form converts, once. */
#ifndef MDG_INBOUND_H
#define MDG_INBOUND_H

#include "wire.h"

/* The keys and values of a batched message's params remembered from the
 * walk that found its end: 8 pairs, more than the usual call has. */
#define MDG_INBOUND_MARKS 16

typedef struct mdg_inbound {
    mdg_header h;
    zmq_msg_t encoded;  /* the head frame as it came (has_encoded)... */
    size_t params_off;  /* ...whose params start here... */
    size_t params_len;  /* ...and are this long, */
    bool params_checked; /* ...within cbor_check.h's limits (walked already) */
    /* ...where that walk saw their keys and values start, so that decoding
     * them does not walk again (more than MDG_INBOUND_MARKS: it does) */
    uint32_t marks[MDG_INBOUND_MARKS];
    size_t nmarks;
    bool halves, indefinite;
    bool has_encoded;
    mdg_params *params; /* or the params decoded; never both, maybe neither */
    zmq_msg_t bulk;     /* the optional bulk frame (has_bulk) */
    bool has_bulk;
} mdg_inbound;

/* No params, no bulk; the header is the caller's to fill. */
void mdg_inbound_init(mdg_inbound *in);
/* Where reading a head frame has got to; {0} before its first message. */
typedef struct mdg_inbound_cursor {
    size_t off;     /* where the next message starts */
    unsigned count; /* messages read */
} mdg_inbound_cursor;

/* The next message of a native message's frames, f->part[first] on: a
 * head frame of one or more messages (at most MDG_MAX_BATCH), then a bulk
 * frame only after a head frame of one. 0 with in holding the message (its
 * header decoded, the head frame shared for its params, the bulk moved out
 * of f); 1 when the frame has no more; MDG_EPROTO with the reason when the
 * header does not decode (in->h is then all zero: kind 0), or when the
 * frames are not a head and at most one bulk, or the head holds more than
 * MDG_MAX_BATCH messages (in->h is then decoded, for the refusal). After
 * an error the rest of the frame is not read. Params are checked by
 * whoever takes them. */
int mdg_inbound_next(mdg_inbound *in, mdg_frames *f, int first, mdg_inbound_cursor *at);
/* Take the params decoded (the frame decoded now when that is what came):
 * 0 with *out the caller's, or MDG_EPROTO / MDG_ENOMEM with the reason. */
int mdg_inbound_take_params(mdg_inbound *in, mdg_params **out);
/* The params as a message to pass on (*out initialised here, the caller
 * closes it): the bytes as they came, checked to be one well-formed CBOR
 * map without decoding them, in a message that owns nothing and is valid
 * until in is closed (to be copied where it is kept); or the decoded
 * params encoded. 0 or MDG_EPROTO / MDG_ENOMEM. */
int mdg_inbound_encoded_params(mdg_inbound *in, zmq_msg_t *out);
/* Take the bulk frame: true with *out initialised and holding it. */
bool mdg_inbound_take_bulk(mdg_inbound *in, zmq_msg_t *out);
/* Move all of src to dst (src is left empty, as after init). */
void mdg_inbound_move(mdg_inbound *dst, mdg_inbound *src);
void mdg_inbound_close(mdg_inbound *in);

#endif
