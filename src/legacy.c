/* legacy.c - encode and decode Messidge 1.x frames (see legacy.h).
 *
 * libcbor does the CBOR and libsodium the boxes. libnacl's
 * crypto_secretbox and crypto_box produce tag || ciphertext, which is
 * exactly libsodium's _easy layout. Every input is checked by the wire
 * layer's CBOR pre-check (depth, declared lengths) before libcbor
 * allocates anything for it. */
#include "legacy.h"
#include "internal.h"
#include "wire.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static void free_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

static bool is_bytes(const cbor_item_t *it)
{
    return cbor_isa_bytestring(it) && cbor_bytestring_is_definite(it);
}

/* Load a CBOR array of `n` elements (the whole buffer). */
static int load_array(const void *buf, size_t len, size_t n, cbor_item_t **out)
{
    int rc = mdg_cbor_check(buf, len);
    if (rc)
        return rc;
    struct cbor_load_result res;
    cbor_item_t *item = cbor_load(buf, len, &res);
    if (!item)
        return res.error.code == CBOR_ERR_MEMERROR ? mdg_fail(MDG_ENOMEM, "out of memory decoding a 1.x frame")
                                                    : mdg_fail(MDG_EPROTO, "a 1.x frame is not valid CBOR");
    if (!cbor_isa_array(item) || cbor_array_size(item) != n) {
        size_t got = cbor_isa_array(item) ? cbor_array_size(item) : 0;
        bool arr = cbor_isa_array(item);
        cbor_decref(&item);
        return arr ? mdg_fail(MDG_EPROTO, "a 1.x frame must be a %zu-element array, not %zu", n, got)
                   : mdg_fail(MDG_EPROTO, "a 1.x frame must be a %zu-element array", n);
    }
    *out = item;
    return 0;
}

int mdg_legacy_parse(const void *buf, size_t len, mdg_legacy_frame *out)
{
    memset(out, 0, sizeof *out);
    cbor_item_t *item;
    int rc = load_array(buf, len, 5, &item);
    if (rc)
        return rc;
    cbor_item_t **e = cbor_array_handle(item);
    const char *bad = NULL;
    if (!is_bytes(e[0]))
        bad = "nonce must be a byte string";
    else if (!is_bytes(e[1]))
        bad = "command must be a byte string";
    else if (!is_bytes(e[2]))
        bad = "uuid must be a byte string";
    else if (!is_bytes(e[3]) && !cbor_isa_map(e[3]))
        bad = "params must be a byte string or a map";
    else if (!is_bytes(e[4]))
        bad = "bulk must be a byte string";
    else if (cbor_bytestring_length(e[0]) != 0 && cbor_bytestring_length(e[0]) != MDG_LEGACY_NONCE)
        bad = "nonce must be empty or 24 bytes";
    else if (cbor_bytestring_length(e[2]) > MDG_LEGACY_MAX_UUID)
        bad = "uuid longer than 64 bytes";
    /* no limit on the command field here: 1.x replies carry their bulk in
     * it; a command's name is checked once the frame is known to be one */
    if (bad) {
        cbor_decref(&item);
        return mdg_fail(MDG_EPROTO, "bad 1.x frame: %s", bad);
    }
    out->item = item;
    out->nonce = cbor_bytestring_handle(e[0]);
    out->nonce_len = cbor_bytestring_length(e[0]);
    out->command = cbor_bytestring_handle(e[1]);
    out->command_len = cbor_bytestring_length(e[1]);
    out->uuid = cbor_bytestring_handle(e[2]);
    out->uuid_len = cbor_bytestring_length(e[2]);
    out->params = e[3];
    out->bulk = cbor_bytestring_handle(e[4]);
    out->bulk_len = cbor_bytestring_length(e[4]);
    return 0;
}

