/* params.c - params maps: a CBOR map with text keys, typed access.
 *
 * The map is a libcbor definite map that grows by doubling, so it encodes
 * with a definite length. Strings handed out by mdg_params_get_str are
 * NUL-terminated copies cached in the params (CBOR strings carry no NUL),
 * so the caller never frees them. */
#include "internal.h"
#include "params.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

typedef struct str_cache {
    struct str_cache *next;
    const cbor_item_t *item; /* the string item this copy was made from */
    char text[];
} str_cache;

struct mdg_params {
    cbor_item_t *map;
    str_cache *strs;
};

mdg_params *mdg_params_wrap(cbor_item_t *map)
{
    mdg_params *p = calloc(1, sizeof *p);
    if (!p) {
        cbor_decref(&map);
        return NULL;
    }
    p->map = map;
    return p;
}

mdg_params *mdg_params_new(void)
{
    cbor_item_t *map = cbor_new_definite_map(8);
    return map ? mdg_params_wrap(map) : NULL;
}

static void drop_cache(mdg_params *p)
{
    while (p->strs) {
        str_cache *n = p->strs->next;
        free(p->strs);
        p->strs = n;
    }
}

void mdg_params_destroy(mdg_params **pp)
{
    if (!pp || !*pp)
        return;
    drop_cache(*pp);
    cbor_decref(&(*pp)->map);
    free(*pp);
    *pp = NULL;
}

cbor_item_t *mdg_params_map(const mdg_params *p)
{
    return p ? p->map : NULL;
}

static bool key_is(const cbor_item_t *k, const char *key, size_t klen)
{
    return cbor_isa_string(k) && cbor_string_is_definite(k) && cbor_string_length(k) == klen &&
           memcmp(cbor_string_handle(k), key, klen) == 0;
}

static struct cbor_pair *find_pair(const mdg_params *p, const char *key)
{
    if (!p || !key)
        return NULL;
    size_t klen = strlen(key), n = cbor_map_size(p->map);
    struct cbor_pair *pairs = cbor_map_handle(p->map);
    for (size_t i = 0; i < n; i++)
        if (key_is(pairs[i].key, key, klen))
            return &pairs[i];
    return NULL;
}

cbor_item_t *mdg_params_get(const mdg_params *p, const char *key)
{
    struct cbor_pair *pr = find_pair(p, key);
    return pr ? pr->value : NULL;
}

bool mdg_params_has(const mdg_params *p, const char *key)
{
    return find_pair(p, key) != NULL;
}

size_t mdg_params_count(const mdg_params *p)
{
    return p ? cbor_map_size(p->map) : 0;
}

/* Rebuild the map without the pairs for which keep() is false, with room
 * for `extra` more pairs (definite maps have a fixed capacity). */
static int rebuild(mdg_params *p, const char *drop_key, size_t extra)
{
    size_t n = cbor_map_size(p->map), klen = drop_key ? strlen(drop_key) : 0;
    cbor_item_t *nm = cbor_new_definite_map(n * 2 + extra);
    if (!nm)
        return MDG_ENOMEM;
    struct cbor_pair *pairs = cbor_map_handle(p->map);
    for (size_t i = 0; i < n; i++) {
        if (drop_key && key_is(pairs[i].key, drop_key, klen))
            continue;
        cbor_map_add(nm, pairs[i]); /* increfs key and value */
    }
    cbor_decref(&p->map);
    p->map = nm;
    return 0;
}

int mdg_params_set_item(mdg_params *p, const char *key, cbor_item_t *item)
{
    int rc = 0;
    if (!p || !key || !item) {
        rc = item ? MDG_EINVAL : MDG_ENOMEM; /* a NULL item is a failed cbor_build_* */
        goto out;
    }
    struct cbor_pair *pr = find_pair(p, key);
    if (pr) { /* replace in place: swap the value's reference */
        drop_cache(p);
        cbor_decref(&pr->value);
        pr->value = cbor_incref(item);
        goto out;
    }
    if (cbor_map_size(p->map) == cbor_map_allocated(p->map) && (rc = rebuild(p, NULL, 8)) != 0)
        goto out;
    cbor_item_t *k = cbor_build_stringn(key, strlen(key));
    if (!k) {
        rc = MDG_ENOMEM;
        goto out;
    }
    if (!cbor_map_add(p->map, (struct cbor_pair){.key = k, .value = item}))
        rc = MDG_ENOMEM;
    cbor_decref(&k);
out:
    if (item)
        cbor_decref(&item);
    return rc;
}

int mdg_params_remove(mdg_params *p, const char *key)
{
    if (!find_pair(p, key))
        return MDG_ENOTFOUND;
    drop_cache(p);
    return rebuild(p, key, 0);
}

int mdg_params_set_str(mdg_params *p, const char *key, const char *value)
{
    if (!value)
        return MDG_EINVAL;
    return mdg_params_set_item(p, key, cbor_build_stringn(value, strlen(value)));
}

