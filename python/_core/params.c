/* params.c - Python values <-> CBOR params maps.
 *
 * None, bool, int (64-bit), float, str, bytes (and other bytes-like
 * objects), list/tuple and dict travel (an array comes back a list, or a
 * tuple as a map's key); anything else is a TypeError that
 * names the param. Public keys travel as 32-byte bytes, as the C peers
 * send them.
 */
#include "core.h"

#include <string.h>

#define MAX_DEPTH 64

static cbor_item_t *to_cbor(PyObject *o, const char *key, int depth);

static cbor_item_t *fail_type(PyObject *o, const char *key, const char *why)
{
    PyErr_Format(PyExc_TypeError, "params['%s']: %s %s", key, why, Py_TYPE(o)->tp_name);
    return NULL;
}

static cbor_item_t *int_to_cbor(PyObject *o, const char *key)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Format(PyExc_OverflowError, "params['%s']: integer out of the 64-bit range", key);
            return NULL;
        }
        return cbor_build_uint64(u);
    }
    if (overflow < 0) {
        PyErr_Format(PyExc_OverflowError, "params['%s']: integer out of the 64-bit range", key);
        return NULL;
    }
    if (v >= 0)
        return cbor_build_uint64((uint64_t)v);
    return cbor_build_negint64((uint64_t)(-(v + 1)));
}

static cbor_item_t *seq_to_cbor(PyObject *o, const char *key, int depth)
{
    PyObject *fast = PySequence_Fast(o, "a sequence");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    cbor_item_t *arr = cbor_new_definite_array((size_t)n);
    if (!arr) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        cbor_item_t *it = to_cbor(PySequence_Fast_GET_ITEM(fast, i), key, depth + 1);
        bool ok = it && cbor_array_push(arr, it);
        if (it)
            cbor_decref(&it); /* the array holds its own reference */
        if (!ok) {
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            cbor_decref(&arr);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    return arr;
}

static cbor_item_t *map_to_cbor(PyObject *o, const char *key, int depth)
{
    cbor_item_t *map = cbor_new_definite_map((size_t)PyDict_GET_SIZE(o));
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    if (!map) {
        PyErr_NoMemory();
        return NULL;
    }
    while (PyDict_Next(o, &pos, &k, &v)) {
        cbor_item_t *ck = to_cbor(k, key, depth + 1);
        cbor_item_t *cv = ck ? to_cbor(v, key, depth + 1) : NULL;
        bool ok = ck && cv && cbor_map_add(map, (struct cbor_pair){.key = ck, .value = cv});
        if (ck)
            cbor_decref(&ck);
        if (cv)
            cbor_decref(&cv);
        if (!ok) {
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            cbor_decref(&map);
            return NULL;
        }
    }
    return map;
}

static cbor_item_t *to_cbor(PyObject *o, const char *key, int depth)
{
    cbor_item_t *it = NULL;
    if (depth > MAX_DEPTH) {
        PyErr_Format(PyExc_ValueError, "params['%s']: nested deeper than %d levels", key, MAX_DEPTH);
        return NULL;
    }
    if (o == Py_None) {
        it = cbor_new_null();
    } else if (PyBool_Check(o)) {
        it = cbor_build_bool(o == Py_True);
    } else if (PyLong_Check(o)) {
        return int_to_cbor(o, key);
    } else if (PyFloat_Check(o)) {
        it = cbor_build_float8(PyFloat_AS_DOUBLE(o));
    } else if (PyUnicode_Check(o)) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(o, &len);
        if (!s)
            return NULL;
        it = cbor_build_stringn(s, (size_t)len);
    } else if (PyBytes_Check(o)) {
        it = cbor_build_bytestring((const unsigned char *)PyBytes_AS_STRING(o),
                                   (size_t)PyBytes_GET_SIZE(o));
    } else if (PyDict_Check(o)) {
        return map_to_cbor(o, key, depth);
    } else if (PyList_Check(o) || PyTuple_Check(o)) {
        return seq_to_cbor(o, key, depth);
    } else if (PyObject_CheckBuffer(o)) {
        Py_buffer view;
        if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        it = cbor_build_bytestring(view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
    } else {
        return fail_type(o, key, "cannot send a value of type");
    }
    if (!it)
        PyErr_NoMemory();
    return it;
}

/* The usual values go straight into the params' encoded form with the
 * typed setters: no libcbor item made and encoded again. 1 with *rc set
 * when v was one of them, 0 for the rest (to_cbor), -1 with an exception. */
static int set_plain(mdg_params *p, const char *key, PyObject *v, int *rc)
{
    if (v == Py_None) {
        *rc = mdg_params_set_null(p, key);
    } else if (PyBool_Check(v)) {
        *rc = mdg_params_set_bool(p, key, v == Py_True);
    } else if (PyLong_Check(v)) {
        int overflow = 0;
        long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (n == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0; /* past int64: to_cbor's big integers */
        }
        *rc = mdg_params_set_int(p, key, (int64_t)n);
    } else if (PyFloat_Check(v)) {
        *rc = mdg_params_set_double(p, key, PyFloat_AS_DOUBLE(v));
    } else if (PyBytes_Check(v)) {
        *rc = mdg_params_set_bytes(p, key, PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v));
    } else if (PyUnicode_Check(v)) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(v, &len);
        if (!s)
            return -1;
        if (memchr(s, '\0', (size_t)len))
            return 0; /* a C string would end at the NUL */
        *rc = mdg_params_set_str(p, key, s);
    } else {
        return 0;
    }
    return 1;
}

