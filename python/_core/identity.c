/* identity.c - the identity store (who may connect) and the account server
 * that confirms invitations: messidge._core.Identity, AccountServer.
 */
#include "core.h"

mdg_broker *mdgpy_broker_handle(PyObject *o);

typedef struct {
    PyObject_HEAD
    mdg_identity *id;
    PyObject *attached; /* the broker it serves: it must outlive the store */
} mdgpy_identity;

static int need_id(mdgpy_identity *self)
{
    if (!self->id) {
        PyErr_SetString(mdgpy_Error, "the identity store is closed");
        return -1;
    }
    return 0;
}

static int identity_init(mdgpy_identity *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"state_dir", NULL};
    const char *dir = NULL;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|z:Identity", kwlist, &dir))
        return -1;
    if (self->id) {
        PyErr_SetString(PyExc_RuntimeError, "Identity.__init__ called twice");
        return -1;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = mdg_identity_open(&self->id, dir);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        mdgpy_raise(rc, "identity store", NULL);
        return -1;
    }
    return 0;
}

static PyObject *identity_close(mdgpy_identity *self, PyObject *unused)
{
    (void)unused;
    PyObject *broker = self->attached;
    self->attached = NULL;
    if (broker) {
        /* the broker's ZAP handler reads the store: close the broker first */
        PyObject *r = PyObject_CallMethod(broker, "stop", NULL);
        Py_DECREF(broker);
        if (!r)
            return NULL;
        Py_DECREF(r);
    }
    mdg_identity_destroy(&self->id);
    Py_RETURN_NONE;
}

