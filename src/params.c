/* params.c - params maps kept encoded (see params.h): the pairs' CBOR
 * bytes and an index of where each item starts.
 *
 * Everything here reads and writes with libcbor: values are written with
 * its cbor_encode_* functions and read back with its streaming decoder,
 * one item head at a time, so that a typed get or set allocates nothing
 * beyond the params itself. Typical params (a few short pairs) fit the
 * storage inside the struct: one allocation per params. */
#include "params.h"

#include "cbor_check.h"
#include "internal.h"
#include "params_view.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>

#define INLINE_BYTES 128
#define INLINE_PAIRS 8

/* The index: item i (key 2k, value 2k + 1) takes buf[at[i], at[i + 1]);
 * at[2n] == len. 32 bits are enough: a params never outgrows a frame. */
struct mdg_params {
    uint8_t *buf;
    uint32_t *at;
    size_t n;        /* pairs */
    size_t len, cap; /* bytes used and held in buf */
    size_t at_cap;   /* entries held in at */
    mdg_params_views views;
    uint8_t small[INLINE_BYTES];
    uint32_t small_at[2 * INLINE_PAIRS + 1];
};

_Static_assert(MDG_MAX_FRAME < UINT32_MAX, "params offsets are 32-bit");

mdg_params *mdg_params_new(void)
{
    mdg_params *p = malloc(sizeof *p);
    if (!p)
        return NULL;
    p->buf = p->small;
    p->at = p->small_at;
    p->n = p->len = 0;
    p->cap = INLINE_BYTES;
    p->at_cap = 2 * INLINE_PAIRS + 1;
    p->at[0] = 0;
    mdg_params_views_init(&p->views);
    return p;
}

void mdg_params_destroy(mdg_params **pp)
{
    if (!pp || !*pp)
        return;
    mdg_params *p = *pp;
    mdg_params_views_free(&p->views);
    if (p->buf != p->small)
        free(p->buf);
    if (p->at != p->small_at)
        free(p->at);
    free(p);
    *pp = NULL;
}

size_t mdg_params_count(const mdg_params *p)
{
    return p ? p->n : 0;
}

/* --------------------------------------------------------------- storage */

static bool grow(void **v, void *small, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return true;
    if (need > UINT32_MAX)
        return false;
    size_t nc = *cap * 2;
    while (nc < need)
        nc *= 2;
    void *nv = *v == small ? malloc(nc * size) : realloc(*v, nc * size);
    if (!nv)
        return false;
    if (*v == small)
        memcpy(nv, small, *cap * size);
    *v = nv;
    *cap = nc;
    return true;
}

static bool reserve(mdg_params *p, size_t bytes, size_t pairs)
{
    return grow((void **)&p->buf, p->small, &p->cap, p->len + bytes, 1) &&
           grow((void **)&p->at, p->small_at, &p->at_cap, 2 * (p->n + pairs) + 1, sizeof *p->at);
}

/* Make item i's span [at[i], at[i+1]) `size` bytes long, moving what
 * follows; the caller has reserved the room. */
static void resize_item(mdg_params *p, size_t i, size_t size)
{
    size_t start = p->at[i], old = p->at[i + 1] - start;
    memmove(p->buf + start + size, p->buf + start + old, p->len - start - old);
    p->len = p->len - old + size;
    for (size_t j = i + 1; j <= 2 * p->n; j++)
        p->at[j] = (uint32_t)(p->at[j] - old + size);
}

/* ----------------------------------------------------------------- reading */

/* One item head, as the streaming decoder reports it. */
typedef struct head {
    mdg_cbor_kind kind;
    uint64_t u;        /* MDG_CBOR_UINT, MDG_CBOR_NEGINT (the value is -1 - u) */
    double d;          /* MDG_CBOR_FLOAT */
    bool b;            /* MDG_CBOR_BOOL */
    const uint8_t *data;
    size_t len;        /* MDG_CBOR_TEXT, MDG_CBOR_BYTES */
} head;

