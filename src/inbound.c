/* inbound.c - one received message, whatever protocol brought it (see
 * inbound.h): its params in the form they came, converted once on demand. */
#include "inbound.h"

#include "cbor_check.h"
#include "internal.h"
#include "params.h"

#include <string.h>

#define TOO_MANY_PARTS "a message is a head frame (header and params) and at most one bulk frame"
#define NO_PARAMS "a message's head frame has its params after the header"

void mdg_inbound_init(mdg_inbound *in)
{
    in->has_encoded = in->params_checked = false;
    in->nmarks = 0;
    in->params_off = in->params_len = 0;
    in->params = NULL;
    in->has_bulk = false;
}

/* The walk in mdg_wire_read_head_walk marks each key and value. */
static void remember_mark(void *arg, size_t off)
{
    mdg_inbound *in = arg;
    if (in->nmarks < MDG_INBOUND_MARKS)
        in->marks[in->nmarks] = (uint32_t)off;
    in->nmarks++;
}

int mdg_inbound_next(mdg_inbound *in, mdg_frames *f, int first, mdg_inbound_cursor *at)
{
    int nparts = f->n - first;
    mdg_inbound_init(in);
    if (nparts < 1)
        return mdg_fail(MDG_EPROTO, "a message without its head frame");
    zmq_msg_t *head = &f->part[first];
    size_t size = zmq_msg_size(head);
    if (at->count && at->off >= size)
        return 1;
    mdg_cbor_walk walk = {.mark = remember_mark, .arg = in};
    int rc = mdg_wire_read_head_walk(zmq_msg_data(head), size, &at->off, &in->h, &in->params_off, &in->params_len,
                                     &walk);
    if (rc) {
        memset(&in->h, 0, sizeof in->h); /* kind 0: no header */
        at->off = size;
        return rc;
    }
    in->params_checked = at->off < size; /* walked to find the next message */
    in->halves = walk.halves;
    in->indefinite = walk.indefinite;
    bool alone = ++at->count == 1 && at->off == size;
    if (f->dropped || nparts > 2)
        rc = mdg_fail(MDG_EPROTO, TOO_MANY_PARTS);
    else if (nparts == 2 && !alone)
        rc = mdg_fail(MDG_EPROTO, "a bulk frame follows a head frame of one message only");
    else if (at->count > MDG_MAX_BATCH)
        rc = mdg_fail(MDG_EPROTO, "more than %d messages in one head frame", MDG_MAX_BATCH);
    if (rc) {
        at->off = size;
        return rc;
    }
    zmq_msg_init(&in->encoded);
    zmq_msg_copy(&in->encoded, head);
    in->has_encoded = true;
    if (nparts == 2) {
        zmq_msg_init(&in->bulk);
        zmq_msg_move(&in->bulk, &f->part[first + 1]);
        in->has_bulk = true;
    }
    return 0;
}

int mdg_inbound_take_params(mdg_inbound *in, mdg_params **out)
{
    *out = NULL;
    if (in->params) {
        *out = in->params;
        in->params = NULL;
        return 0;
    }
    if (!in->has_encoded || !in->params_len)
        return mdg_fail(MDG_EPROTO, NO_PARAMS);
    const uint8_t *data = (const uint8_t *)zmq_msg_data(&in->encoded) + in->params_off;
    int rc = in->params_checked && in->nmarks <= MDG_INBOUND_MARKS
                 ? mdg_params_decode_walked(data, in->params_len, in->marks, in->nmarks, in->halves, in->indefinite, out)
                 : mdg_params_decode(data, in->params_len, out);
    if (rc == 0) {
        zmq_msg_close(&in->encoded);
        in->has_encoded = false;
    }
    return rc;
}

int mdg_inbound_encoded_params(mdg_inbound *in, zmq_msg_t *out)
{
    if (in->params) {
        int rc = mdg_params_encode(in->params, out);
        if (rc == 0)
            mdg_params_destroy(&in->params);
        return rc;
    }
    if (!in->has_encoded)
        return mdg_fail(MDG_EPROTO, NO_PARAMS);
    const uint8_t *data = (const uint8_t *)zmq_msg_data(&in->encoded) + in->params_off;
    size_t len = in->params_len;
    if (!len)
        return mdg_fail(MDG_EPROTO, NO_PARAMS);
    /* walked already when another message followed in the frame */
    if (!in->params_checked && mdg_cbor_check(data, len) != 0)
        return MDG_EPROTO;
    if ((data[0] >> 5) != 5) /* CBOR major type 5: a map */
        return mdg_fail(MDG_EPROTO, "params must be a map");
    /* the params alone, still in the head frame: whoever passes them on
     * copies them into a message of its own */
    zmq_msg_init_data(out, (void *)data, len, NULL, NULL); /* owns nothing */
    return 0;
}

bool mdg_inbound_take_bulk(mdg_inbound *in, zmq_msg_t *out)
{
    if (!in->has_bulk)
        return false;
    zmq_msg_init(out);
    zmq_msg_move(out, &in->bulk);
    zmq_msg_close(&in->bulk);
    in->has_bulk = false;
    return true;
}

void mdg_inbound_move(mdg_inbound *dst, mdg_inbound *src)
{
    dst->h = src->h;
    mdg_inbound_init(dst);
    if (src->has_encoded) {
        zmq_msg_init(&dst->encoded);
        zmq_msg_move(&dst->encoded, &src->encoded);
        zmq_msg_close(&src->encoded);
        dst->has_encoded = true;
        dst->params_off = src->params_off;
        dst->params_len = src->params_len;
        dst->params_checked = src->params_checked;
        dst->nmarks = src->nmarks;
        memcpy(dst->marks, src->marks, sizeof dst->marks);
        dst->halves = src->halves;
        dst->indefinite = src->indefinite;
    }
    dst->params = src->params;
    dst->has_bulk = mdg_inbound_take_bulk(src, &dst->bulk);
    mdg_inbound_init(src);
}

void mdg_inbound_close(mdg_inbound *in)
{
    if (in->has_encoded)
        zmq_msg_close(&in->encoded);
    mdg_params_destroy(&in->params);
    if (in->has_bulk)
        zmq_msg_close(&in->bulk);
    mdg_inbound_init(in);
}
