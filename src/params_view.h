/* params_view.h - between params.c (the encoded pairs) and params_get.c
 * (reading them: typed getters, and libcbor item trees made on demand). */
#ifndef MDG_PARAMS_VIEW_H
#define MDG_PARAMS_VIEW_H

#include "messidge.h"

typedef enum mdg_cbor_kind {
    MDG_CBOR_OTHER, /* arrays, maps, tags, undefined */
    MDG_CBOR_UINT,
    MDG_CBOR_NEGINT,
    MDG_CBOR_TEXT,
    MDG_CBOR_BYTES,
    MDG_CBOR_FLOAT,
    MDG_CBOR_BOOL,
    MDG_CBOR_NULL,
} mdg_cbor_kind;

/* A value as read from its encoded bytes (data points into the params). */
typedef struct mdg_cbor_value {
    mdg_cbor_kind kind;
    uint64_t u;          /* UINT; NEGINT is -1 - u */
    double d;            /* FLOAT of any width */
    bool b;              /* BOOL */
    const uint8_t *data; /* TEXT, BYTES */
    size_t len;
    size_t pair;         /* which pair it is */
    const uint8_t *enc;  /* the value's encoding */
    size_t enc_len;
} mdg_cbor_value;

/* What the params has handed out: item trees and NUL-terminated strings.
 * They live as long as the params, so a pointer a getter returned stays
 * valid after later changes; a change only stops them being reused. */
typedef struct mdg_params_view mdg_params_view;
typedef struct mdg_params_views {
    mdg_params_view *list;
    unsigned version; /* bumped by every change to the pairs */
    bool halves;      /* the pairs hold half floats: trees are widened */
    bool lent;        /* a getter handed out a pointer into the pairs */
} mdg_params_views;

void mdg_params_views_init(mdg_params_views *v);
void mdg_params_views_free(mdg_params_views *v);
void mdg_params_views_changed(mdg_params_views *v);
/* Keep buf (malloc'd, now the views') until the params goes. */
bool mdg_params_views_keep(mdg_params_views *v, void *buf);

/* From params.c, for params_get.c (and the broker's read of a forward's
 * "node", which must not lend): */
/* The value of key: 0, or MDG_ENOTFOUND with the reason. */
int mdg_params_lookup(const mdg_params *p, const char *key, mdg_cbor_value *v);
mdg_params_views *mdg_params_views_of(const mdg_params *p);

#endif