static void h_uint8(void *c, uint8_t v) { *(head *)c = (head){.kind = MDG_CBOR_UINT, .u = v}; }
static void h_uint16(void *c, uint16_t v) { *(head *)c = (head){.kind = MDG_CBOR_UINT, .u = v}; }
static void h_uint32(void *c, uint32_t v) { *(head *)c = (head){.kind = MDG_CBOR_UINT, .u = v}; }
static void h_uint64(void *c, uint64_t v) { *(head *)c = (head){.kind = MDG_CBOR_UINT, .u = v}; }
static void h_neg8(void *c, uint8_t v) { *(head *)c = (head){.kind = MDG_CBOR_NEGINT, .u = v}; }
static void h_neg16(void *c, uint16_t v) { *(head *)c = (head){.kind = MDG_CBOR_NEGINT, .u = v}; }
static void h_neg32(void *c, uint32_t v) { *(head *)c = (head){.kind = MDG_CBOR_NEGINT, .u = v}; }
static void h_neg64(void *c, uint64_t v) { *(head *)c = (head){.kind = MDG_CBOR_NEGINT, .u = v}; }
static void h_text(void *c, cbor_data d, uint64_t l)
{
    *(head *)c = (head){.kind = MDG_CBOR_TEXT, .data = d, .len = (size_t)l};
}
static void h_bytes(void *c, cbor_data d, uint64_t l)
{
    *(head *)c = (head){.kind = MDG_CBOR_BYTES, .data = d, .len = (size_t)l};
}
static void h_float(void *c, float v) { *(head *)c = (head){.kind = MDG_CBOR_FLOAT, .d = v}; }
static void h_double(void *c, double v) { *(head *)c = (head){.kind = MDG_CBOR_FLOAT, .d = v}; }
static void h_bool(void *c, bool v) { *(head *)c = (head){.kind = MDG_CBOR_BOOL, .b = v}; }
static void h_null(void *c) { *(head *)c = (head){.kind = MDG_CBOR_NULL}; }
static void h_other(void *c) { *(head *)c = (head){.kind = MDG_CBOR_OTHER}; }
static void h_other_n(void *c, uint64_t v) { (void)v; h_other(c); }

static const struct cbor_callbacks head_callbacks = {
    .uint8 = h_uint8, .uint16 = h_uint16, .uint32 = h_uint32, .uint64 = h_uint64,
    .negint8 = h_neg8, .negint16 = h_neg16, .negint32 = h_neg32, .negint64 = h_neg64,
    .string = h_text, .string_start = h_other,
    .byte_string = h_bytes, .byte_string_start = h_other,
    .array_start = h_other_n, .indef_array_start = h_other,
    .map_start = h_other_n, .indef_map_start = h_other,
    .tag = h_other_n,
    .float2 = h_float, .float4 = h_float, .float8 = h_double,
    .undefined = h_other, .null = h_null, .boolean = h_bool, .indef_break = h_other,
};

/* Item i's head (its whole value for a scalar or a string). */
static head item_head(const mdg_params *p, size_t i)
{
    head h = {.kind = MDG_CBOR_OTHER};
    cbor_stream_decode(p->buf + p->at[i], p->at[i + 1] - p->at[i], &head_callbacks, &h);
    return h;
}

/* The pair whose key is key (klen bytes), or -1. A text key's last klen
 * bytes are its text, so a key whose tail differs is passed over without
 * decoding its head; a candidate is decoded to be sure (its head may say
 * another length, or another type). */
static long find(const mdg_params *p, const char *key, size_t klen)
{
    if (!p || !key)
        return -1;
    for (size_t k = 0; k < p->n; k++) {
        size_t start = p->at[2 * k], len = p->at[2 * k + 1] - start;
        if (len <= klen || memcmp(p->buf + start + len - klen, key, klen) != 0)
            continue;
        head h = item_head(p, 2 * k);
        if (h.kind == MDG_CBOR_TEXT && h.len == klen && memcmp(h.data, key, klen) == 0)
            return (long)k;
    }
    return -1;
}

