/* params.h - params internals shared with the wire and message layers. */
#ifndef MDG_PARAMS_H
#define MDG_PARAMS_H

#include "messidge.h"

/* Wrap a decoded CBOR map (reference taken, even on failure). */
mdg_params *mdg_params_wrap(cbor_item_t *map);
/* An integer item of either sign. */
cbor_item_t *mdg_cbor_int(int64_t v);

#endif