size_t mdg_legacy_peek_uuid(const void *buf, size_t len, uint8_t uuid[MDG_LEGACY_MAX_UUID])
{
    cbor_item_t *item;
    size_t n = 0;
    if (load_array(buf, len, 5, &item) != 0)
        return 0;
    cbor_item_t *u = cbor_array_handle(item)[2];
    if (is_bytes(u) && cbor_bytestring_length(u) <= MDG_LEGACY_MAX_UUID) {
        n = cbor_bytestring_length(u);
        memcpy(uuid, cbor_bytestring_handle(u), n);
    }
    cbor_decref(&item);
    return n;
}

void mdg_legacy_frame_free(mdg_legacy_frame *f)
{
    if (f && f->item)
        cbor_decref(&f->item);
    if (f)
        memset(f, 0, sizeof *f);
}

int mdg_legacy_open(const mdg_legacy_frame *f, const uint8_t *key, mdg_params **params,
                    zmq_msg_t *bulk)
{
    *params = NULL;
    zmq_msg_init(bulk);
    if (!key) {
        if (!cbor_isa_map(f->params))
            return mdg_fail(MDG_EPROTO, "sealed params on a plaintext 1.x link");
        /* re-encoded and decoded again: the params layer's checks (text
         * keys, no duplicates) apply to 1.x peers as to native ones */
        unsigned char *data = NULL;
        size_t cap = 0, n = cbor_serialize_alloc(f->params, &data, &cap);
        int rc = n ? mdg_params_decode(data, n, params) : mdg_fail(MDG_ENOMEM, "cannot re-encode params");
        free(data);
        if (rc)
            return rc;
        if (f->bulk_len) {
            zmq_msg_close(bulk);
            zmq_msg_init_size(bulk, f->bulk_len);
            memcpy(zmq_msg_data(bulk), f->bulk, f->bulk_len);
        }
        return 0;
    }
    if (!is_bytes(f->params))
        return mdg_fail(MDG_EPROTO, "plaintext params on an encrypted 1.x session");
    if (f->nonce_len != MDG_LEGACY_NONCE)
        return mdg_fail(MDG_EPROTO, "an encrypted 1.x frame needs a 24-byte nonce");
    size_t plen = cbor_bytestring_length(f->params);
    if (plen < crypto_secretbox_MACBYTES)
        return mdg_fail(MDG_EPROTO, "sealed params too short");
    unsigned char *plain = malloc(plen - crypto_secretbox_MACBYTES + 1);
    if (!plain)
        return mdg_fail(MDG_ENOMEM, "out of memory opening params");
    if (crypto_secretbox_open_easy(plain, cbor_bytestring_handle(f->params), plen, f->nonce, key) != 0) {
        free(plain);
        return mdg_fail(MDG_EPROTO, "params do not open with the session key (forged or corrupt)");
    }
    int rc = mdg_params_decode(plain, plen - crypto_secretbox_MACBYTES, params);
    free(plain);
    if (rc)
        return rc;
    if (f->bulk_len) {
        if (f->bulk_len < crypto_secretbox_MACBYTES) {
            mdg_params_destroy(params);
            return mdg_fail(MDG_EPROTO, "sealed bulk too short");
        }
        zmq_msg_close(bulk);
        zmq_msg_init_size(bulk, f->bulk_len - crypto_secretbox_MACBYTES);
        if (crypto_secretbox_open_easy(zmq_msg_data(bulk), f->bulk, f->bulk_len, f->nonce, key) != 0) {
            zmq_msg_close(bulk);
            zmq_msg_init(bulk);
            mdg_params_destroy(params);
            return mdg_fail(MDG_EPROTO, "bulk does not open with the session key (forged or corrupt)");
        }
    }
    return 0;
}

/* Serialise an array item into a new zmq message. */
static int to_msg(cbor_item_t *arr, zmq_msg_t *out)
{
    unsigned char *data = NULL;
    size_t cap = 0, n = cbor_serialize_alloc(arr, &data, &cap);
    cbor_decref(&arr);
    if (!n || zmq_msg_init_data(out, data, n, free_buf, NULL) != 0) {
        free(data);
        zmq_msg_init(out);
        return mdg_fail(MDG_ENOMEM, "cannot encode a 1.x frame");
    }
    return 0;
}