bool mdg_params_has(const mdg_params *p, const char *key)
{
    return key && find(p, key, strlen(key)) >= 0;
}

int mdg_params_lookup(const mdg_params *p, const char *key, mdg_cbor_value *v)
{
    long k = key ? find(p, key, strlen(key)) : -1;
    if (k < 0)
        return mdg_fail(MDG_ENOTFOUND, "no param '%s'", key ? key : "(null)");
    head h = item_head(p, 2 * (size_t)k + 1);
    *v = (mdg_cbor_value){.kind = h.kind, .u = h.u, .d = h.d, .b = h.b, .data = h.data, .len = h.len,
                          .pair = (size_t)k, .enc = p->buf + p->at[2 * k + 1],
                          .enc_len = p->at[2 * k + 2] - p->at[2 * k + 1]};
    return 0;
}

mdg_params_views *mdg_params_views_of(const mdg_params *p)
{
    return (mdg_params_views *)&p->views; /* the views are not part of the value */
}

/* ----------------------------------------------------------------- writing */

/* Before a change: when a getter has lent a pointer into the pairs, they
 * are left as they are (kept until the params goes) and the change is
 * made to a copy, so that the pointer stays valid and its bytes stay the
 * same. Only a change after a lend pays for the copy. */
static int unlend(mdg_params *p)
{
    if (!p->views.lent)
        return 0;
    uint8_t *nb = malloc(p->cap);
    if (!nb || (p->buf != p->small && !mdg_params_views_keep(&p->views, p->buf))) {
        free(nb);
        return mdg_fail(MDG_ENOMEM, "out of memory changing params");
    }
    memcpy(nb, p->buf, p->len);
    p->buf = nb; /* p->small, if that was it, is never written again */
    p->views.lent = false;
    return 0;
}

/* Set key to a value whose encoding is vhead then vdata. */
static int set_encoded(mdg_params *p, const char *key, const uint8_t *vhead, size_t vhlen, const void *vdata,
                       size_t vdlen)
{
    if (!p || !key)
        return mdg_fail(MDG_EINVAL, "params and key are required");
    size_t klen = strlen(key), vlen = vhlen + vdlen;
    long k = find(p, key, klen);
    int rc = unlend(p);
    if (rc)
        return rc;
    mdg_params_views_changed(&p->views);
    if (k >= 0) { /* replace the value in place: the order of keys stays */
        size_t i = 2 * (size_t)k + 1, old = p->at[i + 1] - p->at[i];
        if (vlen > old && !reserve(p, vlen - old, 0))
            return mdg_fail(MDG_ENOMEM, "out of memory setting param '%s'", key);
        resize_item(p, i, vlen);
        memcpy(p->buf + p->at[i], vhead, vhlen);
        if (vdlen)
            memcpy(p->buf + p->at[i] + vhlen, vdata, vdlen);
        return 0;
    }
    uint8_t khead[9];
    size_t khlen = cbor_encode_string_start(klen, khead, sizeof khead);
    if (!reserve(p, khlen + klen + vlen, 1))
        return mdg_fail(MDG_ENOMEM, "out of memory setting param '%s'", key);
    uint8_t *w = p->buf + p->len;
    memcpy(w, khead, khlen);
    memcpy(w + khlen, key, klen);
    memcpy(w + khlen + klen, vhead, vhlen);
    if (vdlen)
        memcpy(w + khlen + klen + vhlen, vdata, vdlen);
    p->at[2 * p->n + 1] = (uint32_t)(p->len + khlen + klen);
    p->len += khlen + klen + vlen;
    p->n++;
    p->at[2 * p->n] = (uint32_t)p->len;
    return 0;
}

