/* params_get.c - reading params: the typed getters, straight from the
 * encoded pairs, and the libcbor item trees made only when asked for
 * (mdg_params_get, mdg_params_map), kept as views of the params. */
#include "internal.h"
#include "params.h"
#include "params_view.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ views */

enum view_kind { VIEW_VALUE, VIEW_MAP, VIEW_TEXT, VIEW_BYTES };

struct mdg_params_view {
    mdg_params_view *next;
    unsigned version;
    enum view_kind kind;
    size_t pair;
    cbor_item_t *item; /* VIEW_VALUE, VIEW_MAP */
    void *bytes;       /* VIEW_BYTES: pairs as they were when lent */
    char text[];       /* VIEW_TEXT */
};

void mdg_params_views_init(mdg_params_views *v)
{
    v->list = NULL;
    v->version = 0;
    v->halves = v->lent = false;
}

void mdg_params_views_free(mdg_params_views *v)
{
    while (v->list) {
        mdg_params_view *n = v->list->next;
        if (v->list->item)
            cbor_decref(&v->list->item);
        free(v->list->bytes);
        free(v->list);
        v->list = n;
    }
}

void mdg_params_views_changed(mdg_params_views *v)
{
    v->version++;
}

bool mdg_params_views_keep(mdg_params_views *v, void *buf)
{
    mdg_params_view *w = calloc(1, sizeof *w);
    if (!w)
        return false;
    w->kind = VIEW_BYTES;
    w->bytes = buf;
    w->next = v->list;
    v->list = w;
    return true;
}

static mdg_params_view *view_find(mdg_params_views *v, enum view_kind kind, size_t pair)
{
    for (mdg_params_view *w = v->list; w; w = w->next)
        if (w->version == v->version && w->kind == kind && w->pair == pair)
            return w;
    return NULL;
}

static mdg_params_view *view_add(mdg_params_views *v, enum view_kind kind, size_t pair, size_t text)
{
    mdg_params_view *w = calloc(1, sizeof *w + text);
    if (!w)
        return NULL;
    w->version = v->version;
    w->kind = kind;
    w->pair = pair;
    w->next = v->list;
    v->list = w;
    return w;
}

/* A tree of encoded bytes that passed the params' checks. */
static cbor_item_t *load(const uint8_t *enc, size_t len, bool halves)
{
    struct cbor_load_result res;
    cbor_item_t *it = cbor_load(enc, len, &res);
    if (it && halves && mdg_cbor_widen_halves(&it) != 0)
        cbor_decref(&it);
    return it;
}

cbor_item_t *mdg_params_get(const mdg_params *p, const char *key)
{
    mdg_cbor_value v;
    if (!p || !key || mdg_params_lookup(p, key, &v) != 0)
        return NULL;
    mdg_params_views *vs = mdg_params_views_of(p);
    mdg_params_view *w = view_find(vs, VIEW_VALUE, v.pair);
    if (w)
        return w->item;
    cbor_item_t *it = load(v.enc, v.enc_len, vs->halves);
    if (!it || !(w = view_add(vs, VIEW_VALUE, v.pair, 0))) {
        if (it)
            cbor_decref(&it);
        return NULL;
    }
    return w->item = it;
}

cbor_item_t *mdg_params_map(const mdg_params *p)
{
    if (!p)
        return NULL;
    mdg_params_views *vs = mdg_params_views_of(p);
    mdg_params_view *w = view_find(vs, VIEW_MAP, 0);
    if (w)
        return w->item;
    size_t size = mdg_params_encoded_size(p);
    uint8_t stack[512], *enc = size <= sizeof stack ? stack : malloc(size);
    if (!enc)
        return NULL;
    mdg_params_write(p, enc, size);
    cbor_item_t *it = load(enc, size, vs->halves);
    if (enc != stack)
        free(enc);
    if (!it || !(w = view_add(vs, VIEW_MAP, 0, 0))) {
        if (it)
            cbor_decref(&it);
        return NULL;
    }
    return w->item = it;
}

/* ---------------------------------------------------------------- getters */

static int lookup(const mdg_params *p, const char *key, mdg_cbor_kind want, const char *what,
                  mdg_cbor_value *v)
{
    int rc = mdg_params_lookup(p, key, v);
    if (rc)
        return rc;
    bool ok = v->kind == want || (want == MDG_CBOR_UINT && v->kind == MDG_CBOR_NEGINT);
    return ok ? 0 : mdg_fail(MDG_ETYPE, "param '%s' is not %s", key, what);
}

