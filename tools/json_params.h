/* json_params.h - params (CBOR) to JSON and back, with jansson, for the
 * messidge tool: what it prints is JSON whatever the CBOR held, and what
 * it is given as JSON becomes the matching CBOR.
 *
 * CBOR to JSON, where JSON has no like:
 *   byte strings             "b64:" + standard base64 (as mdg_params_to_text)
 *   NaN, +-infinity          null
 *   map keys not text        their JSON text ("1", "b64:...", "[1, 2]")
 *   tags                     the tagged item; undefined and other simple
 *                            values: null; integers past int64: a float
 * Text in params is always UTF-8 (the library refuses anything else), as
 * JSON needs. */
#ifndef MDG_JSON_PARAMS_H
#define MDG_JSON_PARAMS_H

#include "messidge.h"

#include <jansson.h>

/* The params as JSON text (one line; the caller frees it), or NULL when
 * out of memory. Floats print with the fewest digits that read back the
 * same (15 to 17). */
char *json_params_text(const mdg_params *p);

/* The params as a JSON object (the caller's reference), or NULL when out
 * of memory: for reading a reply with jansson's getters. */
json_t *json_params_value(const mdg_params *p);

/* A JSON value as a new CBOR item (the caller's reference), or NULL when
 * out of memory. Integers stay integers, other numbers are floats. */
cbor_item_t *json_params_to_cbor(const json_t *v);

#endif
