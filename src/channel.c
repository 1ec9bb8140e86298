/* channel.c - the reliable numbered channel (see channel.h). */
#include "channel.h"

void mdg_chan_init(mdg_channel *ch, const mdg_chan_ops *ops, void *owner)
{
    *ch = (mdg_channel){.ops = ops, .owner = owner};
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
    zmq_msg_t pm, bm;
    zmq_msg_init(&pm);
    zmq_msg_copy(&pm, &m->params);
    if (m->has_bulk) {
        zmq_msg_init(&bm);
        zmq_msg_copy(&bm, &m->bulk);
    }
    mdg_chan_stamp(ch, &m->h);
    int rc = ch->ops->send(ch->owner, &m->h, &pm, m->has_bulk ? &bm : NULL);
    if (rc == MDG_EAGAIN) {
        zmq_msg_close(&pm);
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

int mdg_chan_send_now(mdg_channel *ch, mdg_chan_msg *m)
{
    if (ch->unsent)
        return MDG_EAGAIN;
    m->h.seq = ch->tx_seq + 1;
    int rc = push(ch, m);
    if (rc == MDG_EAGAIN)
        return rc;
    keep(ch, m);
    sent(ch, m);
    return 0;
}

int mdg_chan_flush(mdg_channel *ch)
{
    while (ch->unsent) {
        mdg_chan_msg *m = ch->unsent;
        int rc = push(ch, m);
        if (rc == MDG_EAGAIN)
            return rc;
        ch->unsent = m->next;
        sent(ch, m);
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
