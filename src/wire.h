/* wire.h - the native wire format (see docs/protocol.md).
 *
 * A message is 1 or 2 ZMQ frames (plus the routing id at a ROUTER):
 *   head    two CBOR items back to back: the header, an array
 *           [version, kind, seq, ack, corr, command, flags], then the
 *           params, a map with text keys
 *   bulk    optional raw bytes, never inside CBOR
 * One frame for header and params is one CURVE box and one libzmq message
 * less per message than version 1, which sent them as two frames. */
#ifndef MDG_WIRE_H
#define MDG_WIRE_H

#include "cbor_check.h"
#include "messidge.h"
#include "params.h"

#include <stddef.h>
#include <string.h>
#include <zmq.h>

#define MDG_WIRE_VERSION 2
#define MDG_MAX_COMMAND 255     /* bytes in a command name */
#define MDG_MAX_HEADER 512      /* bytes in an encoded header */
#define MDG_MAX_DEPTH 32        /* nesting of params */
/* CBOR items in one params map (or 1.x frame): libcbor's item trees cost
 * about 70 bytes of memory per item, so a frame of one-byte items would
 * cost 70 times its size to decode. Bulk data belongs in the bulk frame. */
#define MDG_MAX_ITEMS (1u << 18)
/* Messages in one head frame (MDG_F_NEXT). A receiver refuses the rest of
 * a longer frame: one peer's frame must not hold a loop for long. Each
 * side says its own in hello and welcome ("max_batch") and sends the other
 * no more; a peer that does not say takes MDG_PEER_BATCH (libmessidge
 * before 2026-12-03). 128 measured better than 64: a window topped up 100
 * calls at a time went in one frame, not two. */
#define MDG_MAX_BATCH 128
#define MDG_PEER_BATCH 64
#define MDG_STR_(x) #x
#define MDG_STR(x) MDG_STR_(x) /* a number as text, for messages */
/* The most bytes a header with a command of len bytes encodes to: the
 * array, five uints of at most 9 bytes, the text's length and the flags. */
#define MDG_HEADER_BOUND(len) (1 + 2 + 5 * 9 + 3 + (size_t)(len))
/* One frame, at both ends (ZMQ_MAXMSGSIZE: libzmq drops the connection of
 * a peer that sends more); the broker's max_message may lower it. */
#define MDG_MAX_FRAME (256LL << 20)
/* What CURVE adds to a frame (its MESSAGE command: name, nonce, flags and
 * MAC): libzmq holds the frame as it came, encrypted, to ZMQ_MAXMSGSIZE,
 * so a socket's limit is the plaintext's plus this. */
#define MDG_CURVE_OVERHEAD 64
/* Messages libzmq queues for one peer before it reports the pipe full
 * (ZMQ_SNDHWM); the channels keep the rest until there is room. */
#define MDG_SEND_HWM 10000
/* The broker's word to a node on one of its calls: pause, resume or end
 * its replies (docs/protocol.md section 8.2.1). */
#define MDG_FLOW_COMMAND "mdg.flow"

enum mdg_kind {
    MDG_K_HELLO = 1,   /* client -> broker: open or resume a session */
    MDG_K_WELCOME = 2, /* broker -> client: the session is open */
    MDG_K_CMD = 3,     /* a command, either way */
    MDG_K_REPLY = 4,   /* a reply to a command (corr says which) */
    MDG_K_ERROR = 5,   /* a failure: reply (corr != 0) or notice (corr 0) */
    MDG_K_BYE = 6,     /* client -> broker: closing the session */
    MDG_K_ACK = 7,     /* acknowledgement only (reliability layer) */
    MDG_K_MAX = 7,
};

enum mdg_header_flags {
    MDG_F_MORE = 1u << 0, /* a reply on a long-term channel: more follow */
    /* framing only, never seen past the decoder: another message follows
     * this one's params in the same head frame */
    MDG_F_NEXT = 1u << 1,
};

typedef struct mdg_header {
    uint8_t kind;
    uint32_t flags;
    uint64_t seq;  /* per-direction sequence number; 0 = unsequenced */
    uint64_t ack;  /* highest seq received from the peer */
    uint64_t corr; /* correlation id; 0 = no reply wanted */
    uint8_t command_len;
    char command[MDG_MAX_COMMAND + 1];
} mdg_header;