mdg_params *mdgpy_params_from_dict(PyObject *dict, const char *what)
{
    mdg_params *p = mdg_params_new();
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    if (!p)
        return (mdg_params *)PyErr_NoMemory();
    if (!dict || dict == Py_None)
        return p;
    if (!PyDict_Check(dict)) {
        PyErr_Format(PyExc_TypeError, "%s must be a dict, not %s", what, Py_TYPE(dict)->tp_name);
        mdg_params_destroy(&p);
        return NULL;
    }
    while (PyDict_Next(dict, &pos, &k, &v)) {
        if (!PyUnicode_Check(k)) {
            PyErr_Format(PyExc_TypeError, "%s: keys must be str, not %s", what, Py_TYPE(k)->tp_name);
            mdg_params_destroy(&p);
            return NULL;
        }
        const char *key = PyUnicode_AsUTF8(k);
        int rc = MDG_ENOMEM, plain = key ? set_plain(p, key, v, &rc) : -1;
        if (plain == 0) {
            cbor_item_t *it = to_cbor(v, key, 0);
            rc = it ? mdg_params_set_item(p, key, it) : MDG_ENOMEM; /* the item is taken */
        }
        if (rc != 0) {
            if (!PyErr_Occurred())
                mdgpy_raise(rc, what, NULL);
            mdg_params_destroy(&p);
            return NULL;
        }
    }
    return p;
}

static PyObject *from_cbor(const cbor_item_t *it, int depth, bool key);

static PyObject *chunks_to_py(const cbor_item_t *it, bool text)
{
    size_t n = text ? cbor_string_chunk_count(it) : cbor_bytestring_chunk_count(it);
    cbor_item_t **chunks = text ? cbor_string_chunks_handle(it) : cbor_bytestring_chunks_handle(it);
    PyObject *out = PyBytes_FromStringAndSize(NULL, 0);
    for (size_t i = 0; out && i < n; i++) {
        const cbor_item_t *c = chunks[i];
        PyObject *part = PyBytes_FromStringAndSize(
            (const char *)(text ? cbor_string_handle(c) : cbor_bytestring_handle(c)),
            (Py_ssize_t)(text ? cbor_string_length(c) : cbor_bytestring_length(c)));
        PyBytes_ConcatAndDel(&out, part);
    }
    if (out && text) {
        PyObject *s = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(out), PyBytes_GET_SIZE(out), "replace");
        Py_DECREF(out);
        return s;
    }
    return out;
}

/* key: the value is a map's key, so an array is a tuple (hashable; a
 * Python tuple key travels as an array). */
