/* fleet.h - what the broker's files share about a fleet (docs/fleet.md);
 * not installed. A broker in a fleet talks to each other member over NATS
 * on one reliable numbered channel per pair (channel.h), every message
 * sealed from its key to theirs (fleet_wire.c). Everything here runs on
 * the broker's loop thread but fleet.c's NATS callbacks, which only queue
 * what came for the loop.
 *
 *   fleet.c            joining, NATS, members, beats, the pair channels
 *   fleet_wire.c       one NATS payload: sealed, opened, into frames
 *   fleet_directory.c  which node is at which broker; offers and lists
 *   fleet_route.c      calls to other brokers' nodes, and their answers */
#ifndef MDG_FLEET_H
#define MDG_FLEET_H

#include "broker_internal.h"

#include <sodium.h>

#define FLEET_NAME_MAX 64
#define FLEET_SUBJECT_MAX (16 + FLEET_NAME_MAX + 2 * MDG_KEY_BYTES)
/* Commands of the brokers' own on a pair channel; users cannot send
 * commands named mdg.* to nodes, so none is a forwarded call. */
#define FLEET_DIR "mdg.dir"       /* nodes added / removed, or the full list */
#define FLEET_DIR_ASK "mdg.dirq"  /* send me your full list */
#define FLEET_END "mdg.end"       /* the origin ended call corr (its caller left) */
#define FLEET_FLOW "mdg.flow"     /* pause or resume call corr ({"state": ...}): its caller reads or not */
#define FLEET_BEAT "mdg.beat"     /* unnumbered: alive, and what I received */
#define FLEET_BYE "mdg.bye"       /* unnumbered: this broker is leaving */

/* Another broker of the fleet, as this one knows it. */
typedef struct fleet_member {
    uint8_t pk[MDG_KEY_BYTES];
    /* the pair's crypto_box key (our secret, its public key) bound to one
     * direction each: both ends compute the same box key, so a message of
     * ours sent back to us as its own must not open (fleet.c, add_member) */
    uint8_t tx[crypto_box_BEFORENMBYTES], rx[crypto_box_BEFORENMBYTES];
    char subject[FLEET_SUBJECT_MAX];         /* where it listens */
    uint64_t inc;        /* its incarnation as last heard; 0: never heard */
    bool up;             /* heard within silence_ms */
    int64_t last_rx;     /* when it last said anything */
    int64_t progress_at; /* when it last acknowledged something (or we had nothing out) */
    int64_t nack_at;     /* when we last asked it to send again */
    mdg_channel chan;    /* numbered messages both ways (ours kept until acked) */
    struct fleet *f;
} fleet_member;

/* Why a fleet message was refused: each reason's log lines are
 * rate-limited apart, so a flood of one hides no other. */
enum fleet_refusal {
    FLEET_REFUSED_GARBAGE, /* not a fleet message at all */
    FLEET_REFUSED_STRANGER, /* from a key that is not a member */
    FLEET_REFUSED_FORGED,  /* does not open with its sender's key */
    FLEET_REFUSED_CONTENT, /* from a member, but not what it should say */
    FLEET_REFUSALS
};

/* A broker's part in a fleet. */
typedef struct fleet {
    mdg_broker *b;
    char *url;
    char name[FLEET_NAME_MAX + 1];
    int beat_ms, silence_ms;
    uint64_t inc; /* this process's incarnation */
    char subject[FLEET_SUBJECT_MAX]; /* where we listen */
    fleet_member **members;
    size_t n_members;
    mdg_map *dir; /* node pk -> dir_entry (fleet_directory.c): the others' nodes */
    mdg_map *calls_from; /* (member, its forward id) -> fwd (fleet_route.c): its calls at our nodes */
    struct __natsConnection *nc; /* libnats's natsConnection */
    struct __natsSubscription *sub; /* and natsSubscription */
    struct inbox *in; /* what libnats's threads hand to the loop */
    bool watching, flush_due, leaving;
    mdg_ratelog refuse_log[FLEET_REFUSALS];
    mdg_ratelog drop_log; /* payloads dropped for want of room (fleet.c) */
    uint64_t dropped;     /* and how many since its last line */
} fleet;

/* fleet.c */
int fleet_new(fleet **out, mdg_broker *b, const mdg_fleet_options *o);
int fleet_add_member(fleet *f, const uint8_t pk[MDG_KEY_BYTES]);
/* Connect to NATS and listen (at bind time; a NATS server not there yet
 * is retried in the background). */
