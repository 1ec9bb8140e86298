/* cbor_check.h - the limits every CBOR item from the network is held to,
 * checked with libcbor's streaming decoder before anything is built from
 * it: bounded depth and item count, declared lengths that fit in the
 * bytes, definite strings only, no tags that libcbor cannot read back. */
#ifndef MDG_CBOR_CHECK_H
#define MDG_CBOR_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a walk over one item found. mark, when set, is called with the
 * offset of every item directly inside the top container (for a map: its
 * keys and values in turn), so that a caller can index it in the same
 * pass. */
typedef struct mdg_cbor_walk {
    void (*mark)(void *arg, size_t off);
    void *arg;
    bool halves;      /* out: a half-precision float was seen */
    bool indefinite;  /* out: the top item is an indefinite container */
    size_t used;      /* out: bytes the item takes (trailing bytes allowed) */
} mdg_cbor_walk;

/* Walk the one item at buf's start. 0 or MDG_EPROTO with the reason. */
int mdg_cbor_walk_item(const void *buf, size_t len, mdg_cbor_walk *w);
/* buf is exactly one item within the limits. 0 or MDG_EPROTO. */
int mdg_cbor_check(const void *buf, size_t len);
/* The length of the item at buf's start, checked. 0 or MDG_EPROTO. */
int mdg_cbor_item_len(const void *buf, size_t len, size_t *used);

/* Well-formed UTF-8 (RFC 3629), as text strings must be. */
bool mdg_utf8_valid(const uint8_t *s, size_t n);

#endif
