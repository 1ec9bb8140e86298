/* fleet.c - a broker in a fleet (docs/fleet.md): joining, the NATS
 * connection, the other members and one reliable numbered channel to each.
 *
 * Each broker listens on its own subject, mdg.fleet.NAME.HEX(its key), and
 * sends to a member on the member's. Every payload is sealed from the
 * sender's key to the receiver's (fleet_wire.c): a NATS client that is not
 * a listed member can neither read nor write one. On a pair, numbered
 * messages (calls, replies, directory changes) run on a channel (channel.h)
 * as between a broker and its clients: kept until acknowledged, sent again
 * when the other asks (a gap) or says nothing of them for RESEND_MS,
 * duplicates dropped; so a NATS restart or a cut loses nothing and
 * doubles nothing. Beats (unnumbered) carry acknowledgements and say a
 * broker lives; silence_ms without a word and its nodes are withdrawn.
 *
 * Each process is an incarnation (its start time in ms, and 16 random
 * bits): a member heard with a newer one restarted, and everything of its
 * old one is forgotten (nodes, calls both ways, the numbering). Numbered
 * messages name the receiver's incarnation, so none meant for an earlier
 * one is taken.
 *
 * libnats calls on_msg on its own threads: it only queues the payload and
 * wakes the loop (an eventfd watched by the broker's loop); everything
 * else runs on the loop thread. */
#include "fleet.h"

#include <nats/nats.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define RESEND_MS 1000     /* no acknowledgement for this long: send the unacknowledged again */
#define NACK_MS 100        /* at most one "send again" per member this often */
#define REFUSE_LOG_MS 1000 /* refusals of fleet messages are logged at most this often */
#define CLOSE_WAIT_MS 2000 /* for libnats to be done with our callbacks */
/* bytes waiting for the loop, at most: past it (a flood on our subject
 * while the loop is busy) a payload is dropped as if lost on the way, and
 * a member's is sent again; memory stays bounded */
#define INBOX_MAX_BYTES (128u << 20)
/* what a waiting message costs besides its payload (our entry, the kept
 * natsMsg and its subject), so that a flood of empty ones is bounded too */
#define INMSG_OVERHEAD 256u

/* What libnats's threads hand to the loop: the message itself, its payload
 * read where libnats put it (natsMsg_Destroy may be called on any thread). */
typedef struct inmsg {
    struct inmsg *next;
    natsMsg *msg;
    size_t len;
} inmsg;

struct inbox {
    pthread_mutex_t lock;
    pthread_cond_t done;
    inmsg *head, *tail;
    size_t bytes;    /* the messages' between head and tail, with INMSG_OVERHEAD each */
    uint64_t dropped; /* payloads dropped for INBOX_MAX_BYTES since the loop last looked */
    int efd;
    bool reconnected;
    bool sub_done, conn_closed; /* libnats will not call us again */
};
typedef struct inbox inbox;

/* ---------------------------------------------------------- the channels */

typedef struct fleet_kept {
    mdg_chan_msg m;
    uint8_t params[];
} fleet_kept;

static int publish(fleet *f, fleet_member *m, const void *head, size_t head_len, const void *bulk,
                   size_t bulk_len, bool has_bulk)
{
    uint8_t *msg;
    size_t len;
    if (!f->nc)
        return mdg_fail(MDG_ECLOSED, "not connected to NATS");
    int rc = fleet_wire_seal(m->tx, mdg_keys_public(f->b->keys), f->inc, m->inc, head, head_len,
                             has_bulk ? (bulk ? bulk : "") : NULL, bulk_len, &msg, &len);
    if (rc)
        return rc;
    natsStatus s = natsConnection_Publish(f->nc, m->subject, msg, (int)len);
    free(msg);
    if (s != NATS_OK) /* stays kept: it goes again once NATS is back */
        return mdg_fail(MDG_ECLOSED, "NATS: %s", natsStatus_GetText(s));
    return 0;
}

static int chan_send(void *owner, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    fleet_member *m = owner;
    zmq_msg_t head;
    int rc = mdg_wire_encode_head(h, zmq_msg_data(params), zmq_msg_size(params), &head);
    if (rc == 0) {
        rc = publish(m->f, m, zmq_msg_data(&head), zmq_msg_size(&head), bulk ? zmq_msg_data(bulk) : NULL,
                     bulk ? zmq_msg_size(bulk) : 0, bulk != NULL);
        zmq_msg_close(&head);
    }
    if (bulk)
        zmq_msg_close(bulk);
    return rc == MDG_EAGAIN ? MDG_ECLOSED : rc;
}