int mdg_params_remove(mdg_params *p, const char *key)
{
    long k = key ? find(p, key, strlen(key)) : -1;
    if (k < 0)
        return MDG_ENOTFOUND;
    int rc = unlend(p);
    if (rc)
        return rc;
    mdg_params_views_changed(&p->views);
    size_t i = 2 * (size_t)k, start = p->at[i], size = p->at[i + 2] - start;
    memmove(p->buf + start, p->buf + start + size, p->len - start - size);
    p->len -= size;
    for (size_t j = i; j + 2 <= 2 * p->n; j++)
        p->at[j] = (uint32_t)(p->at[j + 2] - size);
    p->n--;
    return 0;
}

int mdg_params_set_str(mdg_params *p, const char *key, const char *value)
{
    if (!value)
        return MDG_EINVAL;
    uint8_t h[9];
    size_t n = strlen(value);
    if (!mdg_utf8_valid((const uint8_t *)value, n)) /* no receiver would take it */
        return mdg_fail(MDG_EINVAL, "param '%s': text is not valid UTF-8", key ? key : "(null)");
    return set_encoded(p, key, h, cbor_encode_string_start(n, h, sizeof h), value, n);
}

int mdg_params_set_bytes(mdg_params *p, const char *key, const void *data, size_t len)
{
    if (!data && len)
        return MDG_EINVAL;
    uint8_t h[9];
    return set_encoded(p, key, h, cbor_encode_bytestring_start(len, h, sizeof h), data, len);
}

int mdg_params_set_int(mdg_params *p, const char *key, int64_t value)
{
    /* libcbor picks the shortest form: 1 costs one byte, not nine */
    uint8_t h[9];
    size_t n = value < 0 ? cbor_encode_negint((uint64_t)(-(value + 1)), h, sizeof h)
                         : cbor_encode_uint((uint64_t)value, h, sizeof h);
    return set_encoded(p, key, h, n, NULL, 0);
}

int mdg_params_set_double(mdg_params *p, const char *key, double value)
{
    uint8_t h[9];
    return set_encoded(p, key, h, cbor_encode_double(value, h, sizeof h), NULL, 0);
}

int mdg_params_set_bool(mdg_params *p, const char *key, bool value)
{
    uint8_t h[1];
    return set_encoded(p, key, h, cbor_encode_bool(value, h, sizeof h), NULL, 0);
}

int mdg_params_set_null(mdg_params *p, const char *key)
{
    uint8_t h[1];
    return set_encoded(p, key, h, cbor_encode_null(h, sizeof h), NULL, 0);
}

int mdg_params_set_item(mdg_params *p, const char *key, cbor_item_t *item)
{
    if (!p || !key || !item) {
        if (item)
            cbor_decref(&item);
        return item || !p || !key ? MDG_EINVAL : MDG_ENOMEM; /* a NULL item is a failed cbor_build_* */
    }
    unsigned char *data = NULL;
    size_t cap = 0, n = cbor_serialize_alloc(item, &data, &cap);
    cbor_decref(&item);
    int rc = n ? 0 : mdg_fail(MDG_ENOMEM, "cannot encode param '%s'", key);
    /* what no receiver would take is refused here, where it is made, with
     * the reason (text that is not UTF-8, indefinite strings, too deep) */
    if (rc == 0 && mdg_cbor_check(data, n) != 0) {
        char why[200];
        snprintf(why, sizeof why, "%s", mdg_last_error()); /* mdg_fail writes where it reads */
        rc = mdg_fail(MDG_EINVAL, "param '%s' cannot be sent: %s", key, why);
    }
    if (rc == 0)
        rc = set_encoded(p, key, data, n, NULL, 0);
    free(data);
    return rc;
}

/* ---------------------------------------------------------- wire form */

size_t mdg_params_encoded_size(const mdg_params *p)
{
    uint8_t h[9];
    size_t n = mdg_params_count(p);
    return cbor_encode_map_start(n, h, sizeof h) + (p ? p->len : 0);
}

