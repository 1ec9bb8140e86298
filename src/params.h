/* params.h - params internals shared with the wire and message layers.
 *
 * A params is kept encoded: its pairs as CBOR bytes (key, value, key,
 * value...) with an index of where each starts. Receiving copies the bytes
 * once, sending writes the map's head and copies them once, and the typed
 * getters and setters read and write the bytes in place. A libcbor item
 * tree is made only when someone asks for one (mdg_params_get,
 * mdg_params_map, text output). */
#ifndef MDG_PARAMS_H
#define MDG_PARAMS_H

#include "messidge.h"

#include <zmq.h>

/* Decode params from the network: one CBOR map within cbor_check.h's
 * limits, whose keys are distinct text strings. On 0 *out is a new params
 * (the caller's); else MDG_EPROTO / MDG_ENOMEM with the reason. */
int mdg_params_decode(const void *buf, size_t len, mdg_params **out);
/* The same for params already walked (cbor_check.h's limits) by a walk
 * whose marks, halves and indefinite are given: not walked again. */
int mdg_params_decode_walked(const void *buf, size_t len, const uint32_t *marks, size_t nmarks, bool halves,
                             bool indefinite, mdg_params **out);
/* The encoded map (NULL = the empty map): its size, and writing it at buf
 * (returns the bytes written, 0 when cap is too small). */
size_t mdg_params_encoded_size(const mdg_params *p);
size_t mdg_params_write(const mdg_params *p, uint8_t *buf, size_t cap);
/* The encoded map as a new zmq message. 0 or MDG_ENOMEM. */
int mdg_params_encode(const mdg_params *p, zmq_msg_t *out);
/* The same, written at buf when it fits cap: then *out is a libzmq
 * message over buf that owns nothing (no allocation), valid while buf is,
 * for a caller whose next step copies it (into a kept message or a
 * frame); else a message of its own, as mdg_params_encode. */
#define MDG_PARAMS_STACK 512
int mdg_params_encode_at(const mdg_params *p, uint8_t *buf, size_t cap, zmq_msg_t *out);
/* For tests only: params made of any CBOR map, keys unchecked (the map's
 * reference is taken, even on failure), to send what a faulty or hostile
 * peer would. NULL when it does not encode or is not a map. */
mdg_params *mdg_params_forge(cbor_item_t *map);
/* Half floats made singles, in place (see params_tree.c). 0 or MDG_ENOMEM. */
int mdg_cbor_widen_halves(cbor_item_t **slot);

#endif