static int chan_send_frame(void *owner, zmq_msg_t *head)
{
    fleet_member *m = owner;
    int rc = publish(m->f, m, zmq_msg_data(head), zmq_msg_size(head), NULL, 0, false);
    zmq_msg_close(head);
    return rc == MDG_EAGAIN ? MDG_ECLOSED : rc;
}

static void chan_release(void *owner, mdg_chan_msg *msg)
{
    (void)owner;
    fleet_kept *k = (fleet_kept *)msg;
    zmq_msg_close(&k->m.params);
    if (k->m.has_bulk)
        zmq_msg_close(&k->m.bulk);
    free(k);
}

static const mdg_chan_ops pair_link = {.send = chan_send, .send_frame = chan_send_frame,
                                       .release = chan_release, .acks = true};

static int flush_all(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    fleet *f = arg;
    f->flush_due = false;
    for (size_t i = 0; i < f->n_members; i++)
        mdg_chan_flush(&f->members[i]->chan); /* a failure waits for a resend */
    return 0;
}

int fleet_send(fleet *f, fleet_member *m, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    if (f->leaving || !m->inc) {
        if (bulk)
            zmq_msg_close(bulk);
        return mdg_fail(MDG_ECLOSED, "that broker of the fleet is not reachable");
    }
    size_t plen = zmq_msg_size(params);
    /* one that NATS would refuse would be sent again for ever: refused here */
    int64_t max = f->nc ? natsConnection_GetMaxPayload(f->nc) : 0;
    size_t need = FLEET_WIRE_OVERHEAD + MDG_HEADER_BOUND(h->command_len) + plen + (bulk ? zmq_msg_size(bulk) : 0);
    if (max > 0 && need > (uint64_t)max) {
        if (bulk)
            zmq_msg_close(bulk);
        return mdg_fail(MDG_EINVAL, "%zu bytes: larger than the NATS server's max_payload (%lld)", need,
                        (long long)max);
    }
    if (max > FLEET_WIRE_OVERHEAD) /* a batch of several must fit too (the server's, after a reconnect) */
        mdg_chan_limit_frame(&m->chan, (size_t)max - FLEET_WIRE_OVERHEAD);
    fleet_kept *k = calloc(1, sizeof *k + plen);
    if (!k) {
        if (bulk)
            zmq_msg_close(bulk);
        return mdg_fail(MDG_ENOMEM, "out of memory queueing a fleet message");
    }
    k->m.h = *h;
    memcpy(k->params, zmq_msg_data(params), plen);
    zmq_msg_init_data(&k->m.params, k->params, plen, NULL, NULL);
    if (bulk) {
        k->m.has_bulk = true;
        zmq_msg_init(&k->m.bulk);
        zmq_msg_move(&k->m.bulk, bulk);
        zmq_msg_close(bulk);
    }
    if (!m->chan.len)
        m->progress_at = mdg_now_ms();
    mdg_chan_append(&m->chan, &k->m);
    /* out at the next turn of the loop, with whatever else this one gives
     * the member: one NATS message for many */
    if (!f->flush_due && mdg_loop_timer(f->b->loop, 0, false, flush_all, f) > 0)
        f->flush_due = true;
    else if (!f->flush_due)
        mdg_chan_flush(&m->chan);
    return 0;
}

int fleet_send_params(fleet *f, fleet_member *m, int kind, uint64_t corr, uint32_t flags, const char *command,
                      mdg_params *params)
{
    mdg_params *p = params ? params : mdg_params_new();
    mdg_header h = {.kind = (uint8_t)kind, .corr = corr, .flags = flags};
    zmq_msg_t pm;
    int rc = !p ? MDG_ENOMEM : mdg_header_set_command(&h, command);
    if (rc == 0 && (rc = mdg_params_encode(p, &pm)) == 0) {
        rc = fleet_send(f, m, &h, &pm, NULL);
        zmq_msg_close(&pm);
    }
    mdg_params_destroy(&p);
    return rc;
}