static PyObject *from_cbor(const cbor_item_t *it, int depth, bool key)
{
    if (depth > MAX_DEPTH) {
        PyErr_Format(PyExc_ValueError, "a received value is nested deeper than %d levels", MAX_DEPTH);
        return NULL;
    }
    switch (cbor_typeof(it)) {
    case CBOR_TYPE_UINT:
        return PyLong_FromUnsignedLongLong(cbor_get_int(it));
    case CBOR_TYPE_NEGINT:
        if (cbor_get_int(it) > (uint64_t)INT64_MAX) { /* -1 - n below INT64_MIN */
            PyObject *n = PyLong_FromUnsignedLongLong(cbor_get_int(it));
            PyObject *r = n ? PyNumber_Invert(n) : NULL; /* ~n == -1 - n */
            Py_XDECREF(n);
            return r;
        }
        return PyLong_FromLongLong(-1 - (long long)cbor_get_int(it));
    case CBOR_TYPE_BYTESTRING:
        if (!cbor_bytestring_is_definite(it))
            return chunks_to_py(it, false);
        return PyBytes_FromStringAndSize((const char *)cbor_bytestring_handle(it),
                                         (Py_ssize_t)cbor_bytestring_length(it));
    case CBOR_TYPE_STRING:
        if (!cbor_string_is_definite(it))
            return chunks_to_py(it, true);
        return PyUnicode_DecodeUTF8((const char *)cbor_string_handle(it),
                                    (Py_ssize_t)cbor_string_length(it), "replace");
    case CBOR_TYPE_ARRAY: {
        size_t n = cbor_array_size(it);
        PyObject *seq = key ? PyTuple_New((Py_ssize_t)n) : PyList_New((Py_ssize_t)n);
        for (size_t i = 0; seq && i < n; i++) {
            PyObject *v = from_cbor(cbor_array_handle(it)[i], depth + 1, key);
            if (!v)
                Py_CLEAR(seq);
            else if (key)
                PyTuple_SET_ITEM(seq, (Py_ssize_t)i, v);
            else
                PyList_SET_ITEM(seq, (Py_ssize_t)i, v);
        }
        return seq;
    }
    case CBOR_TYPE_MAP: {
        size_t n = cbor_map_size(it);
        struct cbor_pair *pairs = cbor_map_handle(it);
        PyObject *d = PyDict_New();
        for (size_t i = 0; d && i < n; i++) {
            PyObject *k = from_cbor(pairs[i].key, depth + 1, true);
            PyObject *v = k ? from_cbor(pairs[i].value, depth + 1, false) : NULL;
            if (!v || PyDict_SetItem(d, k, v) < 0) /* a map as a key: TypeError */
                Py_CLEAR(d);
            Py_XDECREF(k);
            Py_XDECREF(v);
        }
        return d;
    }
    case CBOR_TYPE_TAG:
        return from_cbor(cbor_tag_item(it), depth + 1, key); /* the tag itself is not kept */
    case CBOR_TYPE_FLOAT_CTRL:
        if (cbor_float_ctrl_is_ctrl(it)) {
            if (cbor_is_bool(it))
                return PyBool_FromLong(cbor_get_bool(it));
            Py_RETURN_NONE; /* null, undefined */
        }
        return PyFloat_FromDouble(cbor_float_get_float(it));
    }
    Py_RETURN_NONE;
}

PyObject *mdgpy_dict_from_params(const mdg_params *p)
{
    const cbor_item_t *map = p ? mdg_params_map(p) : NULL;
    if (!map)
        return PyDict_New();
    return from_cbor(map, 0, false);
}

int mdgpy_key_arg(PyObject *o, const char *what, uint8_t out[MDG_KEY_BYTES])
{
    if (PyUnicode_Check(o)) { /* base64 text, as in key files */
        const char *s = PyUnicode_AsUTF8(o);
        if (!s)
            return -1;
        if (mdg_pk_from_b64(out, s) != 0) {
            PyErr_Format(PyExc_ValueError, "%s: not a base64 32-byte key: '%.60s'", what, s);
            return -1;
        }
        return 0;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a 32-byte key (bytes) or its base64 text, not %s",
                     what, Py_TYPE(o)->tp_name);
        return -1;
    }
    int rc = 0;
    if (view.len != MDG_KEY_BYTES) {
        PyErr_Format(PyExc_ValueError, "%s must be %d bytes long, not %zd", what, MDG_KEY_BYTES, view.len);
        rc = -1;
    } else {
        memcpy(out, view.buf, MDG_KEY_BYTES);
    }
    PyBuffer_Release(&view);
    return rc;
}

int mdgpy_bulk_arg(PyObject *o, Py_buffer *view)
{
    memset(view, 0, sizeof *view);
    if (!o || o == Py_None)
        return 0;
    if (PyObject_GetBuffer(o, view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "bulk must be bytes-like or None, not %s", Py_TYPE(o)->tp_name);
        return -1;
    }
    return 0;
}