int fleet_start(fleet *f);
/* The loop has ended: tell the others we leave. */
void fleet_leave(fleet *f);
void fleet_destroy(fleet **f);
/* A numbered message to a member: params borrowed, bulk taken. 0 or an
 * error (ENOMEM; ECLOSED when the member is not up). */
int fleet_send(fleet *f, fleet_member *m, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk);
/* The same with params to encode (taken). */
int fleet_send_params(fleet *f, fleet_member *m, int kind, uint64_t corr, uint32_t flags,
                      const char *command, mdg_params *params);
/* An error (kind MDG_K_ERROR) for call corr, as broker_send_error's. */
void fleet_send_error(fleet *f, fleet_member *m, uint64_t corr, const char *command, const char *text);
/* Each member that is up. */
void fleet_each_member(fleet *f, void (*fn)(fleet_member *m, void *arg), void *arg);
/* For /metrics (loop thread): members up and down, the other brokers'
 * nodes listed, whether NATS is connected. */
void fleet_gauges(fleet *f, uint64_t *up, uint64_t *down, uint64_t *nodes, bool *nats);
/* A refusal of something a fleet peer sent: counted, logged rate-limited. */
void fleet_refuse(fleet *f, int why, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* fleet_wire.c: one NATS payload, "MF" 1, sender pk, nonce, box of:
 * sender's incarnation, receiver's as the sender knows it, a head frame
 * (wire.h) and an optional bulk. */
typedef struct fleet_envelope {
    uint64_t src_inc, dst_inc;
    mdg_frames frames; /* part[0] empty, part[1] the head frame, part[2] the bulk if any */
} fleet_envelope;
#define FLEET_WIRE_VERSION 1
#define FLEET_WIRE_OVERHEAD (3 + MDG_KEY_BYTES + crypto_box_NONCEBYTES + crypto_box_MACBYTES + 8 + 8 + 1 + 4)
/* The sender's key of a payload (not yet authenticated), or NULL. */
const uint8_t *fleet_wire_sender(const void *data, size_t len);
/* Seal head (and bulk, may be NULL) for the member whose shared key is
 * given: *out is the caller's to free, 0 or MDG_ENOMEM. */
int fleet_wire_seal(const uint8_t *shared, const uint8_t sender_pk[MDG_KEY_BYTES], uint64_t src_inc,
                    uint64_t dst_inc, const void *head, size_t head_len, const void *bulk, size_t bulk_len,
                    uint8_t **out, size_t *out_len);
/* Open a payload with the shared key of its sender: 0 with env filled (the
 * caller closes env->frames), or MDG_EPROTO with the reason. */
int fleet_wire_open(const uint8_t *shared, const void *data, size_t len, fleet_envelope *env);

/* fleet_directory.c */
int fleet_dir_init(fleet *f);
void fleet_dir_free(fleet *f);
/* The member a node is connected to, or NULL (not a fleet node). */
fleet_member *fleet_node_home(const fleet *f, const uint8_t pk[MDG_KEY_BYTES]);
/* Who of this broker's sessions has lately given that node messages (the
 * share rule of broker_route.c), or NULL (not a fleet node). */
node_sharing *fleet_node_sharing(const fleet *f, const uint8_t pk[MDG_KEY_BYTES]);
/* A local node joined or left: the others are told. */
void fleet_node_joined(fleet *f, const uint8_t pk[MDG_KEY_BYTES]);
void fleet_node_left(fleet *f, const uint8_t pk[MDG_KEY_BYTES]);
/* Send our full list to a member (it is new to us, or asked). */
void fleet_dir_send_full(fleet *f, fleet_member *m);
/* A member is gone (silent, left, restarted): its nodes withdrawn. */
void fleet_dir_forget(fleet *f, fleet_member *m);
/* A member's FLEET_DIR message. */
void fleet_dir_receive(fleet *f, fleet_member *m, mdg_inbound *in);
size_t fleet_dir_each(const fleet *f, mdg_node_fn fn, void *arg);

/* fleet_route.c */
/* A numbered message from a member that is not the directory's. */
void fleet_route_receive(fleet *f, fleet_member *m, mdg_inbound *in);
/* A member is gone: calls to its nodes fail to their callers, calls from
 * it are ended at our nodes. */
void fleet_route_forget(fleet *f, fleet_member *m);
/* Call fw came from member m (fw->from set): found by m's forward id
 * (fw->user_corr) when m ends, pauses or resumes it. 0 or MDG_ENOMEM. */
int fleet_route_track(fleet *f, fleet_member *m, fwd *fw);
/* Call fw from another broker is over (broker_fwd_free). */
void fleet_route_untrack(fleet *f, fwd *fw);

#endif