void fleet_send_error(fleet *f, fleet_member *m, uint64_t corr, const char *command, const char *text)
{
    mdg_params *e = mdg_params_new();
    if (e && (mdg_params_set_str(e, "error", text) || mdg_params_set_str(e, "command", command ? command : "")))
        mdg_params_destroy(&e);
    if (e)
        fleet_send_params(f, m, MDG_K_ERROR, corr, 0, "", e);
}

void fleet_each_member(fleet *f, void (*fn)(fleet_member *m, void *arg), void *arg)
{
    for (size_t i = 0; i < f->n_members; i++)
        if (f->members[i]->up)
            fn(f->members[i], arg);
}

_Static_assert(FLEET_REFUSALS <= 8, "broker_metrics.fleet_refused has room for 8 reasons");

void fleet_refuse(fleet *f, int why, const char *fmt, ...)
{
    unsigned held = 0;
    broker_count(&f->b->metrics.fleet_refused[why], 1);
    if (!mdg_ratelog_due(&f->refuse_log[why], REFUSE_LOG_MS, &held))
        return;
    char text[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (held)
        mdg_log(MDG_LOG_WARN, "fleet: %s (and %u more refused since the last line)", text, held);
    else
        mdg_log(MDG_LOG_WARN, "fleet: %s", text);
}

/* ------------------------------------------------------------------ beats */

/* An unnumbered word to m: alive, what we received (ack), and with resend
 * that something is missing; bye: we leave. */
static void send_beat(fleet *f, fleet_member *m, const char *command, bool resend)
{
    mdg_params *p = mdg_params_new();
    mdg_header h = {.kind = MDG_K_HELLO};
    zmq_msg_t pm;
    if (p && (!resend || mdg_params_set_bool(p, "resend", true) == 0) && mdg_header_set_command(&h, command) == 0 &&
        mdg_params_encode(p, &pm) == 0) {
        mdg_chan_stamp(&m->chan, &h);
        zmq_msg_t head;
        if (mdg_wire_encode_head(&h, zmq_msg_data(&pm), zmq_msg_size(&pm), &head) == 0) {
            if (publish(f, m, zmq_msg_data(&head), zmq_msg_size(&head), NULL, 0, false) == 0)
                mdg_chan_ack_told(&m->chan, h.ack);
            zmq_msg_close(&head);
        }
        zmq_msg_close(&pm);
    }
    mdg_params_destroy(&p);
}

/* m is gone for now (silent, left) or for good (restarted): its nodes are
 * withdrawn and the calls both ways end. */
static void forget(fleet *f, fleet_member *m, const char *why)
{
    char who[MDG_KEY_B64_LEN + 1];
    mdg_log(MDG_LOG_WARN, "fleet: broker %s %s: its nodes withdrawn, calls with it ended", pk_short(m->pk, who), why);
    m->up = false;
    fleet_dir_forget(f, m);
    fleet_route_forget(f, m);
}

static int on_beat_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    fleet *f = arg;
    int64_t now = mdg_now_ms();
    for (size_t i = 0; i < f->n_members; i++) {
        fleet_member *m = f->members[i];
        if (m->up && now - m->last_rx > f->silence_ms)
            forget(f, m, "is silent");
        /* (while NATS is away, all goes again when it is back: on_inbox) */
        if (m->chan.len && now - m->progress_at > RESEND_MS &&
            natsConnection_Status(f->nc) == NATS_CONN_STATUS_CONNECTED) {
            /* nothing acknowledged for a while: lost on the way (a NATS
             * restart), so all of it again; duplicates are dropped there */
            mdg_chan_rewind(&m->chan);
            mdg_chan_flush(&m->chan);
            m->progress_at = now;
        }
        send_beat(f, m, FLEET_BEAT, false);
    }
    return 0;
}

static int on_ack_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    fleet *f = arg;
    for (size_t i = 0; i < f->n_members; i++)
        if (f->members[i]->up && mdg_chan_ack_owed(&f->members[i]->chan))
            send_beat(f, f->members[i], FLEET_BEAT, false);
    return 0;
}

/* ------------------------------------------------------------- receiving */

static fleet_member *member_of(fleet *f, const uint8_t *pk)
{
    for (size_t i = 0; i < f->n_members; i++)
        if (memcmp(f->members[i]->pk, pk, MDG_KEY_BYTES) == 0)
            return f->members[i];
    return NULL;
}