/* Push b'...' onto an array; false when out of memory. */
static bool push_bytes(cbor_item_t *arr, const void *data, size_t len)
{
    cbor_item_t *b = cbor_build_bytestring(len ? data : (const void *)"", len);
    bool ok = b && cbor_array_push(arr, b);
    if (b)
        cbor_decref(&b);
    return ok;
}

static bool push_item(cbor_item_t *arr, cbor_item_t *it)
{
    bool ok = it && cbor_array_push(arr, it);
    if (it)
        cbor_decref(&it);
    return ok;
}

/* The params as a tree of our own (a new reference; NULL when out of
 * memory): half floats are singles there, which a 1.x peer's decoder
 * reads whatever it makes of halves. */
static cbor_item_t *params_tree(const mdg_params *params)
{
    cbor_item_t *map = params ? mdg_params_map(params) : NULL;
    return map ? cbor_incref(map) : params ? NULL : cbor_new_definite_map(0);
}

/* Seal data with key and nonce into a new byte-string item. */
static cbor_item_t *sealed(const void *data, size_t len, const uint8_t *nonce, const uint8_t *key)
{
    unsigned char *box = malloc(len + crypto_secretbox_MACBYTES);
    if (!box)
        return NULL;
    crypto_secretbox_easy(box, data, len, nonce, key);
    cbor_item_t *b = cbor_build_bytestring(box, len + crypto_secretbox_MACBYTES);
    free(box);
    return b;
}

int mdg_legacy_build(zmq_msg_t *out, const uint8_t *key, const uint8_t *nonce, size_t nonce_len,
                     const void *command, size_t command_len, const void *uuid, size_t uuid_len,
                     const mdg_params *params, const void *bulk, size_t bulk_len)
{
    zmq_msg_init(out);
    cbor_item_t *arr = cbor_new_definite_array(5);
    if (!arr)
        return mdg_fail(MDG_ENOMEM, "cannot encode a 1.x frame");
    bool ok;
    if (key) {
        uint8_t fresh[MDG_LEGACY_NONCE];
        randombytes_buf(fresh, sizeof fresh);
        /* encoded again from the tree (see params_tree) */
        cbor_item_t *tree = params_tree(params);
        unsigned char *plain = NULL;
        size_t cap = 0, plen = tree ? cbor_serialize_alloc(tree, &plain, &cap) : 0;
        if (tree)
            cbor_decref(&tree);
        ok = plen && push_bytes(arr, fresh, sizeof fresh) && push_bytes(arr, command, command_len) &&
             push_bytes(arr, uuid, uuid_len) && push_item(arr, sealed(plain, plen, fresh, key)) &&
             (bulk_len ? push_item(arr, sealed(bulk, bulk_len, fresh, key)) : push_bytes(arr, "", 0));
        free(plain);
    } else {
        /* a plaintext frame holds the params as an item of its own */
        ok = push_bytes(arr, nonce, nonce ? nonce_len : 0) && push_bytes(arr, command, command_len) &&
             push_bytes(arr, uuid, uuid_len) && push_item(arr, params_tree(params)) &&
             push_bytes(arr, bulk, bulk_len);
    }
    if (!ok) {
        cbor_decref(&arr);
        return mdg_fail(MDG_ENOMEM, "cannot encode a 1.x frame");
    }
    return to_msg(arr, out);
}

int mdg_legacy_build_hello(zmq_msg_t *out, const uint8_t pk[MDG_KEY_BYTES], const void *rid,
                           size_t rid_len)
{
    mdg_params *p = mdg_params_new();
    int rc = p ? 0 : MDG_ENOMEM;
    /* insertion order as 1.x: user, then rid */
    if (!rc)
        rc = mdg_params_set_bytes(p, "user", pk, MDG_KEY_BYTES);
    if (!rc)
        rc = mdg_params_set_bytes(p, "rid", rid_len ? rid : "", rid_len);
    if (!rc)
        rc = mdg_legacy_build(out, NULL, NULL, 0, "auth", 4, "", 0, p, NULL, 0);
    else
        zmq_msg_init(out);
    mdg_params_destroy(&p);
    return rc;
}

