/* json_params.c - see json_params.h. */
#include "json_params.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

/* ------------------------------------------------------------ CBOR -> JSON */

/* "b64:..." for n bytes. */
static json_t *bytes_to_json(const unsigned char *b, size_t n)
{
    size_t len = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    char *text = malloc(4 + len);
    if (!text)
        return NULL;
    memcpy(text, "b64:", 4);
    sodium_bin2base64(text + 4, len, b, n, sodium_base64_VARIANT_ORIGINAL);
    json_t *v = json_string(text);
    free(text);
    return v;
}

static json_t *cbor_to_json(const cbor_item_t *it, int depth);

/* A map key as a JSON object key (malloc'd text). */
static char *key_text(const cbor_item_t *k, int depth)
{
    if (cbor_isa_string(k)) {
        json_t *s = cbor_to_json(k, depth);
        char *t = s ? strdup(json_string_value(s)) : NULL;
        json_decref(s);
        return t;
    }
    json_t *v = cbor_to_json(k, depth);
    if (!v)
        return NULL;
    char *t = json_is_string(v) ? strdup(json_string_value(v))
                                : json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    json_decref(v);
    return t;
}

/* Nesting past this prints null (what the wire decoder admits is smaller). */
#define MAX_DEPTH 128

static json_t *cbor_to_json(const cbor_item_t *it, int depth)
{
    if (!it) /* a tree could not be made: out of memory */
        return NULL;
    if (depth > MAX_DEPTH)
        return json_null();
    switch (cbor_typeof(it)) {
    case CBOR_TYPE_UINT: {
        uint64_t u = cbor_get_int(it);
        return u <= INT64_MAX ? json_integer((json_int_t)u) : json_real((double)u);
    }
    case CBOR_TYPE_NEGINT: {
        uint64_t u = cbor_get_int(it); /* the value is -1 - u */
        return u <= INT64_MAX ? json_integer(-1 - (json_int_t)u) : json_real(-1.0 - (double)u);
    }
    /* Params hold definite strings and UTF-8 text only: the library's
     * checks refuse the rest, from the network and from the setters. */
    case CBOR_TYPE_BYTESTRING:
        return bytes_to_json(cbor_bytestring_handle(it), cbor_bytestring_length(it));
    case CBOR_TYPE_STRING:
        return json_stringn((const char *)cbor_string_handle(it), cbor_string_length(it));
    case CBOR_TYPE_ARRAY: {
        json_t *a = json_array();
        cbor_item_t **items = cbor_array_handle(it);
        for (size_t i = 0; a && i < cbor_array_size(it); i++)
            if (json_array_append_new(a, cbor_to_json(items[i], depth + 1)) != 0) {
                json_decref(a);
                return NULL;
            }
        return a;
    }
    case CBOR_TYPE_MAP: {
        json_t *o = json_object();
        struct cbor_pair *kv = cbor_map_handle(it);
        for (size_t i = 0; o && i < cbor_map_size(it); i++) {
            char *k = key_text(kv[i].key, depth + 1);
            int rc = k ? json_object_set_new(o, k, cbor_to_json(kv[i].value, depth + 1)) : -1;
            free(k);
            if (rc != 0) {
                json_decref(o);
                return NULL;
            }
        }
        return o;
    }
    case CBOR_TYPE_TAG: return cbor_to_json(cbor_tag_item(it), depth + 1);
    case CBOR_TYPE_FLOAT_CTRL:
        if (cbor_float_ctrl_is_ctrl(it)) {
            if (cbor_is_bool(it))
                return json_boolean(cbor_get_bool(it));
            return json_null(); /* null, undefined, other simple values */
        } else {
            double d = cbor_float_get_float(it);
            return isfinite(d) ? json_real(d) : json_null();
        }
    }
    return json_null();
}

/* Do all the floats of v read back the same at precision digits? */
static bool reals_exact(const json_t *v, int precision)
{
    if (json_is_real(v)) {
        char buf[64];
        double d = json_real_value(v);
        snprintf(buf, sizeof buf, "%.*g", precision, d);
        return strtod(buf, NULL) == d;
    }
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            if (!reals_exact(json_array_get(v, i), precision))
                return false;
    } else if (json_is_object(v)) {
        const char *k;
        json_t *e;
        json_object_foreach((json_t *)v, k, e)
            if (!reals_exact(e, precision))
                return false;
    }
    return true;
}

json_t *json_params_value(const mdg_params *p)
{
    return cbor_to_json(mdg_params_map(p), 0);
}

char *json_params_text(const mdg_params *p)
{
    json_t *v = json_params_value(p);
    if (!v)
        return NULL;
    /* 0.1 prints as 0.1, yet every float reads back exactly */
    int precision = 15;
    while (precision < 17 && !reals_exact(v, precision))
        precision++;
    char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_REAL_PRECISION(precision));
    json_decref(v);
    return text;
}

/* ------------------------------------------------------------ JSON -> CBOR */

static cbor_item_t *int_to_cbor(json_int_t i)
{
    uint64_t u = i >= 0 ? (uint64_t)i : (uint64_t)(-1 - i);
    cbor_item_t *c = u <= UINT8_MAX    ? cbor_build_uint8((uint8_t)u)
                     : u <= UINT16_MAX ? cbor_build_uint16((uint16_t)u)
                     : u <= UINT32_MAX ? cbor_build_uint32((uint32_t)u)
                                       : cbor_build_uint64(u);
    if (c && i < 0)
        cbor_mark_negint(c);
    return c;
}

cbor_item_t *json_params_to_cbor(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        cbor_item_t *m = cbor_new_definite_map(json_object_size(v));
        const char *k;
        json_t *e;
        json_object_foreach((json_t *)v, k, e)
        {
            cbor_item_t *key = m ? cbor_build_string(k) : NULL, *val = key ? json_params_to_cbor(e) : NULL;
            bool ok = val && cbor_map_add(m, (struct cbor_pair){.key = key, .value = val});
            if (key)
                cbor_decref(&key);
            if (val)
                cbor_decref(&val);
            if (!ok) {
                if (m)
                    cbor_decref(&m);
                return NULL;
            }
        }
        return m;
    }
    case JSON_ARRAY: {
        cbor_item_t *a = cbor_new_definite_array(json_array_size(v));
        for (size_t i = 0; a && i < json_array_size(v); i++) {
            cbor_item_t *e = json_params_to_cbor(json_array_get(v, i));
            bool ok = e && cbor_array_push(a, e);
            if (e)
                cbor_decref(&e);
            if (!ok)
                cbor_decref(&a);
        }
        return a;
    }
    case JSON_STRING: {
        cbor_item_t *s = cbor_new_definite_string();
        size_t n = json_string_length(v);
        unsigned char *copy = malloc(n ? n : 1);
        if (!s || !copy) {
            free(copy);
            if (s)
                cbor_decref(&s);
            return NULL;
        }
        memcpy(copy, json_string_value(v), n);
        cbor_string_set_handle(s, copy, n); /* s owns copy now */
        return s;
    }
    case JSON_INTEGER: return int_to_cbor(json_integer_value(v));
    case JSON_REAL: return cbor_build_float8(json_real_value(v));
    case JSON_TRUE: return cbor_build_bool(true);
    case JSON_FALSE: return cbor_build_bool(false);
    case JSON_NULL: return cbor_new_null();
    }
    return NULL;
}