/* m is heard from incarnation inc: a newer one than we knew is a new
 * start with it (a restart: its old one forgotten). */
static bool hear(fleet *f, fleet_member *m, uint64_t inc)
{
    char who[MDG_KEY_B64_LEN + 1];
    int64_t now = mdg_now_ms();
    if (inc < m->inc)
        return false; /* an earlier life's, late or replayed */
    if (inc > m->inc) {
        if (m->inc)
            forget(f, m, "restarted");
        mdg_chan_reset(&m->chan);
        m->inc = inc;
        m->up = true;
        m->last_rx = m->progress_at = now;
        mdg_log(MDG_LOG_INFO, "fleet: broker %s joined", pk_short(m->pk, who));
        send_beat(f, m, FLEET_BEAT, false);
        fleet_dir_send_full(f, m);
        return true;
    }
    m->last_rx = now;
    if (!m->up) { /* back from silence: the channel went on, the lists did not */
        m->up = true;
        mdg_log(MDG_LOG_INFO, "fleet: broker %s is back", pk_short(m->pk, who));
        fleet_dir_send_full(f, m);
        fleet_send_params(f, m, MDG_K_CMD, 0, 0, FLEET_DIR_ASK, NULL);
    }
    return true;
}

static void take_numbered(fleet *f, fleet_member *m, mdg_inbound *in)
{
    switch (mdg_chan_check(&m->chan, &in->h)) {
    case MDG_CHAN_NEXT:
        mdg_chan_received(&m->chan, in->h.seq);
        if (in->h.kind == MDG_K_CMD && strcmp(in->h.command, FLEET_DIR) == 0)
            fleet_dir_receive(f, m, in);
        else if (in->h.kind == MDG_K_CMD && strcmp(in->h.command, FLEET_DIR_ASK) == 0)
            fleet_dir_send_full(f, m);
        else
            fleet_route_receive(f, m, in);
        break;
    case MDG_CHAN_DUPLICATE: /* sent again: it missed our acknowledgement */
        m->chan.ack_sent = 0;
        break;
    case MDG_CHAN_GAP: /* something before it was lost: ask for it again */
        if (mdg_now_ms() - m->nack_at >= NACK_MS) {
            m->nack_at = mdg_now_ms();
            send_beat(f, m, FLEET_BEAT, true);
        }
        break;
    default:
        break;
    }
}

static void take_payload(fleet *f, const uint8_t *data, size_t len)
{
    const uint8_t *pk = fleet_wire_sender(data, len);
    fleet_member *m = pk ? member_of(f, pk) : NULL;
    char who[MDG_KEY_B64_LEN + 1];
    if (!pk) {
        fleet_refuse(f, FLEET_REFUSED_GARBAGE, "a %zu-byte message on our subject that is not a fleet message: refused", len);
        return;
    }
    if (!m) {
        fleet_refuse(f, FLEET_REFUSED_STRANGER, "a message from key %s, not a member of the fleet: refused", pk_short(pk, who));
        return;
    }
    fleet_envelope env;
    if (fleet_wire_open(m->rx, data, len, &env) != 0) {
        fleet_refuse(f, FLEET_REFUSED_FORGED, "from broker %s: %s: refused", pk_short(m->pk, who), mdg_last_error());
        return;
    }
    if (hear(f, m, env.src_inc)) {
        bool current = env.dst_inc == f->inc; /* its numbering is for this life of ours */
        mdg_inbound in;
        mdg_inbound_cursor at = {0};
        int rc;
        while ((rc = mdg_inbound_next(&in, &env.frames, 1, &at)) == 0) {
            if (current && mdg_chan_acked(&m->chan, in.h.ack))
                m->progress_at = mdg_now_ms();
            if (current && mdg_kind_sequenced(in.h.kind)) {
                take_numbered(f, m, &in);
            } else if (in.h.kind == MDG_K_HELLO && strcmp(in.h.command, FLEET_BYE) == 0) {
                forget(f, m, "left the fleet");
            } else if (current && in.h.kind == MDG_K_HELLO && strcmp(in.h.command, FLEET_BEAT) == 0) {
                mdg_params *p = NULL;
                bool resend = false;
                if (mdg_inbound_take_params(&in, &p) == 0 && mdg_params_get_bool(p, "resend", &resend) == 0 &&
                    resend) {
                    mdg_chan_resume(&m->chan, in.h.ack);
                    mdg_chan_flush(&m->chan);
                    m->progress_at = mdg_now_ms();
                }
                mdg_params_destroy(&p);
            }
            mdg_inbound_close(&in);
        }
        if (rc < 0) {
            fleet_refuse(f, FLEET_REFUSED_CONTENT, "from broker %s: %s: refused", pk_short(m->pk, who), mdg_last_error());
            mdg_inbound_close(&in);
        }
        if (mdg_chan_ack_due(&m->chan))
            send_beat(f, m, FLEET_BEAT, false);
    }
    mdg_frames_close(&env.frames);
}