int mdg_legacy_build_welcome(zmq_msg_t *out, const uint8_t *user_pk, const uint8_t broker_sk[MDG_KEY_BYTES],
                             uint8_t key_out[MDG_LEGACY_KEY], const void *rid, size_t rid_len)
{
    zmq_msg_init(out);
    cbor_item_t *arr = cbor_new_definite_array(3);
    if (!arr)
        return mdg_fail(MDG_ENOMEM, "cannot encode a 1.x welcome");
    bool ok;
    if (user_pk) {
        uint8_t nonce[crypto_box_NONCEBYTES], box[crypto_box_MACBYTES + MDG_LEGACY_KEY];
        randombytes_buf(nonce, sizeof nonce);
        crypto_secretbox_keygen(key_out);
        if (crypto_box_easy(box, key_out, MDG_LEGACY_KEY, nonce, user_pk, broker_sk) != 0) {
            cbor_decref(&arr);
            return mdg_fail(MDG_EPROTO, "cannot box a session key to that public key");
        }
        ok = push_bytes(arr, nonce, sizeof nonce) && push_bytes(arr, box, sizeof box);
    } else {
        ok = push_bytes(arr, "", 0) && push_bytes(arr, "", 0);
    }
    if (!ok || !push_bytes(arr, rid, rid_len)) {
        cbor_decref(&arr);
        return mdg_fail(MDG_ENOMEM, "cannot encode a 1.x welcome");
    }
    return to_msg(arr, out);
}

int mdg_legacy_parse_welcome(const void *buf, size_t len, const uint8_t server_pk[MDG_KEY_BYTES],
                             const uint8_t my_sk[MDG_KEY_BYTES], bool *sealed_out,
                             uint8_t key[MDG_LEGACY_KEY], uint8_t *rid, size_t *rid_len)
{
    if (mdg_cbor_check(buf, len) != 0)
        return mdg_fail(MDG_EPROTO, "the answer to our 1.x hello is not CBOR");
    struct cbor_load_result res;
    cbor_item_t *item = cbor_load(buf, len, &res);
    if (!item)
        return mdg_fail(MDG_EPROTO, "the answer to our 1.x hello is not CBOR");
    int rc = 0;
    if (!cbor_isa_array(item) || cbor_array_size(item) != 3) {
        rc = mdg_fail(MDG_EAUTH, "Authentication failed: the 1.x broker refused our key");
        goto out;
    }
    cbor_item_t **e = cbor_array_handle(item);
    if (!is_bytes(e[0]) || !is_bytes(e[1]) || !is_bytes(e[2]) ||
        cbor_bytestring_length(e[2]) > MDG_LEGACY_MAX_RID) {
        rc = mdg_fail(MDG_EPROTO, "malformed answer to our 1.x hello");
        goto out;
    }
    size_t blen = cbor_bytestring_length(e[1]);
    *sealed_out = blen != 0;
    if (blen) {
        if (cbor_bytestring_length(e[0]) != crypto_box_NONCEBYTES || blen != crypto_box_MACBYTES + MDG_LEGACY_KEY ||
            crypto_box_open_easy(key, cbor_bytestring_handle(e[1]), blen, cbor_bytestring_handle(e[0]), server_pk,
                                 my_sk) != 0) {
            rc = mdg_fail(MDG_EHANDSHAKE, "Handshake failed: the session key does not open with the broker's key");
            goto out;
        }
    }
    *rid_len = cbor_bytestring_length(e[2]);
    memcpy(rid, cbor_bytestring_handle(e[2]), *rid_len);
out:
    cbor_decref(&item);
    return rc;
}

mdg_params *mdg_legacy_exception(const char *text)
{
    mdg_params *p = mdg_params_new();
    if (p && mdg_params_set_str(p, "exception", text ? text : "") != 0)
        mdg_params_destroy(&p);
    return p;
}