/* Copy a header: its fields and the command's bytes, not the rest of the
 * 256-byte command buffer (a header is copied for every message kept,
 * queued or handed to a handler; the whole struct is 296 bytes). */
static inline void mdg_header_copy(mdg_header *dst, const mdg_header *src)
{
    memcpy(dst, src, offsetof(mdg_header, command) + (size_t)src->command_len + 1);
}

/* Whether kind carries a sequence number. */
static inline bool mdg_kind_sequenced(int kind)
{
    return kind == MDG_K_CMD || kind == MDG_K_REPLY || kind == MDG_K_ERROR;
}

const char *mdg_kind_name(int kind);

/* Header <-> bytes. decode returns 0 or MDG_EPROTO with mdg_last_error(). */
size_t mdg_wire_encode_header(const mdg_header *h, uint8_t *buf, size_t cap);
int mdg_wire_decode_header(const void *buf, size_t len, mdg_header *h);
/* The message at *off of a head frame of one or more: h decoded (without
 * MDG_F_NEXT), its params at *params_off, *params_len bytes (not checked
 * here), and *off moved to the next message or the frame's end. A message
 * marked MDG_F_NEXT has its params walked (cbor_check.h's limits)
 * to find where the next begins; the last one's params are the rest of
 * the frame. MDG_EPROTO with the reason (for a header of protocol version
 * 1: the peer is an older libmessidge); the rest of the frame cannot be
 * read. */
int mdg_wire_read_head(const void *buf, size_t len, size_t *off, mdg_header *h, size_t *params_off,
                       size_t *params_len);
/* The same, with the walk that finds a marked message's end made with
 * walk (its mark callback sees the params' keys and values), so that
 * decoding them later need not walk again. walk is used only when the
 * message was marked MDG_F_NEXT (the last one's params are not walked). */
struct mdg_cbor_walk;
int mdg_wire_read_head_walk(const void *buf, size_t len, size_t *off, mdg_header *h, size_t *params_off,
                            size_t *params_len, struct mdg_cbor_walk *walk);
/* Write one message of a head frame at buf: h (MDG_F_NEXT set when next),
 * then params. Bytes written, or 0 when cap is too small. */
size_t mdg_wire_put_head(uint8_t *buf, size_t cap, const mdg_header *h, bool next, const void *params,
                         size_t params_len);
/* The protocol version a frame's header claims (its first field), or -1
 * when it does not start like a header: to answer an older peer in its
 * own framing. */
int mdg_wire_peek_version(const void *buf, size_t len);
/* A new head frame: h encoded, then params (an encoded CBOR map). 0 or
 * MDG_ENOMEM. */
int mdg_wire_encode_head(const mdg_header *h, const void *params, size_t params_len, zmq_msg_t *out);
/* Fill command/command_len from a C string; MDG_EINVAL if too long. */
int mdg_header_set_command(mdg_header *h, const char *command);

/* The frames of one received message. */
#define MDG_MAX_FRAMES 4
typedef struct mdg_frames {
    zmq_msg_t part[MDG_MAX_FRAMES];
    int n;          /* parts kept (at most MDG_MAX_FRAMES) */
    int dropped;    /* extra parts received and discarded */
} mdg_frames;

/* Receive all parts of one message (non-blocking: MDG_EAGAIN if none). */
int mdg_frames_recv(void *sock, mdg_frames *f);
void mdg_frames_close(mdg_frames *f);
/* Move all parts from src to dst (src is left empty). */
void mdg_frames_move(mdg_frames *dst, mdg_frames *src);

/* Send a message: optional routing id (copied), the head frame made of h
 * and params (an encoded map; borrowed: its bytes are copied into the
 * head), optional bulk (moved). Non-blocking; returns 0, MDG_EAGAIN
 * (nothing was sent, bulk is still the caller's), MDG_ECLOSED for an
 * unroutable peer (ROUTER_MANDATORY) or another error (bulk is closed). */
int mdg_wire_send(void *sock, const void *rid, size_t rid_len, const mdg_header *h,
                  zmq_msg_t *params, zmq_msg_t *bulk);
/* Send a head frame already made (several messages, no bulk): the same
 * contract, head in place of params. */
int mdg_wire_send_head(void *sock, const void *rid, size_t rid_len, zmq_msg_t *head);

#endif