static int on_inbox(mdg_loop *loop, void *arg, short revents)
{
    (void)loop;
    (void)revents;
    fleet *f = arg;
    uint64_t n;
    if (read(f->in->efd, &n, sizeof n) < 0) {
        /* nothing to read: woken for what an earlier turn took */
    }
    pthread_mutex_lock(&f->in->lock);
    inmsg *list = f->in->head;
    bool reconnected = f->in->reconnected;
    uint64_t dropped = f->in->dropped;
    f->in->head = f->in->tail = NULL;
    f->in->bytes = 0;
    f->in->dropped = 0;
    f->in->reconnected = false;
    pthread_mutex_unlock(&f->in->lock);
    unsigned held;
    f->dropped += dropped;
    if (f->dropped && mdg_ratelog_due(&f->drop_log, REFUSE_LOG_MS, &held)) {
        mdg_log(MDG_LOG_WARN, "fleet: %llu message(s) dropped since the last line: more than %u MiB waited for the loop",
                (unsigned long long)f->dropped, INBOX_MAX_BYTES >> 20);
        f->dropped = 0;
    }
    if (reconnected) {
        mdg_log(MDG_LOG_INFO, "fleet: connected to NATS again: unacknowledged messages go again");
        for (size_t i = 0; i < f->n_members; i++) {
            mdg_chan_rewind(&f->members[i]->chan);
            mdg_chan_flush(&f->members[i]->chan);
            send_beat(f, f->members[i], FLEET_BEAT, false);
        }
    }
    while (list) {
        inmsg *next = list->next;
        take_payload(f, (const uint8_t *)natsMsg_GetData(list->msg), list->len);
        natsMsg_Destroy(list->msg);
        free(list);
        list = next;
    }
    return 0;
}

/* ------------------------------------------------- libnats's threads only */

static void wake(inbox *in)
{
    uint64_t one = 1;
    if (write(in->efd, &one, sizeof one) < 0) {
        /* the counter is full: the loop is awake anyway */
    }
}

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    inbox *in = closure;
    int len = natsMsg_GetDataLength(msg);
    inmsg *q = len >= 0 ? malloc(sizeof *q) : NULL;
    bool kept = false;
    if (q) {
        q->next = NULL;
        q->msg = msg;
        q->len = (size_t)len;
        pthread_mutex_lock(&in->lock);
        size_t cost = q->len + INMSG_OVERHEAD;
        bool was_empty = !in->head, room = in->bytes + cost <= INBOX_MAX_BYTES;
        if (!room) {
            in->dropped++;
        } else {
            if (in->tail)
                in->tail->next = q;
            else
                in->head = q;
            in->tail = q;
            in->bytes += cost;
            kept = true;
        }
        pthread_mutex_unlock(&in->lock);
        if (!room)
            free(q);
        if (was_empty)
            wake(in);
    } /* out of memory: as lost on the way; the sender sends it again */
    if (!kept) /* else the loop destroys it once read (on_inbox) */
        natsMsg_Destroy(msg);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    inbox *in = closure;
    pthread_mutex_lock(&in->lock);
    in->reconnected = true;
    pthread_mutex_unlock(&in->lock);
    wake(in);
}

static void on_sub_done(void *closure)
{
    inbox *in = closure;
    pthread_mutex_lock(&in->lock);
    in->sub_done = true;
    pthread_cond_broadcast(&in->done);
    pthread_mutex_unlock(&in->lock);
}

static void on_closed(natsConnection *nc, void *closure)
{
    (void)nc;
    inbox *in = closure;
    pthread_mutex_lock(&in->lock);
    in->conn_closed = true;
    pthread_cond_broadcast(&in->done);
    pthread_mutex_unlock(&in->lock);
}