int mdg_params_get_str(const mdg_params *p, const char *key, const char **value)
{
    mdg_cbor_value v;
    int rc = lookup(p, key, MDG_CBOR_TEXT, "a text string", &v);
    if (rc)
        return rc;
    mdg_params_views *vs = mdg_params_views_of(p);
    mdg_params_view *w = view_find(vs, VIEW_TEXT, v.pair);
    if (!w) {
        if (!(w = view_add(vs, VIEW_TEXT, v.pair, v.len + 1)))
            return mdg_fail(MDG_ENOMEM, "out of memory reading param '%s'", key);
        memcpy(w->text, v.data, v.len); /* CBOR strings carry no NUL */
        w->text[v.len] = '\0';
    }
    *value = w->text;
    return 0;
}

int mdg_params_get_bytes(const mdg_params *p, const char *key, const uint8_t **data, size_t *len)
{
    mdg_cbor_value v;
    int rc = lookup(p, key, MDG_CBOR_BYTES, "a byte string", &v);
    if (rc)
        return rc;
    *data = v.data;
    *len = v.len;
    mdg_params_views_of(p)->lent = true;
    return 0;
}

int mdg_params_get_int(const mdg_params *p, const char *key, int64_t *value)
{
    mdg_cbor_value v;
    int rc = lookup(p, key, MDG_CBOR_UINT, "an integer", &v);
    if (rc)
        return rc;
    if (v.u > INT64_MAX)
        return mdg_fail(MDG_ETYPE, "param '%s' does not fit in int64", key);
    *value = v.kind == MDG_CBOR_UINT ? (int64_t)v.u : -(int64_t)v.u - 1;
    return 0;
}

int mdg_params_get_double(const mdg_params *p, const char *key, double *value)
{
    mdg_cbor_value v;
    int rc = lookup(p, key, MDG_CBOR_FLOAT, "a float", &v);
    if (rc)
        return rc;
    *value = v.d;
    return 0;
}

int mdg_params_get_bool(const mdg_params *p, const char *key, bool *value)
{
    mdg_cbor_value v;
    int rc = lookup(p, key, MDG_CBOR_BOOL, "a boolean", &v);
    if (rc)
        return rc;
    *value = v.b;
    return 0;
}

/* ------------------------------------------------------------ half floats */

/* libcbor 0.8 re-encodes half floats lossily (subnormals lose digits, a
 * NaN loses its sign), so a tree made from params and encoded again (a 1.x
 * frame, say) would change them. Halves become singles, which hold every
 * half exactly and re-encode bit for bit. Depth is bounded by the check
 * the params passed. */
int mdg_cbor_widen_halves(cbor_item_t **slot)
{
    cbor_item_t *it = *slot;
    switch (cbor_typeof(it)) {
    case CBOR_TYPE_FLOAT_CTRL:
        if (cbor_float_get_width(it) == CBOR_FLOAT_16) {
            cbor_item_t *w = cbor_build_float4(cbor_float_get_float2(it));
            if (!w)
                return MDG_ENOMEM;
            cbor_decref(slot);
            *slot = w;
        }
        return 0;
    case CBOR_TYPE_ARRAY: {
        cbor_item_t **h = cbor_array_handle(it);
        for (size_t i = 0; i < cbor_array_size(it); i++)
            if (mdg_cbor_widen_halves(&h[i]))
                return MDG_ENOMEM;
        return 0;
    }
    case CBOR_TYPE_MAP: {
        struct cbor_pair *h = cbor_map_handle(it);
        for (size_t i = 0; i < cbor_map_size(it); i++)
            if (mdg_cbor_widen_halves(&h[i].key) || mdg_cbor_widen_halves(&h[i].value))
                return MDG_ENOMEM;
        return 0;
    }
    case CBOR_TYPE_TAG: {
        cbor_item_t *inner = cbor_tag_item(it), *orig = inner; /* incref'd */
        int rc = mdg_cbor_widen_halves(&inner);
        if (!rc && inner != orig) {
            cbor_tag_set_item(it, inner); /* increfs inner, keeps orig's ref */
            cbor_decref(&orig);           /* the tag's old reference */
        }
        cbor_decref(&inner);
        return rc;
    }
    default:
        return 0;
    }
}