int mdg_params_set_bytes(mdg_params *p, const char *key, const void *data, size_t len)
{
    if (!data && len)
        return MDG_EINVAL;
    return mdg_params_set_item(p, key, cbor_build_bytestring(data ? data : "", len));
}

cbor_item_t *mdg_cbor_int(int64_t v)
{
    /* libcbor writes an integer in the width of its item: pick the
     * smallest, so that 1 costs one byte on the wire and not nine */
    bool neg = v < 0;
    uint64_t u = neg ? (uint64_t)(-(v + 1)) : (uint64_t)v;
    if (u <= UINT8_MAX)
        return neg ? cbor_build_negint8((uint8_t)u) : cbor_build_uint8((uint8_t)u);
    if (u <= UINT16_MAX)
        return neg ? cbor_build_negint16((uint16_t)u) : cbor_build_uint16((uint16_t)u);
    if (u <= UINT32_MAX)
        return neg ? cbor_build_negint32((uint32_t)u) : cbor_build_uint32((uint32_t)u);
    return neg ? cbor_build_negint64(u) : cbor_build_uint64(u);
}

int mdg_params_set_int(mdg_params *p, const char *key, int64_t value)
{
    return mdg_params_set_item(p, key, mdg_cbor_int(value));
}

int mdg_params_set_double(mdg_params *p, const char *key, double value)
{
    return mdg_params_set_item(p, key, cbor_build_float8(value));
}

int mdg_params_set_bool(mdg_params *p, const char *key, bool value)
{
    return mdg_params_set_item(p, key, cbor_build_bool(value));
}

int mdg_params_set_null(mdg_params *p, const char *key)
{
    return mdg_params_set_item(p, key, cbor_new_null());
}

/* Typed getters share the lookup and the error text. */
static int lookup(const mdg_params *p, const char *key, bool (*isa)(const cbor_item_t *),
                  const char *want, cbor_item_t **out)
{
    cbor_item_t *it = mdg_params_get(p, key);
    if (!it)
        return mdg_fail(MDG_ENOTFOUND, "no param '%s'", key ? key : "(null)");
    if (!isa(it))
        return mdg_fail(MDG_ETYPE, "param '%s' is not %s", key, want);
    *out = it;
    return 0;
}

static bool isa_def_string(const cbor_item_t *it)
{
    return cbor_isa_string(it) && cbor_string_is_definite(it);
}

static bool isa_def_bytes(const cbor_item_t *it)
{
    return cbor_isa_bytestring(it) && cbor_bytestring_is_definite(it);
}

static bool isa_int(const cbor_item_t *it)
{
    return cbor_isa_uint(it) || cbor_isa_negint(it);
}

static bool isa_double(const cbor_item_t *it)
{
    return cbor_isa_float_ctrl(it) && cbor_float_get_width(it) != CBOR_FLOAT_0;
}

static bool isa_bool(const cbor_item_t *it)
{
    /* cbor_is_bool asserts on floats: check the width first */
    return cbor_isa_float_ctrl(it) && cbor_float_get_width(it) == CBOR_FLOAT_0 && cbor_is_bool(it);
}

int mdg_params_get_str(const mdg_params *cp, const char *key, const char **value)
{
    mdg_params *p = (mdg_params *)cp; /* the cache is not part of the value */
    cbor_item_t *it = NULL;
    int rc = lookup(p, key, isa_def_string, "a text string", &it);
    if (rc)
        return rc;
    for (str_cache *c = p->strs; c; c = c->next)
        if (c->item == it) {
            *value = c->text;
            return 0;
        }
    size_t n = cbor_string_length(it);
    str_cache *c = malloc(sizeof *c + n + 1);
    if (!c)
        return MDG_ENOMEM;
    memcpy(c->text, cbor_string_handle(it), n);
    c->text[n] = '\0';
    c->item = it;
    c->next = p->strs;
    p->strs = c;
    *value = c->text;
    return 0;
}

int mdg_params_get_bytes(const mdg_params *p, const char *key, const uint8_t **data,
                         size_t *len)
{
    cbor_item_t *it = NULL;
    int rc = lookup(p, key, isa_def_bytes, "a byte string", &it);
    if (rc)
        return rc;
    *data = cbor_bytestring_handle(it);
    *len = cbor_bytestring_length(it);
    return 0;
}

int mdg_params_get_int(const mdg_params *p, const char *key, int64_t *value)
{
    cbor_item_t *it = NULL;
    int rc = lookup(p, key, isa_int, "an integer", &it);
    if (rc)
        return rc;
    uint64_t v = cbor_get_int(it);
    if (v > INT64_MAX)
        return mdg_fail(MDG_ETYPE, "param '%s' does not fit in int64", key);
    *value = cbor_isa_uint(it) ? (int64_t)v : -(int64_t)v - 1;
    return 0;
}

