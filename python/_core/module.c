/* module.c - messidge._core: the module, key files, account creation. */
#include "core.h"

static PyObject *keys_tuple(const mdg_keys *k)
{
    return Py_BuildValue("(y#y#)", (const char *)mdg_keys_public(k), (Py_ssize_t)MDG_KEY_BYTES,
                         (const char *)mdg_keys_secret(k), (Py_ssize_t)MDG_KEY_BYTES);
}

static PyObject *py_keys_new(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    mdg_keys *k = NULL;
    int rc = mdg_keys_new(&k);
    if (rc != 0)
        return mdgpy_raise(rc, "new key pair", NULL);
    PyObject *r = keys_tuple(k);
    mdg_keys_destroy(&k);
    return r;
}

/* keys_check(public, secret) -> (pk, sk) as bytes: from bytes or base64
 * text; the secret must be the public key's. */
static PyObject *py_keys_check(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *pk, *sk;
    uint8_t rpk[MDG_KEY_BYTES], rsk[MDG_KEY_BYTES];
    mdg_keys *k = NULL;
    if (!PyArg_ParseTuple(args, "OO:keys_check", &pk, &sk) || mdgpy_key_arg(pk, "public", rpk) < 0 ||
        mdgpy_key_arg(sk, "secret", rsk) < 0)
        return NULL;
    int rc = mdg_keys_from_raw(&k, rpk, rsk);
    if (rc != 0)
        return mdgpy_raise(rc, "key pair", NULL);
    PyObject *r = keys_tuple(k);
    mdg_keys_destroy(&k);
    return r;
}

static PyObject *py_keys_load(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *name, *prefix = NULL;
    mdg_keys *k = NULL;
    if (!PyArg_ParseTuple(args, "s|z:keys_load", &name, &prefix))
        return NULL;
    int rc = mdg_keys_load(&k, name, prefix);
    if (rc != 0)
        return mdgpy_raise(rc, NULL, NULL);
    PyObject *r = keys_tuple(k);
    mdg_keys_destroy(&k);
    return r;
}

static PyObject *py_keys_save(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *pk, *sk;
    const char *name, *prefix = NULL;
    uint8_t rpk[MDG_KEY_BYTES], rsk[MDG_KEY_BYTES];
    mdg_keys *k = NULL;
    if (!PyArg_ParseTuple(args, "OOs|z:keys_save", &pk, &sk, &name, &prefix) ||
        mdgpy_key_arg(pk, "public", rpk) < 0 || mdgpy_key_arg(sk, "secret", rsk) < 0)
        return NULL;
    int rc = mdg_keys_from_raw(&k, rpk, rsk);
    if (rc == 0)
        rc = mdg_keys_save(k, name, prefix);
    mdg_keys_destroy(&k);
    if (rc != 0)
        return mdgpy_raise(rc, NULL, NULL);
    Py_RETURN_NONE;
}

static PyObject *py_server_pk_load(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *location, *prefix = NULL;
    uint8_t pk[MDG_KEY_BYTES];
    if (!PyArg_ParseTuple(args, "s|z:server_pk_load", &location, &prefix))
        return NULL;
    int rc = mdg_server_pk_load(pk, location, prefix);
    if (rc != 0)
        return mdgpy_raise(rc, NULL, NULL);
    return PyBytes_FromStringAndSize((const char *)pk, MDG_KEY_BYTES);
}

static PyObject *py_server_pk_save(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *pk;
    const char *location, *prefix = NULL;
    uint8_t raw[MDG_KEY_BYTES];
    if (!PyArg_ParseTuple(args, "Os|z:server_pk_save", &pk, &location, &prefix) ||
        mdgpy_key_arg(pk, "pk", raw) < 0)
        return NULL;
    int rc = mdg_server_pk_save(raw, location, prefix);
    if (rc != 0)
        return mdgpy_raise(rc, NULL, NULL);
    Py_RETURN_NONE;
}

static PyObject *py_default_location(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *prefix = NULL;
    char buf[1024];
    if (!PyArg_ParseTuple(args, "|z:default_location", &prefix))
        return NULL;
    int rc = mdg_default_location(buf, sizeof buf, prefix);
    if (rc != 0)
        return mdgpy_raise(rc, NULL, NULL);
    return PyUnicode_FromString(buf);
}

static PyObject *py_default_location_save(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *location, *prefix = NULL;
    if (!PyArg_ParseTuple(args, "s|z:default_location_save", &location, &prefix))
        return NULL;
    int rc = mdg_default_location_save(location, prefix);
    if (rc != 0)
        return mdgpy_raise(rc, NULL, NULL);
    Py_RETURN_NONE;
}

static PyObject *py_prefix_path(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *prefix = NULL;
    char buf[4096];
    if (!PyArg_ParseTuple(args, "|z:prefix_path", &prefix))
        return NULL;
    int rc = mdg_prefix_path(buf, sizeof buf, prefix);
    if (rc != 0)
        return mdgpy_raise(rc, NULL, NULL);
    return PyUnicode_FromString(buf);
}

