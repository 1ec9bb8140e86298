/* msg.h - message internals shared by the broker and the connection. */
#ifndef MDG_MSG_H
#define MDG_MSG_H

#include "inbound.h"
#include "messidge.h"
#include "wire.h"

/* How a message's replies travel back: set by whoever received it. kind is
 * MDG_K_REPLY or MDG_K_ERROR; results are taken; bulk is copied. */
typedef int (*mdg_reply_send_fn)(mdg_msg *m, int kind, uint32_t flags, mdg_params *results,
                                 const void *bulk, size_t bulk_len);

struct mdg_msg {
    mdg_header h;
    mdg_params *params;
    zmq_msg_t bulk;
    bool has_bulk;
    bool closed;            /* the final reply has been sent */
    bool kept;              /* the application owns it (mdg_msg_keep) */
    const char *error;      /* error text of an MDG_K_ERROR message */
    mdg_reply_send_fn send_reply;
    void *owner;            /* the broker or connection that received it */
    uint64_t epoch;         /* connection: the session it came in on (its replies go there only) */
    void *session_data;     /* broker: the sender's session data */
    uint8_t session_id[16]; /* broker: the sender's session (replies go there only) */
    uint8_t pk[MDG_KEY_BYTES]; /* broker: the sender's key */
};

/* Build a message for a handler from a received one: its header copied,
 * its params (decoded now if they came encoded) and bulk taken. 0, or
 * MDG_EPROTO / MDG_ENOMEM with the reason in mdg_last_error(). */
int mdg_msg_from_inbound(mdg_msg **out, mdg_inbound *in);
/* A message that must wait gives its params and bulk back to the received
 * one it was made from, to be made again later (m is then destroyed). */
void mdg_msg_give_back(mdg_msg *m, mdg_inbound *in);

/* The library's checks before a handler runs. Returns the matching row, or
 * NULL with the reason written to why (for the error reply and the log). */
const mdg_cmd *mdg_cmd_check(const mdg_cmd *table, const mdg_msg *m, bool from_node, char *why,
                             size_t why_len);

#endif