int mdg_params_get_double(const mdg_params *p, const char *key, double *value)
{
    cbor_item_t *it = NULL;
    int rc = lookup(p, key, isa_double, "a float", &it);
    if (rc)
        return rc;
    *value = cbor_float_get_float(it);
    return 0;
}

int mdg_params_get_bool(const mdg_params *p, const char *key, bool *value)
{
    cbor_item_t *it = NULL;
    int rc = lookup(p, key, isa_bool, "a boolean", &it);
    if (rc)
        return rc;
    *value = cbor_get_bool(it);
    return 0;
}

/* ------------------------------------------------------------ text output */

typedef struct buf {
    char *s;
    size_t len, cap;
    bool oom;
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t nc = (b->cap ? b->cap * 2 : 64);
        while (nc < b->len + n + 1)
            nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) {
            b->oom = true;
            return;
        }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void puts_(buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static void put_quoted(buf *b, const unsigned char *s, size_t n)
{
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        char esc[8];
        if (s[i] == '"' || s[i] == '\\') {
            esc[0] = '\\';
            esc[1] = (char)s[i];
            put(b, esc, 2);
        } else if (s[i] < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", s[i]);
            puts_(b, esc);
        } else {
            put(b, (const char *)&s[i], 1);
        }
    }
    put(b, "\"", 1);
}

static void item_text(buf *b, const cbor_item_t *it, int depth)
{
    char num[64];
    if (depth > 64) {
        puts_(b, "...");
        return;
    }
    switch (cbor_typeof(it)) {
    case CBOR_TYPE_UINT:
        snprintf(num, sizeof num, "%llu", (unsigned long long)cbor_get_int(it));
        puts_(b, num);
        break;
    case CBOR_TYPE_NEGINT:
        /* the value is -1 - n; n + 1 overflows for n = 2^64 - 1 */
        if (cbor_get_int(it) == UINT64_MAX)
            snprintf(num, sizeof num, "-18446744073709551616");
        else
            snprintf(num, sizeof num, "-%llu", (unsigned long long)cbor_get_int(it) + 1ULL);
        puts_(b, num);
        break;
    case CBOR_TYPE_BYTESTRING:
        if (!cbor_bytestring_is_definite(it)) {
            puts_(b, "\"b64:?\"");
            break;
        } else {
            size_t n = cbor_bytestring_length(it), cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
            char *enc = malloc(cap);
            if (!enc) {
                b->oom = true;
                break;
            }
            sodium_bin2base64(enc, cap, cbor_bytestring_handle(it), n, sodium_base64_VARIANT_ORIGINAL);
            puts_(b, "\"b64:");
            puts_(b, enc);
            puts_(b, "\"");
            free(enc);
        }
        break;
    case CBOR_TYPE_STRING:
        if (cbor_string_is_definite(it))
            put_quoted(b, cbor_string_handle(it), cbor_string_length(it));
        else
            puts_(b, "\"?\"");
        break;
    case CBOR_TYPE_ARRAY: {
        size_t n = cbor_array_size(it);
        cbor_item_t **h = cbor_array_handle(it);
        puts_(b, "[");
        for (size_t i = 0; i < n; i++) {
            if (i)
                puts_(b, ", ");
            item_text(b, h[i], depth + 1);
        }
        puts_(b, "]");
        break;
    }
    case CBOR_TYPE_MAP: {
        size_t n = cbor_map_size(it);
        struct cbor_pair *h = cbor_map_handle(it);
        puts_(b, "{");
        for (size_t i = 0; i < n; i++) {
            if (i)
                puts_(b, ", ");
            item_text(b, h[i].key, depth + 1);
            puts_(b, ": ");
            item_text(b, h[i].value, depth + 1);
        }
        puts_(b, "}");
        break;
    }
    case CBOR_TYPE_TAG: {
        cbor_item_t *tagged = cbor_tag_item(it); /* libcbor increfs it */
        item_text(b, tagged, depth + 1);
        cbor_decref(&tagged);
        break;
    }
    case CBOR_TYPE_FLOAT_CTRL:
        if (cbor_float_get_width(it) != CBOR_FLOAT_0) {
            snprintf(num, sizeof num, "%.17g", cbor_float_get_float(it));
            /* keep floats recognisable as floats: 2 -> 2.0 */
            if (!strpbrk(num, ".eEn"))
                strcat(num, ".0");
            puts_(b, num);
        } else if (cbor_is_bool(it)) {
            puts_(b, cbor_get_bool(it) ? "true" : "false");
        } else {
            puts_(b, "null");
        }
        break;
    }
}

char *mdg_item_to_text(const cbor_item_t *item)
{
    buf b = {0};
    if (item)
        item_text(&b, item, 0);
    else
        puts_(&b, "null");
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

char *mdg_params_to_text(const mdg_params *p)
{
    return mdg_item_to_text(p ? p->map : NULL);
}
