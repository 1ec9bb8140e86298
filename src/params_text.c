/* params_text.c - params and CBOR items as JSON-like text, for printing
 * and logs (byte strings as "b64:...", floats always with a point). */
#include "internal.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

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
    return mdg_item_to_text(p ? mdg_params_map(p) : NULL);
}
