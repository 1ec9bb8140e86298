/* inbound.c - one received message, whatever protocol brought it (see
 * inbound.h): its params in the form they came, converted once on demand. */
#include "inbound.h"

#include "internal.h"
#include "params.h"

#include <string.h>

#define TOO_MANY_PARTS "a message has a header, params and at most one bulk frame"

void mdg_inbound_init(mdg_inbound *in)
{
    in->has_encoded = false;
    in->params = NULL;
    in->has_bulk = false;
}

int mdg_inbound_from_frames(mdg_inbound *in, mdg_frames *f, int first)
{
    int nparts = f->n - first;
    if (f->dropped || nparts > 2)
        return mdg_fail(MDG_EPROTO, TOO_MANY_PARTS);
    mdg_inbound_init(in);
    if (nparts >= 1) {
        zmq_msg_init(&in->encoded);
        zmq_msg_move(&in->encoded, &f->part[first]);
        in->has_encoded = true;
    }
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
    if (!in->has_encoded)
        return mdg_fail(MDG_EPROTO, TOO_MANY_PARTS);
    int rc = mdg_wire_decode_params(zmq_msg_data(&in->encoded), zmq_msg_size(&in->encoded), out);
    if (rc == 0) {
        zmq_msg_close(&in->encoded);
        in->has_encoded = false;
    }
    return rc;
}

int mdg_inbound_take_encoded(mdg_inbound *in, zmq_msg_t *out)
{
    if (in->params) {
        int rc = mdg_wire_encode_params(in->params, out);
        if (rc == 0)
            mdg_params_destroy(&in->params);
        return rc;
    }
    if (!in->has_encoded)
        return mdg_fail(MDG_EPROTO, TOO_MANY_PARTS);
    const uint8_t *data = zmq_msg_data(&in->encoded);
    size_t len = zmq_msg_size(&in->encoded);
    if (mdg_wire_check_cbor(data, len) != 0)
        return MDG_EPROTO;
    if ((data[0] >> 5) != 5) /* CBOR major type 5: a map */
        return mdg_fail(MDG_EPROTO, "params must be a map");
    zmq_msg_init(out);
    zmq_msg_move(out, &in->encoded);
    zmq_msg_close(&in->encoded);
    in->has_encoded = false;
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
