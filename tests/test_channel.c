/* test_channel.c - the reliable numbered channel on its own, with a link
 * the test controls: numbering, a full link, acknowledgement, resend after
 * a resume in order, reset, the receive verdicts, a peer that never
 * acknowledges (1.x), and messages waiting together going out as one head
 * frame that reads back as those messages in order. The end-to-end behaviour over real sockets is in
 * test_reliability, test_restart and test_links. */
#include "channel.h"
#include "inbound.h"
#include "testutil.h"

typedef struct test_link {
    int room;            /* sends it takes before it is full; -1 = no limit */
    bool broken;         /* every send fails as a gone link would */
    uint64_t seqs[64];   /* what went out, in order */
    uint64_t acks[64];
    int sent, released;
} test_link;

static int fake_send(void *owner, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    test_link *l = owner;
    (void)params; /* borrowed */
    if (l->room == 0)
        return MDG_EAGAIN;
    if (bulk)
        zmq_msg_close(bulk);
    if (l->broken)
        return MDG_ECLOSED;
    if (l->room > 0)
        l->room--;
    l->acks[l->sent] = h->ack;
    l->seqs[l->sent++] = h->seq;
    return 0;
}

static void fake_release(void *owner, mdg_chan_msg *m)
{
    test_link *l = owner;
    l->released++;
    zmq_msg_close(&m->params);
    free(m);
}

static mdg_chan_msg *new_msg(void)
{
    mdg_chan_msg *m = calloc(1, sizeof *m);
    m->h.kind = MDG_K_CMD;
    zmq_msg_init_size(&m->params, 1);
    return m;
}

static const mdg_chan_ops native = {.send = fake_send, .release = fake_release, .acks = true};
static const mdg_chan_ops no_acks = {.send = fake_send, .release = fake_release, .acks = false};

/* A link that takes head frames of several messages: the last one kept. */
static zmq_msg_t last_frame;
static int frames_sent;
static bool frames_fail; /* the link is gone */

static int frame_send(void *owner, zmq_msg_t *head)
{
    (void)owner;
    if (frames_fail) {
        zmq_msg_close(head);
        return MDG_ECLOSED;
    }
    zmq_msg_close(&last_frame);
    zmq_msg_init(&last_frame);
    zmq_msg_move(&last_frame, head);
    frames_sent++;
    return 0;
}

static void plain_release(void *owner, mdg_chan_msg *m)
{
    (void)owner;
    zmq_msg_close(&m->params);
    if (m->has_bulk)
        zmq_msg_close(&m->bulk);
    free(m);
}

static int one_send(void *owner, const mdg_header *h, zmq_msg_t *params, zmq_msg_t *bulk)
{
    (void)owner;
    (void)h;
    (void)params; /* borrowed */
    if (bulk)
        zmq_msg_close(bulk);
    frames_sent++;
    return 0;
}

static const mdg_chan_ops batching = {.send = one_send, .send_frame = frame_send, .release = plain_release,
                                      .acks = true};

static mdg_chan_msg *numbered_reply(int i)
{
    mdg_chan_msg *m = calloc(1, sizeof *m);
    mdg_params *p = mdg_params_new();
    m->h.kind = MDG_K_REPLY;
    m->h.corr = (uint64_t)i + 1;
    m->h.flags = i == 2 ? MDG_F_MORE : 0;
    mdg_params_set_int(p, "i", i);
    mdg_params_encode(p, &m->params);
    mdg_params_destroy(&p);
    return m;
}

static void test_batches(void)
{
    mdg_channel ch;
    mdg_chan_init(&ch, &batching, NULL);
    zmq_msg_init(&last_frame);
    for (int i = 0; i < 5; i++)
        mdg_chan_append(&ch, numbered_reply(i));
    CHECK_RC(mdg_chan_flush(&ch), 0);
    CHECK(frames_sent == 1 && !mdg_chan_pending(&ch) && ch.len == 5);
    /* the frame reads back as the five, in order, MORE kept, NEXT gone */
    mdg_frames f = {.n = 1};
    zmq_msg_init(&f.part[0]);
    zmq_msg_copy(&f.part[0], &last_frame);
    mdg_inbound_cursor at = {0};
    mdg_inbound in;
    int rc, k = 0, in_order = 0;
    while ((rc = mdg_inbound_next(&in, &f, 0, &at)) == 0) {
        mdg_params *p = NULL;
        int64_t v = -1;
        mdg_inbound_take_params(&in, &p);
        mdg_params_get_int(p, "i", &v);
        in_order += v == k && in.h.seq == (uint64_t)k + 1 && in.h.corr == (uint64_t)k + 1 &&
                    in.h.flags == (k == 2 ? MDG_F_MORE : 0u);
        mdg_params_destroy(&p);
        mdg_inbound_close(&in);
        k++;
    }
    CHECK(rc == 1 && k == 5 && in_order == 5);
    mdg_frames_close(&f);
    /* a message with bulk goes alone, and the ones around it in frames */
    frames_sent = 0;
    mdg_chan_append(&ch, numbered_reply(5));
    mdg_chan_msg *b = numbered_reply(6);
    b->has_bulk = true;
    zmq_msg_init_size(&b->bulk, 3);
    mdg_chan_append(&ch, b);
    mdg_chan_append(&ch, numbered_reply(7));
    mdg_chan_append(&ch, numbered_reply(8));
    CHECK_RC(mdg_chan_flush(&ch), 0);
    CHECK(frames_sent == 3 && !mdg_chan_pending(&ch) && ch.len == 9);
    /* a gone link: the whole frame counts as sent, kept for a resume */
    frames_fail = true;
    mdg_chan_append(&ch, numbered_reply(9));
    mdg_chan_append(&ch, numbered_reply(10));
    CHECK_RC(mdg_chan_flush(&ch), MDG_ECLOSED);
    CHECK(!mdg_chan_pending(&ch) && ch.len == 11);
    frames_fail = false;
    mdg_chan_rewind(&ch); /* after a resume everything kept goes again, in frames */
    frames_sent = 0;
    CHECK_RC(mdg_chan_flush(&ch), 0);
    CHECK(frames_sent == 3); /* 0-5 in one frame, 6 alone with its bulk, 7-10 in one */
    mdg_chan_reset(&ch);
    zmq_msg_close(&last_frame);
}