static void identity_dealloc(mdgpy_identity *self)
{
    PyObject *r = identity_close(self, NULL); /* an attached broker first */
    if (!r)
        PyErr_WriteUnraisable((PyObject *)self);
    Py_XDECREF(r);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *identity_attach(mdgpy_identity *self, PyObject *broker)
{
    mdg_broker *b = mdgpy_broker_handle(broker);
    if (!b || need_id(self) < 0)
        return NULL;
    int rc = mdg_identity_attach(self->id, b);
    if (rc != 0)
        return mdgpy_raise(rc, "attach", NULL);
    Py_XSETREF(self->attached, Py_NewRef(broker));
    Py_RETURN_NONE;
}

static PyObject *identity_role(mdgpy_identity *self, PyObject *pk)
{
    uint8_t raw[MDG_KEY_BYTES];
    char *config = NULL;
    if (need_id(self) < 0 || mdgpy_key_arg(pk, "pk", raw) < 0)
        return NULL;
    int rc = mdg_identity_role(self->id, raw, &config);
    if (rc < 0)
        return mdgpy_raise(rc, "role", NULL);
    PyObject *r = Py_BuildValue("(iz)", rc, config);
    free(config);
    return r;
}

static PyObject *identity_invite(mdgpy_identity *self, PyObject *args)
{
    const char *email;
    long long ttl = 0;
    char token[MDG_TOKEN_LEN + 1];
    if (!PyArg_ParseTuple(args, "s|L:invite", &email, &ttl) || need_id(self) < 0)
        return NULL;
    int rc = mdg_identity_invite(self->id, email, ttl, token, sizeof token);
    if (rc != 0)
        return mdgpy_raise(rc, "invite", NULL);
    return PyUnicode_FromString(token);
}

static PyObject *identity_add(mdgpy_identity *self, PyObject *args, bool node)
{
    const char *name, *config = NULL;
    PyObject *pk;
    uint8_t raw[MDG_KEY_BYTES];
    if (!PyArg_ParseTuple(args, "zO|z:add", &name, &pk, &config) || need_id(self) < 0 ||
        mdgpy_key_arg(pk, "pk", raw) < 0)
        return NULL;
    int rc = node ? mdg_identity_add_node(self->id, name, raw, config)
                  : mdg_identity_add_user(self->id, name, raw, config);
    if (rc != 0)
        return mdgpy_raise(rc, node ? "add_node" : "add_user", NULL);
    Py_RETURN_NONE;
}

static PyObject *identity_add_node(mdgpy_identity *self, PyObject *args)
{
    return identity_add(self, args, true);
}

static PyObject *identity_add_user(mdgpy_identity *self, PyObject *args)
{
    return identity_add(self, args, false);
}

static PyObject *identity_revoke(mdgpy_identity *self, PyObject *pk)
{
    uint8_t raw[MDG_KEY_BYTES];
    if (need_id(self) < 0 || mdgpy_key_arg(pk, "pk", raw) < 0)
        return NULL;
    int rc = mdg_identity_revoke(self->id, raw);
    if (rc != 0)
        return mdgpy_raise(rc, "revoke", NULL);
    Py_RETURN_NONE;
}

static PyObject *identity_confirm(mdgpy_identity *self, PyObject *args)
{
    const char *token;
    PyObject *pk;
    uint8_t raw[MDG_KEY_BYTES];
    if (!PyArg_ParseTuple(args, "sO:confirm", &token, &pk) || need_id(self) < 0 ||
        mdgpy_key_arg(pk, "pk", raw) < 0)
        return NULL;
    int rc = mdg_identity_confirm(self->id, token, raw);
    if (rc != 0)
        return mdgpy_raise(rc, "confirm", NULL);
    Py_RETURN_NONE;
}

static int list_one(const mdg_identity_entry *e, void *arg)
{
    static const char *kinds[] = {"?", "user", "node", "pending"};
    PyObject *d = Py_BuildValue("{s:s,s:z,s:z,s:z,s:z,s:L,s:L,s:L}", "kind", kinds[e->kind & 3],
                                "pk", e->pk_b64, "name", e->name, "config", e->config, "ref", e->ref,
                                "created", (long long)e->created, "revoked", (long long)e->revoked,
                                "expires", (long long)e->expires);
    int rc = d ? PyList_Append(arg, d) : -1;
    Py_XDECREF(d);
    return rc ? 1 : 0;
}

static PyObject *identity_list(mdgpy_identity *self, PyObject *unused)
{
    (void)unused;
    if (need_id(self) < 0)
        return NULL;
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    int rc = mdg_identity_list(self->id, list_one, list);
    if (rc != 0) {
        Py_DECREF(list);
        return PyErr_Occurred() ? NULL : mdgpy_raise(rc, "list", NULL);
    }
    return list;
}

static PyMethodDef identity_methods[] = {
    {"attach", (PyCFunction)identity_attach, METH_O,
     "attach(broker): the broker admits keys from this store; before it starts"},
    {"role", (PyCFunction)identity_role, METH_O, "role(pk) -> (role, config JSON or None)"},
    {"invite", (PyCFunction)identity_invite, METH_VARARGS, "invite(email, ttl_seconds=0) -> token"},
    {"confirm", (PyCFunction)identity_confirm, METH_VARARGS, "confirm(token, pk)"},
    {"add_node", (PyCFunction)identity_add_node, METH_VARARGS, "add_node(name, pk, config=None)"},
    {"add_user", (PyCFunction)identity_add_user, METH_VARARGS, "add_user(email, pk, config=None)"},
    {"revoke", (PyCFunction)identity_revoke, METH_O, "revoke(pk)"},
    {"list", (PyCFunction)identity_list, METH_NOARGS, "every user, node and pending invitation"},
    {"close", (PyCFunction)identity_close, METH_NOARGS, "close (an attached broker is stopped first)"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject mdgpy_IdentityType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "messidge._core.Identity",
    .tp_basicsize = sizeof(mdgpy_identity),
    .tp_dealloc = (destructor)identity_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Identity(state_dir=None): the identity store of a broker (a state directory, SQLite, or a postgresql:// URI).",
    .tp_methods = identity_methods,
    .tp_init = (initproc)identity_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------ account server */

typedef struct {
    PyObject_HEAD
    mdg_account_server *s;
    PyObject *identity; /* borrowed by the server: kept alive */
} mdgpy_accounts;

static int accounts_init(mdgpy_accounts *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"identity", "broker_pk", "bind_address", "port", NULL};
    PyObject *id, *pk;
    const char *bind = NULL;
    int port = 0, rc;
    uint8_t raw[MDG_KEY_BYTES];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O|zi:AccountServer", kwlist, &mdgpy_IdentityType,
                                     &id, &pk, &bind, &port) ||
        mdgpy_key_arg(pk, "broker_pk", raw) < 0 || need_id((mdgpy_identity *)id) < 0)
        return -1;
    if (self->s) {
        PyErr_SetString(PyExc_RuntimeError, "AccountServer.__init__ called twice");
        return -1;
    }
    mdg_identity *store = ((mdgpy_identity *)id)->id;
    Py_BEGIN_ALLOW_THREADS
    rc = mdg_account_server_new(&self->s, store, raw, bind, port);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        mdgpy_raise(rc, "account server", NULL);
        return -1;
    }
    Py_XSETREF(self->identity, Py_NewRef(id));
    return 0;
}

static PyObject *accounts_close(mdgpy_accounts *self, PyObject *unused)
{
    (void)unused;
    mdg_account_server *s = self->s;
    self->s = NULL;
    Py_BEGIN_ALLOW_THREADS
    mdg_account_server_destroy(&s);
    Py_END_ALLOW_THREADS
    Py_CLEAR(self->identity);
    Py_RETURN_NONE;
}

static void accounts_dealloc(mdgpy_accounts *self)
{
    PyObject *r = accounts_close(self, NULL);
    Py_XDECREF(r);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *accounts_port(mdgpy_accounts *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->s ? mdg_account_server_port(self->s) : 0);
}

static PyMethodDef accounts_methods[] = {
    {"close", (PyCFunction)accounts_close, METH_NOARGS, "stop the server"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef accounts_getset[] = {
    {"port", (getter)accounts_port, NULL, "the TCP port bound", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject mdgpy_AccountServerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "messidge._core.AccountServer",
    .tp_basicsize = sizeof(mdgpy_accounts),
    .tp_dealloc = (destructor)accounts_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "AccountServer(identity, broker_pk, bind_address=None, port=0): confirms invitations.",
    .tp_methods = accounts_methods,
    .tp_getset = accounts_getset,
    .tp_init = (initproc)accounts_init,
    .tp_new = PyType_GenericNew,
};