/* ------------------------------------------------------------- lifecycle */

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > FLEET_NAME_MAX)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '-' ||
              *s == '_'))
            return false;
    return true;
}

static void subject_of(const fleet *f, const uint8_t pk[MDG_KEY_BYTES], char out[FLEET_SUBJECT_MAX])
{
    char hex[2 * MDG_KEY_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, pk, MDG_KEY_BYTES);
    snprintf(out, FLEET_SUBJECT_MAX, "mdg.fleet.%s.%s", f->name, hex);
}

int fleet_new(fleet **out, mdg_broker *b, const mdg_fleet_options *o)
{
    const char *name = o->name ? o->name : "messidge";
    if (!o->url || !*o->url)
        return mdg_fail(MDG_EINVAL, "a fleet needs the URL of a NATS server");
    if (!valid_name(name))
        return mdg_fail(MDG_EINVAL, "bad fleet name \"%s\": 1 to %d letters, digits, '-' or '_'", name,
                        FLEET_NAME_MAX);
    fleet *f = calloc(1, sizeof *f);
    inbox *in = calloc(1, sizeof *in);
    if (!f || !in || !(f->url = strdup(o->url))) {
        free(in);
        if (f)
            free(f->url);
        free(f);
        return mdg_fail(MDG_ENOMEM, "out of memory joining a fleet");
    }
    f->b = b;
    f->in = in;
    in->efd = -1;
    pthread_mutex_init(&in->lock, NULL);
    pthread_cond_init(&in->done, NULL);
    snprintf(f->name, sizeof f->name, "%s", name);
    f->beat_ms = o->beat_ms > 0 ? o->beat_ms : 500;
    f->silence_ms = o->silence_ms > 0 ? o->silence_ms : 10000;
    /* newer incarnations compare greater: the start time in ms, and random
     * bits for two starts within one */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint16_t r;
    randombytes_buf(&r, sizeof r);
    f->inc = ((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000) << 16 | r;
    subject_of(f, mdg_keys_public(b->keys), f->subject);
    if (fleet_dir_init(f) != 0 || !(f->calls_from = mdg_map_new())) {
        fleet_destroy(&f);
        return mdg_fail(MDG_ENOMEM, "out of memory joining a fleet");
    }
    *out = f;
    return 0;
}

/* The box key for messages from `from` to `to`: the pair's crypto_box key
 * hashed (BLAKE2b, keyed) with both public keys in that order. The pair's
 * key is the same both ways; without this, a NATS client could send a
 * broker's message back to it under the other's name and have it opened. */
static void direction_key(uint8_t out[crypto_box_BEFORENMBYTES], const uint8_t *shared, const uint8_t *from,
                          const uint8_t *to)
{
    uint8_t both[2 * MDG_KEY_BYTES];
    memcpy(both, from, MDG_KEY_BYTES);
    memcpy(both + MDG_KEY_BYTES, to, MDG_KEY_BYTES);
    crypto_generichash(out, crypto_box_BEFORENMBYTES, both, sizeof both, shared, crypto_box_BEFORENMBYTES);
}

int fleet_add_member(fleet *f, const uint8_t pk[MDG_KEY_BYTES])
{
    if (memcmp(pk, mdg_keys_public(f->b->keys), MDG_KEY_BYTES) == 0 || member_of(f, pk))
        return 0; /* itself, or listed already */
    fleet_member *m = calloc(1, sizeof *m);
    fleet_member **grown = realloc(f->members, (f->n_members + 1) * sizeof *grown);
    if (!m || !grown) {
        free(m);
        if (grown)
            f->members = grown;
        return mdg_fail(MDG_ENOMEM, "out of memory adding a fleet member");
    }
    f->members = grown;
    memcpy(m->pk, pk, MDG_KEY_BYTES);
    uint8_t shared[crypto_box_BEFORENMBYTES];
    if (crypto_box_beforenm(shared, pk, mdg_keys_secret(f->b->keys)) != 0) {
        free(m);
        return mdg_fail(MDG_EINVAL, "that key cannot be a fleet member's (a weak public key)");
    }
    direction_key(m->tx, shared, mdg_keys_public(f->b->keys), pk);
    direction_key(m->rx, shared, pk, mdg_keys_public(f->b->keys));
    sodium_memzero(shared, sizeof shared);
    subject_of(f, pk, m->subject);
    m->f = f;
    mdg_chan_init(&m->chan, &pair_link, m);
    f->members[f->n_members++] = m;
    return 0;
}

static int nats_fail(const char *what, natsStatus s)
{
    return mdg_fail(MDG_ESYS, "fleet: %s: %s", what, natsStatus_GetText(s));
}

#define FLEET_URLS_MAX 32 /* servers in one --fleet URL list, at most */

/* The server URL, or the list of them separated by commas (a cluster):
 * libnats's natsOptions_SetURL takes one URL only (with a list it finds
 * no server), so a list goes in through natsOptions_SetServers. */
static natsStatus set_servers(natsOptions *o, const char *url)
{
    char *copy = strdup(url), *save = NULL;
    const char *servers[FLEET_URLS_MAX];
    int n = 0;
    natsStatus s = NATS_INVALID_ARG;
    if (!copy)
        return NATS_NO_MEMORY;
    for (char *t = strtok_r(copy, ", ", &save); t && n < FLEET_URLS_MAX; t = strtok_r(NULL, ", ", &save))
        servers[n++] = t;
    if (n > 0) /* libnats copies them */
        s = n == 1 ? natsOptions_SetURL(o, servers[0]) : natsOptions_SetServers(o, servers, n);
    free(copy);
    return s;
}

int fleet_start(fleet *f)
{
    natsOptions *o = NULL;
    natsStatus s;
    int rc = 0;
    if ((f->in->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        return mdg_fail(MDG_ESYS, "fleet: cannot make an eventfd");
    if ((rc = mdg_loop_watch(f->b->loop, NULL, f->in->efd, ZMQ_POLLIN, on_inbox, f)) != 0)
        return rc;
    f->watching = true;
    if (mdg_loop_timer(f->b->loop, f->beat_ms, true, on_beat_timer, f) < 0 ||
        mdg_loop_timer(f->b->loop, MDG_CHAN_ACK_DELAY_MS, true, on_ack_timer, f) < 0)
        return mdg_fail(MDG_ENOMEM, "no room for the fleet's timers");
    /* a NATS server that is not there yet is tried again in the
     * background, for ever: the broker serves its own clients meanwhile */
    if ((s = natsOptions_Create(&o)) != NATS_OK || (s = set_servers(o, f->url)) != NATS_OK ||
        (s = natsOptions_SetName(o, "messidge-broker")) != NATS_OK ||
        /* each publish is already a batch (a loop turn's messages for one
         * broker): out at once, not after libnats's flusher wakes up,
         * which cost about a millisecond each way (fleet node RTT p50 2.0
         * ms, 0.6 ms with this, in bench/) */
        (s = natsOptions_SetSendAsap(o, true)) != NATS_OK ||
        (s = natsOptions_SetMaxReconnect(o, -1)) != NATS_OK ||
        (s = natsOptions_SetReconnectWait(o, 250)) != NATS_OK ||
        (s = natsOptions_SetReconnectedCB(o, on_reconnected, f->in)) != NATS_OK ||
        (s = natsOptions_SetClosedCB(o, on_closed, f->in)) != NATS_OK ||
        /* a first connection made in the background: as a reconnection */
        (s = natsOptions_SetRetryOnFailedConnect(o, true, on_reconnected, f->in)) != NATS_OK) {
        natsOptions_Destroy(o);
        return nats_fail("bad NATS options", s);
    }
    s = natsConnection_Connect(&f->nc, o);
    natsOptions_Destroy(o);
    if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED)
        return nats_fail("cannot connect to NATS", s);
    if (s == NATS_NOT_YET_CONNECTED)
        mdg_log(MDG_LOG_WARN, "fleet: NATS at %s is not there yet: trying again in the background", f->url);
    if ((s = natsConnection_Subscribe(&f->sub, f->nc, f->subject, on_msg, f->in)) != NATS_OK ||
        (s = natsSubscription_SetPendingLimits(f->sub, -1, -1)) != NATS_OK ||
        (s = natsSubscription_SetOnCompleteCB(f->sub, on_sub_done, f->in)) != NATS_OK)
        return nats_fail("cannot subscribe", s);
    mdg_log(MDG_LOG_INFO, "fleet \"%s\": listening on %s, %zu other member(s)", f->name, f->subject,
            f->n_members);
    for (size_t i = 0; i < f->n_members; i++)
        send_beat(f, f->members[i], FLEET_BEAT, false);
    return 0;
}

void fleet_leave(fleet *f)
{
    if (!f || f->leaving)
        return;
    f->leaving = true;
    if (!f->nc)
        return;
    for (size_t i = 0; i < f->n_members; i++)
        if (f->members[i]->inc)
            send_beat(f, f->members[i], FLEET_BYE, false);
    natsConnection_FlushTimeout(f->nc, 500);
}

void fleet_destroy(fleet **fp)
{
    fleet *f = fp ? *fp : NULL;
    if (!f)
        return;
    inbox *in = f->in;
    bool wait_sub = f->sub != NULL, wait_conn = f->nc != NULL;
    if (f->sub)
        natsSubscription_Unsubscribe(f->sub);
    if (f->nc)
        natsConnection_Close(f->nc);
    /* libnats may be inside on_msg on its thread: the inbox lives until
     * it says it will not call again */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += CLOSE_WAIT_MS / 1000;
    bool done = true;
    pthread_mutex_lock(&in->lock);
    while ((wait_sub && !in->sub_done) || (wait_conn && !in->conn_closed))
        if (pthread_cond_timedwait(&in->done, &in->lock, &until) != 0) {
            done = false;
            break;
        }
    pthread_mutex_unlock(&in->lock);
    natsSubscription_Destroy(f->sub);
    natsConnection_Destroy(f->nc);
    if (f->watching)
        mdg_loop_unwatch(f->b->loop, NULL, in->efd);
    if (done) {
        while (in->head) {
            inmsg *next = in->head->next;
            natsMsg_Destroy(in->head->msg);
            free(in->head);
            in->head = next;
        }
        if (in->efd >= 0)
            close(in->efd);
        pthread_mutex_destroy(&in->lock);
        pthread_cond_destroy(&in->done);
        free(in);
    } else {
        mdg_log(MDG_LOG_WARN, "fleet: libnats did not say it was done with us: its inbox is left allocated");
    }
    for (size_t i = 0; i < f->n_members; i++) {
        mdg_chan_reset(&f->members[i]->chan);
        free(f->members[i]);
    }
    free(f->members);
    fleet_dir_free(f);
    mdg_map_destroy(&f->calls_from); /* the fwds are the broker's */
    free(f->url);
    free(f);
    *fp = NULL;
}

/* ------------------------------------------------------------ public API */

int mdg_broker_join_fleet(mdg_broker *b, const mdg_fleet_options *opts)
{
    int rc = broker_before_start(b, "join a fleet");
    if (rc)
        return rc;
    if (!opts)
        return mdg_fail(MDG_EINVAL, "no fleet options");
    if (b->fleet)
        return mdg_fail(MDG_ESTATE, "the broker has joined a fleet already");
    return fleet_new(&b->fleet, b, opts);
}

int mdg_broker_fleet_member(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES])
{
    int rc = broker_before_start(b, "add a fleet member");
    if (rc)
        return rc;
    if (!b->fleet)
        return mdg_fail(MDG_ESTATE, "join a fleet first (mdg_broker_join_fleet)");
    if (!pk)
        return mdg_fail(MDG_EINVAL, "no key");
    return fleet_add_member(b->fleet, pk);
}

typedef struct local_walk {
    mdg_node_fn fn;
    void *arg;
} local_walk;

static void walk_local(void *value, void *arg)
{
    local_walk *w = arg;
    w->fn(((peer *)value)->pk, true, w->arg);
}

void fleet_gauges(fleet *f, uint64_t *up, uint64_t *down, uint64_t *nodes, bool *nats)
{
    *up = *down = 0;
    for (size_t i = 0; i < f->n_members; i++)
        (*(f->members[i]->up ? up : down))++;
    *nodes = fleet_dir_each(f, NULL, NULL);
    *nats = f->nc && natsConnection_Status(f->nc) == NATS_CONN_STATUS_CONNECTED;
}

size_t mdg_broker_each_node(const mdg_broker *b, mdg_node_fn fn, void *arg)
{
    if (!b)
        return 0;
    local_walk w = {fn, arg};
    if (fn)
        mdg_map_each(b->nodes, walk_local, &w);
    return mdg_map_size(b->nodes) + (b->fleet ? fleet_dir_each(b->fleet, fn, arg) : 0);
}