int mdg_legacy_params_out(int kind, const void *params, size_t len, mdg_params **out)
{
    int rc = mdg_params_decode(params, len, out);
    if (rc || kind != MDG_K_ERROR)
        return rc;
    const char *text = "";
    mdg_params_get_str(*out, "error", &text);
    mdg_params *e = mdg_legacy_exception(text);
    mdg_params_destroy(out);
    *out = e;
    return e ? 0 : mdg_fail(MDG_ENOMEM, "out of memory");
}

int mdg_legacy_error_in(mdg_params **p, const char *text, const char *command)
{
    mdg_params *e = mdg_params_new();
    if (!e || mdg_params_set_str(e, "error", text) != 0 ||
        (command && mdg_params_set_str(e, "command", command) != 0)) {
        mdg_params_destroy(&e);
        return mdg_fail(MDG_ENOMEM, "out of memory");
    }
    mdg_params_destroy(p); /* after the copy: text may be in it */
    *p = e;
    return 0;
}

void mdg_legacy_uuid(char out[23])
{
    /* 57 symbols, as shortuuid's alphabet (no look-alikes) */
    static const char alphabet[] = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    for (int i = 0; i < 22; i++)
        out[i] = alphabet[randombytes_uniform(sizeof alphabet - 1)];
    out[22] = '\0';
}

/* ------------------------------------------------ the uuids of 1.x calls */

int mdg_legacy_calls_init(mdg_legacy_calls *t, size_t limit)
{
    *t = (mdg_legacy_calls){0};
    mdg_ring_init(&t->order, limit);
    return (t->by_corr = mdg_map_new()) ? 0 : MDG_ENOMEM;
}

void mdg_legacy_calls_free(mdg_legacy_calls *t)
{
    mdg_legacy_call *u;
    while (t->by_corr && (u = mdg_map_pop(t->by_corr)) != NULL)
        free(u);
    mdg_map_destroy(&t->by_corr);
    mdg_ring_free(&t->order);
}

uint64_t mdg_legacy_calls_add(mdg_legacy_calls *t, const uint8_t *uuid, size_t len, bool *evicted)
{
    *evicted = false;
    mdg_legacy_call *u = calloc(1, sizeof *u);
    if (!u || len > MDG_LEGACY_MAX_UUID || mdg_map_put_u64(t->by_corr, t->last + 1, u) != 0) {
        free(u);
        return 0;
    }
    u->len = len;
    memcpy(u->uuid, uuid, len);
    uint64_t corr = ++t->last, old = mdg_ring_push(&t->order, corr);
    if (old && (u = mdg_map_take_u64(t->by_corr, old)) != NULL) {
        *evicted = true;
        free(u);
    }
    return corr;
}

mdg_legacy_call *mdg_legacy_calls_get(const mdg_legacy_calls *t, uint64_t corr)
{
    return corr ? mdg_map_get_u64(t->by_corr, corr) : NULL;
}

void mdg_legacy_calls_done(mdg_legacy_calls *t, uint64_t corr)
{
    free(mdg_map_take_u64(t->by_corr, corr));
}

size_t mdg_legacy_call_uuid(char *buf, size_t cap, const char *prefix, uint64_t corr)
{
    int n = snprintf(buf, cap, "%s%llu", prefix, (unsigned long long)corr);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

uint64_t mdg_legacy_corr_of(const char *prefix, const uint8_t *uuid, size_t len)
{
    size_t plen = strlen(prefix);
    uint64_t corr = 0;
    if (len <= plen || len > plen + 20 || memcmp(uuid, prefix, plen) != 0)
        return 0;
    for (size_t i = plen; i < len; i++) {
        uint64_t d = (uint64_t)(uuid[i] - '0');
        if (uuid[i] < '0' || uuid[i] > '9' || corr > (UINT64_MAX - d) / 10)
            return 0;
        corr = corr * 10 + d;
    }
    return corr;
}