static PyObject *py_pk_to_b64(PyObject *mod, PyObject *pk)
{
    (void)mod;
    uint8_t raw[MDG_KEY_BYTES];
    char b64[MDG_KEY_B64_LEN + 1];
    if (mdgpy_key_arg(pk, "pk", raw) < 0)
        return NULL;
    mdg_pk_to_b64(raw, b64);
    return PyUnicode_FromString(b64);
}

static PyObject *py_create_account(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"location", "token", "port", "prefix", "overwrite", NULL};
    const char *location, *token, *prefix = NULL;
    int port = 0, overwrite = 0, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ss|izp:create_account", kwlist, &location, &token,
                                     &port, &prefix, &overwrite))
        return NULL;
    Py_BEGIN_ALLOW_THREADS /* an HTTP exchange of up to 15 s */
    rc = mdg_create_account(location, port, token, prefix, overwrite ? MDG_ACCOUNT_OVERWRITE : 0);
    Py_END_ALLOW_THREADS
    if (rc == MDG_EREMOTE) { /* the account server refused: not a handler's ValueError */
        PyErr_Format(mdgpy_Error, "create_account: %s", mdg_last_error());
        return NULL;
    }
    if (rc != 0)
        return mdgpy_raise(rc, "create_account", NULL);
    Py_RETURN_NONE;
}

static PyObject *py_version(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    return PyUnicode_FromString(mdg_version());
}

static PyObject *py_set_log_level(PyObject *mod, PyObject *args)
{
    (void)mod;
    int level;
    if (!PyArg_ParseTuple(args, "i:set_log_level", &level))
        return NULL;
    mdg_set_log(NULL, NULL, level); /* the default sink: stderr */
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"version", py_version, METH_NOARGS, "the libmessidge version"},
    {"keys_new", py_keys_new, METH_NOARGS, "a new key pair: (public, secret) bytes"},
    {"keys_check", py_keys_check, METH_VARARGS, "keys_check(public, secret) -> (public, secret) bytes"},
    {"keys_load", py_keys_load, METH_VARARGS, "keys_load(name, prefix=None) -> (public, secret)"},
    {"keys_save", py_keys_save, METH_VARARGS, "keys_save(public, secret, name, prefix=None)"},
    {"server_pk_load", py_server_pk_load, METH_VARARGS, "server_pk_load(location, prefix=None)"},
    {"server_pk_save", py_server_pk_save, METH_VARARGS, "server_pk_save(pk, location, prefix=None)"},
    {"default_location", py_default_location, METH_VARARGS, "default_location(prefix=None)"},
    {"default_location_save", py_default_location_save, METH_VARARGS,
     "default_location_save(location, prefix=None)"},
    {"prefix_path", py_prefix_path, METH_VARARGS, "prefix_path(prefix=None): the key directory"},
    {"pk_to_b64", py_pk_to_b64, METH_O, "pk_to_b64(pk) -> base64 text"},
    {"create_account", (PyCFunction)(void (*)(void))py_create_account, METH_VARARGS | METH_KEYWORDS,
     "create_account(location, token, port=0, prefix=None, overwrite=False)"},
    {"set_log_level", py_set_log_level, METH_VARARGS, "set_log_level(0..3) of the library's stderr log"},
    {"_thread_states", mdgpy_thread_states, METH_NOARGS, "_thread_states(): the interpreter's, for the tests"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "messidge._core", "libmessidge's public C API for Python.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void)
{
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    mdgpy_ConnType = &mdgpy_ConnectionType;
    PyTypeObject *types[] = {&mdgpy_MessageType, &mdgpy_ConnectionType, &mdgpy_BrokerType,
                             &mdgpy_IdentityType, &mdgpy_AccountServerType};
    const char *names[] = {"Message", "Connection", "Broker", "Identity", "AccountServer"};
    if (mdgpy_errors_init(m) < 0)
        goto fail;
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (PyType_Ready(types[i]) < 0 || PyModule_AddObjectRef(m, names[i], (PyObject *)types[i]) < 0)
            goto fail;
    if (PyModule_AddIntConstant(m, "CMD_NEEDS_REPLY", MDG_CMD_NEEDS_REPLY) < 0 ||
        PyModule_AddIntConstant(m, "CMD_NODE_ONLY", MDG_CMD_NODE_ONLY) < 0 ||
        PyModule_AddIntConstant(m, "CMD_USER_ONLY", MDG_CMD_USER_ONLY) < 0 ||
        PyModule_AddIntConstant(m, "ROLE_USER", MDG_ROLE_USER) < 0 ||
        PyModule_AddIntConstant(m, "ROLE_NODE", MDG_ROLE_NODE) < 0 ||
        PyModule_AddIntConstant(m, "ROLE_NONE", MDG_ROLE_NONE) < 0 ||
        PyModule_AddIntConstant(m, "EV_CONNECTED", MDG_EV_CONNECTED) < 0 ||
        PyModule_AddIntConstant(m, "EV_DISCONNECTED", MDG_EV_DISCONNECTED) < 0 ||
        PyModule_AddIntConstant(m, "EV_RECOVERED", MDG_EV_RECOVERED) < 0 ||
        PyModule_AddIntConstant(m, "EV_LOST", MDG_EV_LOST) < 0 ||
        PyModule_AddIntConstant(m, "DEFAULT_PORT", MDG_DEFAULT_PORT) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
