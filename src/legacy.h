/* legacy.h - the Messidge 1.x wire format, for the opt-in compatibility
 * mode (docs/compatibility.md has what of the 1.x protocol is spoken, and how).
 *
 * A 1.x message is one ZMQ frame holding one CBOR array:
 *   normal     [nonce, command, uuid, params, bulk]
 *   hello      [b'', b'auth', b'', {'user': pk, 'rid': rid}, b'']
 *   welcome    [nonce, crypto_box(session key), rid]   (users)
 *              [b'', b'', rid]                         (nodes: plaintext)
 * On a user link params is crypto_secretbox(cbor(map)) and a non-empty
 * bulk is sealed with the same key and nonce (a 1.x weakness we must keep
 * to be understood); on a node link params is the bare map, bulk raw.
 *
 * This layer only encodes and decodes; the broker and the connection
 * decide what a frame means (uuid tables, who may answer what). */
#ifndef MDG_LEGACY_H
#define MDG_LEGACY_H
#include "map.h"
#include "messidge.h"
#include <zmq.h>

#define MDG_LEGACY_NONCE 24  /* crypto_secretbox / crypto_box nonce */
#define MDG_LEGACY_KEY 32    /* session key */
#define MDG_LEGACY_MAX_UUID 64 /* the library makes 22; longer is refused */
#define MDG_LEGACY_MAX_RID 64

/* One parsed normal frame. Pointers point into `item` (owned). */
typedef struct mdg_legacy_frame {
    cbor_item_t *item;
    const uint8_t *nonce;
    size_t nonce_len;
    const uint8_t *command;
    size_t command_len;
    const uint8_t *uuid;
    size_t uuid_len;
    cbor_item_t *params; /* a byte string (sealed) or a map (plaintext) */
    const uint8_t *bulk;
    size_t bulk_len;
} mdg_legacy_frame;

/* Parse a normal frame: a 5-element array of the right types, within the
 * wire checks' limits. 0, or MDG_EPROTO with the reason. */
int mdg_legacy_parse(const void *buf, size_t len, mdg_legacy_frame *out);
void mdg_legacy_frame_free(mdg_legacy_frame *f);

/* The uuid of a frame that mdg_legacy_parse refused, when it is at least a
 * 5-element array with a readable uuid: so that the sender can be told.
 * Its length (0: none). */
size_t mdg_legacy_peek_uuid(const void *buf, size_t len, uint8_t uuid[MDG_LEGACY_MAX_UUID]);

/* Open a parsed frame's params and bulk. key NULL = a plaintext link.
 * Sealed params on a plaintext link, a bare map on a sealed link, a box
 * that does not open: MDG_EPROTO with the reason. On 0, *params is new
 * (the caller's) and bulk is initialised (size 0 when there is none). */
int mdg_legacy_open(const mdg_legacy_frame *f, const uint8_t *key, mdg_params **params,
                    zmq_msg_t *bulk);

/* Build a normal frame into out (initialised here). With a key, a fresh
 * random nonce seals params (NULL = {}) and a non-empty bulk; without,
 * `nonce` (may be NULL/0 = b'') goes in clear with the bare map. */
int mdg_legacy_build(zmq_msg_t *out, const uint8_t *key, const uint8_t *nonce, size_t nonce_len,
                     const void *command, size_t command_len, const void *uuid, size_t uuid_len,
                     const mdg_params *params, const void *bulk, size_t bulk_len);

/* The hello a client sends: its pk and the rid it was given last time. */
int mdg_legacy_build_hello(zmq_msg_t *out, const uint8_t pk[MDG_KEY_BYTES], const void *rid,
                           size_t rid_len);

/* The broker's answer. For a user (user_pk non-NULL) a fresh session key
 * is made, written to key_out and boxed to the user; for a node the
 * answer says "plaintext". */
int mdg_legacy_build_welcome(zmq_msg_t *out, const uint8_t *user_pk, const uint8_t broker_sk[MDG_KEY_BYTES],
                             uint8_t key_out[MDG_LEGACY_KEY], const void *rid, size_t rid_len);

/* The client reads the answer to its hello. 0 with *sealed and key (when
 * sealed) and rid; MDG_EAUTH when it is not a 3-element answer (1.x's
 * "Authentication failed."); MDG_EHANDSHAKE when the box does not open
 * (another broker key); MDG_EPROTO for garbage. */
int mdg_legacy_parse_welcome(const void *buf, size_t len, const uint8_t server_pk[MDG_KEY_BYTES],
                             const uint8_t my_sk[MDG_KEY_BYTES], bool *sealed,
                             uint8_t key[MDG_LEGACY_KEY], uint8_t *rid, size_t *rid_len);

/* A 1.x exception reply's params, {'exception': text}, from a native
 * error's text. NULL when out of memory. */
mdg_params *mdg_legacy_exception(const char *text);

/* The params a native message of kind goes out with on a 1.x link: its
 * encoded params decoded, a native error ({"error": text, ...}) turned into
 * 1.x's exception reply. On 0 *out is new (the caller's). */
int mdg_legacy_params_out(int kind, const void *params, size_t len, mdg_params **out);

/* A 1.x exception reply's params as a native error's: *p is replaced by
 * {"error": text} (and "command" when not NULL); text may point into *p. */
int mdg_legacy_error_in(mdg_params **p, const char *text, const char *command);

/* A 22-character random ASCII id (1.x uses shortuuid), NUL-terminated. */
void mdg_legacy_uuid(char out[23]);

/* 1.x names a call by a uuid its caller chose; native messages by a
 * number (corr). Both ends of a 1.x link keep the uuids of the calls they
 * received, each under a corr of their own until its final reply, at most
 * `limit` of them: past it the oldest is forgotten (a call no one answers
 * must not hold its entry for good; its late reply can then not be sent).
 * One thread. */
typedef struct mdg_legacy_call {
    bool long_term; /* a reply marked 'ka' went out: the channel is long-term */
    size_t len;
    uint8_t uuid[MDG_LEGACY_MAX_UUID];
} mdg_legacy_call;

typedef struct mdg_legacy_calls {
    mdg_map *by_corr;
    mdg_ring order; /* corrs, oldest first */
    uint64_t last;  /* the last corr given */
} mdg_legacy_calls;

/* 0, or MDG_ENOMEM. */
int mdg_legacy_calls_init(mdg_legacy_calls *t, size_t limit);
void mdg_legacy_calls_free(mdg_legacy_calls *t);
/* Remember a received call's uuid (len <= MDG_LEGACY_MAX_UUID): its corr,
 * or 0 when out of memory. *evicted says whether the oldest was forgotten
 * to make room. */
uint64_t mdg_legacy_calls_add(mdg_legacy_calls *t, const uint8_t *uuid, size_t len, bool *evicted);
/* The call a corr names, or NULL (never given, answered, or forgotten). */
mdg_legacy_call *mdg_legacy_calls_get(const mdg_legacy_calls *t, uint64_t corr);
/* Its final reply went: forget it. */
void mdg_legacy_calls_done(mdg_legacy_calls *t, uint64_t corr);

/* The uuid of a call we make: prefix, then corr in decimal (a text; its
 * length is returned). And back: the corr a uuid names, or 0 when it is
 * not one of ours. */
size_t mdg_legacy_call_uuid(char *buf, size_t cap, const char *prefix, uint64_t corr);
uint64_t mdg_legacy_corr_of(const char *prefix, const uint8_t *uuid, size_t len);

#endif