/* What a peer says it takes in a head frame comes from the network: kept
 * within 1..MDG_MAX_BATCH, and MDG_PEER_BATCH when it is missing or not a
 * count. */
static void test_said_batch(void)
{
    const struct {
        const char *key;
        int64_t n;
        size_t want;
    } cases[] = {{"max_batch", 100, 100},        {"max_batch", 1, 1},
                 {"max_batch", 0, MDG_PEER_BATCH}, {"max_batch", -5, MDG_PEER_BATCH},
                 {"max_batch", 1 << 30, MDG_MAX_BATCH}, {"other", 100, MDG_PEER_BATCH}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mdg_params *p = mdg_params_new();
        mdg_params_set_int(p, cases[i].key, cases[i].n);
        CHECK(mdg_chan_said_batch(p) == cases[i].want);
        mdg_params_destroy(&p);
    }
    mdg_params *p = mdg_params_new();
    mdg_params_set_str(p, "max_batch", "128");
    CHECK(mdg_chan_said_batch(p) == MDG_PEER_BATCH);
    mdg_params_destroy(&p);
    CHECK(mdg_chan_said_batch(NULL) == MDG_PEER_BATCH);
}

int main(void)
{
    test_batches();
    test_said_batch();
    test_link l = {.room = 2};
    mdg_channel ch;
    mdg_chan_init(&ch, &native, &l);

    /* numbered from 1; a full link keeps the rest, in order */
    for (int i = 0; i < 4; i++)
        mdg_chan_append(&ch, new_msg());
    CHECK_RC(mdg_chan_flush(&ch), MDG_EAGAIN);
    CHECK(l.sent == 2 && l.seqs[0] == 1 && l.seqs[1] == 2);
    CHECK(ch.len == 4 && mdg_chan_pending(&ch));
    /* room again: the rest, then what came after, in order */
    l.room = -1;
    mdg_chan_append(&ch, new_msg());
    CHECK_RC(mdg_chan_flush(&ch), 0);
    CHECK(l.sent == 5 && l.seqs[2] == 3 && l.seqs[3] == 4 && l.seqs[4] == 5);

    /* the receive side: next, duplicate, gap, unnumbered; the ack rides on sends */
    mdg_header h = {.kind = MDG_K_REPLY, .seq = 1};
    CHECK(mdg_chan_check(&ch, &h) == MDG_CHAN_NEXT);
    mdg_chan_received(&ch, 1);
    CHECK(mdg_chan_check(&ch, &h) == MDG_CHAN_DUPLICATE);
    h.seq = 3;
    CHECK(mdg_chan_check(&ch, &h) == MDG_CHAN_GAP);
    h.kind = MDG_K_ACK;
    CHECK(mdg_chan_check(&ch, &h) == MDG_CHAN_UNNUMBERED);
    CHECK(mdg_chan_ack_owed(&ch) && !mdg_chan_ack_due(&ch));
    mdg_chan_append(&ch, new_msg());
    CHECK_RC(mdg_chan_flush(&ch), 0);
    CHECK(l.acks[5] == 1 && !mdg_chan_ack_owed(&ch));

    /* acknowledged ones are released; a resume sends the rest again, in order */
    CHECK(mdg_chan_acked(&ch, 2) == 2 && l.released == 2 && ch.len == 4);
    l.sent = 0;
    mdg_chan_resume(&ch, 4);
    CHECK(l.released == 4 && ch.len == 2);
    CHECK_RC(mdg_chan_flush(&ch), 0);
    CHECK(l.sent == 2 && l.seqs[0] == 5 && l.seqs[1] == 6);

    /* a gone link: the message counts as sent and is kept for the resume */
    l.broken = true;
    mdg_chan_append(&ch, new_msg());
    CHECK_RC(mdg_chan_flush(&ch), MDG_ECLOSED);
    CHECK(!mdg_chan_pending(&ch) && ch.len == 3);
    l.broken = false;

    /* the session is gone: everything released, numbering from 1 again */
    CHECK(mdg_chan_reset(&ch) == 3 && ch.len == 0 && l.released == 7);
    mdg_chan_append(&ch, new_msg());
    l.sent = 0;
    CHECK_RC(mdg_chan_flush(&ch), 0);
    CHECK(l.seqs[0] == 1);
    mdg_chan_reset(&ch);

    /* a peer that never acknowledges: done once the link has it, and its
     * messages are never numbered on receipt */
    test_link l1 = {.room = -1};
    mdg_channel lc;
    mdg_chan_init(&lc, &no_acks, &l1);
    mdg_chan_append(&lc, new_msg());
    mdg_chan_append(&lc, new_msg());
    CHECK_RC(mdg_chan_flush(&lc), 0);
    CHECK(l1.released == 2 && lc.len == 0);
    h = (mdg_header){.kind = MDG_K_CMD, .seq = 7};
    CHECK(mdg_chan_check(&lc, &h) == MDG_CHAN_UNNUMBERED);
    return t_done("test_channel");
}