size_t mdg_params_write(const mdg_params *p, uint8_t *buf, size_t cap)
{
    size_t n = cbor_encode_map_start(mdg_params_count(p), buf, cap), len = p ? p->len : 0;
    if (!n || cap - n < len)
        return 0;
    if (len)
        memcpy(buf + n, p->buf, len);
    return n + len;
}

int mdg_params_encode(const mdg_params *p, zmq_msg_t *out)
{
    size_t size = mdg_params_encoded_size(p);
    if (zmq_msg_init_size(out, size) != 0)
        return mdg_fail(MDG_ENOMEM, "cannot encode params");
    mdg_params_write(p, zmq_msg_data(out), size);
    return 0;
}

int mdg_params_encode_at(const mdg_params *p, uint8_t *buf, size_t cap, zmq_msg_t *out)
{
    size_t size = mdg_params_encoded_size(p);
    if (size > cap)
        return mdg_params_encode(p, out);
    mdg_params_write(p, buf, size);
    zmq_msg_init_data(out, buf, size, NULL, NULL); /* owns nothing: cannot fail */
    return 0;
}

/* ------------------------------------------------------------ decoding */

/* The walk marks where each key and value starts; they become the index
 * (offsets still counted from the map's first byte). */
static void mark(void *arg, size_t off)
{
    mdg_params *p = arg;
    if (p->n == SIZE_MAX) /* out of memory already */
        return;
    if (!grow((void **)&p->at, p->small_at, &p->at_cap, p->n + 2, sizeof *p->at)) {
        p->n = SIZE_MAX;
        return;
    }
    p->at[p->n++] = (uint32_t)off;
}

/* Text keys in order of length, then bytes, for the duplicate check. */
typedef struct key_span {
    const uint8_t *data;
    size_t len;
} key_span;

static int span_cmp(const void *a, const void *b)
{
    const key_span *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->len ? memcmp(x->data, y->data, x->len) : 0;
}

/* A key may appear once: with duplicates, our getters see the first value
 * while another decoder (or a forwarded copy) may keep the last, so a
 * sender could slip a forged "user" past the broker's stamp. */
static int duplicate_key(key_span k)
{
    char name[65]; /* printable bytes only: it is logged */
    size_t j;
    for (j = 0; j < k.len && j < sizeof name - 1; j++)
        name[j] = k.data[j] >= 0x20 && k.data[j] < 0x7f ? (char)k.data[j] : '?';
    name[j] = '\0';
    return mdg_fail(MDG_EPROTO, "duplicate params key '%s'", name);
}

/* Keys are text and distinct: pairwise for the usual few, sorted (O(n log
 * n)) for maps with many keys. */
static int check_keys(const mdg_params *p)
{
    key_span small[INLINE_PAIRS], *keys = p->n <= INLINE_PAIRS ? small : malloc(p->n * sizeof *keys);
    if (!keys)
        return mdg_fail(MDG_ENOMEM, "out of memory decoding params");
    int rc = 0;
    for (size_t k = 0; k < p->n && !rc; k++) {
        head h = item_head(p, 2 * k);
        if (h.kind != MDG_CBOR_TEXT)
            rc = mdg_fail(MDG_EPROTO, "params keys must be text strings");
        keys[k] = (key_span){h.data, h.len};
    }
    if (!rc && p->n <= INLINE_PAIRS) {
        for (size_t i = 1; i < p->n && !rc; i++)
            for (size_t j = 0; j < i && !rc; j++)
                if (span_cmp(&keys[i], &keys[j]) == 0)
                    rc = duplicate_key(keys[i]);
    } else if (!rc) {
        qsort(keys, p->n, sizeof *keys, span_cmp);
        for (size_t i = 1; i < p->n && !rc; i++)
            if (span_cmp(&keys[i - 1], &keys[i]) == 0)
                rc = duplicate_key(keys[i]);
    }
    if (keys != small)
        free(keys);
    return rc;
}

