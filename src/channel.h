/* channel.h - the reliable numbered channel: exactly once and in order
 * over links that drop (docs/protocol.md section 6).
 *
 * One channel per session, at each end: a broker session and a client
 * connection use the same one. Sending, it numbers each message, keeps it
 * until the peer acknowledges it, and after a resume sends again what the
 * peer did not have. Receiving, it says whether a message is the next one,
 * a duplicate or past a gap, and when an acknowledgement is due.
 *
 * What the link is comes from the owner (mdg_chan_ops): how to hand a
 * message to it and whether the peer acknowledges at all (a Messidge 1.x
 * peer does not: a message is done once libzmq has it). Messages are the
 * owner's, with an mdg_chan_msg as their first member, so that each end
 * keeps what it needs beside them. One thread (the owner's loop). */
#ifndef MDG_CHANNEL_H
#define MDG_CHANNEL_H

#include "wire.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* acknowledge at least every MDG_CHAN_ACK_EVERY messages, or
 * MDG_CHAN_ACK_DELAY_MS after the first one not acknowledged */
#define MDG_CHAN_ACK_EVERY 32
#define MDG_CHAN_ACK_DELAY_MS 20
/* Messages waiting for one peer go out together, as one head frame of at
 * most batch_max messages and this many bytes (a larger message goes
 * alone): one CURVE box and one libzmq message for all of them. Only what
 * already waits is coalesced. */
#define MDG_CHAN_BATCH_BYTES (64 << 10)

typedef struct mdg_chan_msg {
    struct mdg_chan_msg *next;
    mdg_header h; /* seq set by the channel; ack set on every send */
    zmq_msg_t params, bulk;
    bool has_bulk;
} mdg_chan_msg;

typedef struct mdg_chan_ops {
    /* Hand one message to the link: params borrowed (the kept message's),
     * bulk a copy moved in. 0; MDG_EAGAIN when the link has no room
     * (nothing was sent; the channel closes the copy); another error when
     * the link is gone (the copy is the callee's to close; the message
     * stays kept and goes again after a resume). */
    int (*send)(void *owner, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk);
    /* A message is done with: acknowledged, or dropped with the session.
     * The owner frees it (and anything it kept beside it). */
    void (*release)(void *owner, mdg_chan_msg *m);
    /* Hand a head frame of several messages (mdg_wire_put_head) to the link,
     * same contract as send but for the frame (taken, but on MDG_EAGAIN).
     * NULL: the link takes one message at a time. */
    int (*send_frame)(void *owner, zmq_msg_t *head);
    /* The peer acknowledges (native); false for a Messidge 1.x peer. */
    bool acks;
} mdg_chan_ops;

typedef struct mdg_channel {
    const mdg_chan_ops *ops;
    void *owner;
    /* kept messages, oldest first; from `unsent` on not yet handed to the
     * link (new, or to go again after a resume) */
    mdg_chan_msg *head, *tail, *unsent;
    size_t len;        /* kept: unsent plus sent and not acknowledged */
    uint64_t tx_seq;   /* last number given */
    uint64_t rx_seq;   /* last number received in order */
    uint64_t acked;    /* last of ours the peer acknowledged */
    uint64_t ack_sent; /* last rx_seq the peer was told */
    /* the most bytes a head frame of several messages may have: at most
     * MDG_CHAN_BATCH_BYTES, less for a peer that takes less (the broker's
     * max_message, from its welcome); a larger message still goes alone */
    size_t batch_bytes;
    /* messages in such a frame: what the peer takes (its max_batch), at
     * most MDG_MAX_BATCH; MDG_PEER_BATCH until it says */
    size_t batch_max;
} mdg_channel;

/* How many messages the peer said it takes in a head frame (max_batch in
 * its hello or welcome params), within 1..MDG_MAX_BATCH; MDG_PEER_BATCH
 * when it did not say. For batch_max. */
size_t mdg_chan_said_batch(const mdg_params *said);
/* The peer takes frames of at most max_bytes: so is a head frame of
 * several messages (batch_bytes, MDG_CHAN_BATCH_BYTES at most). */
void mdg_chan_limit_frame(mdg_channel *ch, size_t max_bytes);

void mdg_chan_init(mdg_channel *ch, const mdg_chan_ops *ops, void *owner);

/* Number m and keep it (taken); it goes out with the next mdg_chan_flush. */
void mdg_chan_append(mdg_channel *ch, mdg_chan_msg *m);
/* Hand what is unsent to the link, in order. 0 when all went; MDG_EAGAIN
 * when the link is full (the rest waits); another error when the link
 * failed (the message it failed on stays kept, as sent). */
int mdg_chan_flush(mdg_channel *ch);
/* Whether messages wait to be handed to the link. */
static inline bool mdg_chan_pending(const mdg_channel *ch)
{
    return ch->unsent != NULL;
}

/* The peer has ours up to ack: release them (never what was not sent; an
 * ack past what was numbered counts as all). Returns how many. */
size_t mdg_chan_acked(mdg_channel *ch, uint64_t ack);
/* The session resumed on a new link and the peer has ours up to ack:
 * release those, and send everything else again, in order. */
void mdg_chan_resume(mdg_channel *ch, uint64_t ack);
/* The link dropped: whatever was not acknowledged goes again (after a
 * resume, which may release more). */
static inline void mdg_chan_rewind(mdg_channel *ch)
{
    ch->unsent = ch->head;
}
/* The session is gone: release every kept message and start numbering
 * again from 1 both ways. Returns how many were released. */
size_t mdg_chan_reset(mdg_channel *ch);

/* How a received header stands in the numbering (see mdg_chan_check). */
enum mdg_chan_verdict {
    MDG_CHAN_UNNUMBERED, /* a kind without a number (hello, ack, a notice) */
    MDG_CHAN_NEXT,       /* the next one: handle it, then mdg_chan_received */
    MDG_CHAN_DUPLICATE,  /* had it already (resent after a resume): drop it */
    MDG_CHAN_GAP,        /* something before it was lost: drop it, have it resent */
};
int mdg_chan_check(const mdg_channel *ch, const mdg_header *h);
/* The next numbered message was taken. */
static inline void mdg_chan_received(mdg_channel *ch, uint64_t seq)
{
    ch->rx_seq = seq;
}
/* An acknowledgement is owed (something received not yet acknowledged)
 * and whether it is due at once (MDG_CHAN_ACK_EVERY reached). */
static inline bool mdg_chan_ack_owed(const mdg_channel *ch)
{
    return ch->rx_seq > ch->ack_sent;
}
static inline bool mdg_chan_ack_due(const mdg_channel *ch)
{
    return ch->rx_seq - ch->ack_sent >= MDG_CHAN_ACK_EVERY;
}
/* Stamp an outgoing header with what we received; call mdg_chan_ack_told
 * once it went (every send of the channel's own does both). */
static inline void mdg_chan_stamp(const mdg_channel *ch, mdg_header *h)
{
    h->ack = ch->rx_seq;
}
static inline void mdg_chan_ack_told(mdg_channel *ch, uint64_t ack)
{
    if (ack > ch->ack_sent)
        ch->ack_sent = ack;
}

#endif
