/* channel.c - the reliable numbered channel (see channel.h). */
#include "channel.h"

#include <stdlib.h>

void mdg_chan_init(mdg_channel *ch, const mdg_chan_ops *ops, void *owner)
{
    *ch = (mdg_channel){.ops = ops, .owner = owner, .batch_bytes = MDG_CHAN_BATCH_BYTES, .batch_max = MDG_PEER_BATCH};
}

size_t mdg_chan_said_batch(const mdg_params *said)
{
    int64_t n = 0;
    if (!said || mdg_params_get_int(said, "max_batch", &n) != 0 || n < 1)
        return MDG_PEER_BATCH;
    return n < MDG_MAX_BATCH ? (size_t)n : MDG_MAX_BATCH;
}

void mdg_chan_limit_frame(mdg_channel *ch, size_t max_bytes)
{
    ch->batch_bytes = max_bytes < MDG_CHAN_BATCH_BYTES ? max_bytes : MDG_CHAN_BATCH_BYTES;
}

static void keep(mdg_channel *ch, mdg_chan_msg *m)
{
    m->next = NULL;
    m->h.seq = ++ch->tx_seq;
    if (ch->tail)
        ch->tail->next = m;
    else
        ch->head = m;
    ch->tail = m;
    ch->len++;
}

void mdg_chan_append(mdg_channel *ch, mdg_chan_msg *m)
{
    keep(ch, m);
    if (!ch->unsent)
        ch->unsent = m;
}

/* Hand m to the link: a copy, since the original stays until the peer
 * acknowledges it. */
static int push(mdg_channel *ch, mdg_chan_msg *m)
{
    zmq_msg_t bm;
    if (m->has_bulk) { /* libzmq takes it: a copy (a reference, not the bytes) */
        zmq_msg_init(&bm);
        zmq_msg_copy(&bm, &m->bulk);
    }
    mdg_chan_stamp(ch, &m->h);
    int rc = ch->ops->send(ch->owner, &m->h, &m->params, m->has_bulk ? &bm : NULL);
    if (rc == MDG_EAGAIN) {
        if (m->has_bulk)
            zmq_msg_close(&bm);
    } else if (rc == 0) {
        mdg_chan_ack_told(ch, m->h.ack);
    }
    return rc;
}

/* m went (or failed as sent): a peer that never acknowledges is done with
 * it at once. */
static void sent(mdg_channel *ch, mdg_chan_msg *m)
{
    if (!ch->ops->acks)
        mdg_chan_acked(ch, m->h.seq);
}

/* How many unsent messages from m on go in one head frame: none with a
 * bulk frame (that must follow its own head frame alone), within the
 * batch limits: a frame is one message, or at most ch->batch_bytes (a
 * link with a payload limit, NATS's, checks each message against it and
 * can then take any batch). *bytes: room the frame needs at most. */
static size_t batchable(const mdg_channel *ch, const mdg_chan_msg *m, size_t *bytes)
{
    size_t n = 0;
    *bytes = 0;
    for (; m && !m->has_bulk && n < ch->batch_max; m = m->next, n++) {
        size_t one = MDG_HEADER_BOUND(m->h.command_len) + zmq_msg_size((zmq_msg_t *)&m->params);
        if (n && *bytes + one > ch->batch_bytes)
            break;
        *bytes += one;
    }
    return n;
}

static void free_frame(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Send n unsent messages from m on as one head frame; *n gets how many
 * went (or count as sent: the link failed), 1 when memory was short and m
 * went alone. 0, MDG_EAGAIN (nothing went) or the link's error. */
static int push_batch(mdg_channel *ch, mdg_chan_msg *m, size_t *n, size_t bytes)
{
    uint8_t *buf = malloc(bytes);
    size_t used = 0;
    zmq_msg_t head;
    if (buf) {
        mdg_chan_msg *x = m;
        for (size_t i = 0; i < *n; i++, x = x->next) {
            mdg_chan_stamp(ch, &x->h);
            used += mdg_wire_put_head(buf + used, bytes - used, &x->h, i + 1 < *n, zmq_msg_data(&x->params),
                                      zmq_msg_size(&x->params));
        }
        if (zmq_msg_init_data(&head, buf, used, free_frame, NULL) != 0) {
            free(buf);
            buf = NULL;
        }
    }
    if (!buf) { /* out of memory: one at a time */
        *n = 1;
        return push(ch, m);
    }
    int rc = ch->ops->send_frame(ch->owner, &head);
    if (rc == MDG_EAGAIN)
        zmq_msg_close(&head);
    else if (rc == 0)
        mdg_chan_ack_told(ch, m->h.ack);
    return rc;
}

int mdg_chan_flush(mdg_channel *ch)
{
    while (ch->unsent) {
        mdg_chan_msg *m = ch->unsent;
        size_t bytes = 0, n = ch->ops->send_frame ? batchable(ch, m, &bytes) : 1;
        int rc;
        if (n == 0) /* a message with bulk goes alone */
            n = 1;
        rc = n > 1 ? push_batch(ch, m, &n, bytes) : push(ch, m);
        if (rc == MDG_EAGAIN)
            return rc;
        for (size_t i = 0; i < n; i++) { /* went, or failed as sent: kept for a resume */
            mdg_chan_msg *s = ch->unsent;
            ch->unsent = s->next;
            sent(ch, s);
        }
        if (rc)
            return rc;
    }
    return 0;
}

size_t mdg_chan_acked(mdg_channel *ch, uint64_t ack)
{
    size_t n = 0;
    if (ack > ch->tx_seq)
        ack = ch->tx_seq;
    while (ch->head && ch->head != ch->unsent && ch->head->h.seq <= ack) {
        mdg_chan_msg *m = ch->head;
        ch->head = m->next;
        ch->len--;
        n++;
        ch->ops->release(ch->owner, m);
    }
    if (!ch->head)
        ch->tail = NULL;
    if (ack > ch->acked)
        ch->acked = ack;
    return n;
}

void mdg_chan_resume(mdg_channel *ch, uint64_t ack)
{
    ch->unsent = NULL; /* so that everything the peer has is released */
    mdg_chan_acked(ch, ack);
    ch->unsent = ch->head;
}

size_t mdg_chan_reset(mdg_channel *ch)
{
    size_t n = 0;
    while (ch->head) {
        mdg_chan_msg *m = ch->head;
        ch->head = m->next;
        n++;
        ch->ops->release(ch->owner, m);
    }
    ch->tail = ch->unsent = NULL;
    ch->len = 0;
    ch->tx_seq = ch->rx_seq = ch->acked = ch->ack_sent = 0;
    return n;
}

int mdg_chan_check(const mdg_channel *ch, const mdg_header *h)
{
    if (!mdg_kind_sequenced(h->kind) || h->seq == 0 || !ch->ops->acks)
        return MDG_CHAN_UNNUMBERED;
    if (h->seq <= ch->rx_seq)
        return MDG_CHAN_DUPLICATE;
    return h->seq == ch->rx_seq + 1 ? MDG_CHAN_NEXT : MDG_CHAN_GAP;
}