/* Params from buf, walked by w, whose marks are in p->at (p->n of them):
 * the checks a map must pass, and the pairs copied in. */
static int build(mdg_params *p, const void *buf, size_t len, const mdg_cbor_walk *w, bool check, mdg_params **out)
{
    int rc;
    size_t marks = p->n;
    p->n = 0;
    if (w->used != len) {
        rc = mdg_fail(MDG_EPROTO, "trailing bytes after CBOR item");
        goto fail;
    }
    if (marks == SIZE_MAX) {
        rc = mdg_fail(MDG_ENOMEM, "out of memory decoding params");
        goto fail;
    }
    if ((((const uint8_t *)buf)[0] >> 5) != 5) { /* CBOR major type 5: a map */
        rc = mdg_fail(MDG_EPROTO, "params must be a map");
        goto fail;
    }
    if (marks % 2) { /* an indefinite map with a key and no value */
        rc = mdg_fail(MDG_EPROTO, "params are not valid CBOR (a key without a value)");
        goto fail;
    }
    /* the pairs: after the map's head, before an indefinite map's break */
    size_t end = len - (w->indefinite ? 1 : 0), first = marks ? p->at[0] : end;
    if (!reserve(p, end - first, marks / 2)) {
        rc = mdg_fail(MDG_ENOMEM, "out of memory decoding params");
        goto fail;
    }
    memcpy(p->buf, (const uint8_t *)buf + first, end - first);
    for (size_t i = 0; i < marks; i++)
        p->at[i] -= (uint32_t)first;
    p->n = marks / 2;
    p->len = end - first;
    p->at[marks] = (uint32_t)p->len;
    p->views.halves = w->halves;
    if (check && (rc = check_keys(p)) != 0)
        goto fail;
    *out = p;
    return 0;
fail:
    p->n = 0;
    mdg_params_destroy(&p);
    return rc;
}

static int decode(const void *buf, size_t len, bool check, mdg_params **out)
{
    *out = NULL;
    mdg_params *p = mdg_params_new();
    if (!p)
        return mdg_fail(MDG_ENOMEM, "out of memory decoding params");
    mdg_cbor_walk w = {.mark = mark, .arg = p};
    int rc = mdg_cbor_walk_item(buf, len, &w);
    if (rc) {
        p->n = 0;
        mdg_params_destroy(&p);
        return rc;
    }
    return build(p, buf, len, &w, check, out);
}

int mdg_params_decode_walked(const void *buf, size_t len, const uint32_t *marks, size_t nmarks, bool halves,
                             bool indefinite, mdg_params **out)
{
    *out = NULL;
    mdg_params *p = mdg_params_new();
    if (!p)
        return mdg_fail(MDG_ENOMEM, "out of memory decoding params");
    if (!grow((void **)&p->at, p->small_at, &p->at_cap, nmarks + 1, sizeof *p->at)) {
        mdg_params_destroy(&p);
        return mdg_fail(MDG_ENOMEM, "out of memory decoding params");
    }
    memcpy(p->at, marks, nmarks * sizeof *marks);
    p->n = nmarks;
    mdg_cbor_walk w = {.halves = halves, .indefinite = indefinite, .used = len};
    return build(p, buf, len, &w, true, out);
}

int mdg_params_decode(const void *buf, size_t len, mdg_params **out)
{
    return decode(buf, len, true, out);
}

mdg_params *mdg_params_forge(cbor_item_t *map)
{
    unsigned char *data = NULL;
    size_t cap = 0, n = map ? cbor_serialize_alloc(map, &data, &cap) : 0;
    mdg_params *p = NULL;
    if (n)
        decode(data, n, false, &p);
    free(data);
    if (map)
        cbor_decref(&map);
    return p;
}
