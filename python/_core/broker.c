/* broker.c - messidge._core.Broker over mdg_broker.
 *
 * The broker serves on its own loop thread (mdg_broker_start); run() waits
 * for stop() in slices so that Ctrl-C raises KeyboardInterrupt in it, as
 * the guide's `try: broker.run() except KeyboardInterrupt` expects. Hooks
 * are methods of one Python object, called on the loop thread; what
 * session_new and node_joined return is kept (a reference) as the session's
 * or node's data and handed back to session_closed / node_left.
 */
#include "core.h"

#include <errno.h>
#include <time.h>

typedef struct {
    mdgpy_owner o;
    mdg_broker *b;
    PyObject *hooks; /* the object whose methods are the hooks, or NULL */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool started, stopped;
} mdgpy_broker;

static int need_broker(mdgpy_broker *self)
{
    if (!self->b) {
        PyErr_SetString(mdgpy_Error, "the broker is stopped");
        return -1;
    }
    return 0;
}

/* -------------------------------------------------------------- hooks */

/* Call hooks.name(*args built from fmt); a new reference or NULL (the
 * exception reported). GIL held. */
static PyObject *call_hook(mdgpy_broker *self, const char *name, const char *fmt, ...)
{
    if (!self || !self->hooks)
        return NULL;
    PyObject *fn = PyObject_GetAttrString(self->hooks, name);
    if (!fn) {
        PyErr_Clear();
        return NULL;
    }
    va_list ap;
    va_start(ap, fmt);
    PyObject *args = Py_VaBuildValue(fmt, ap);
    va_end(ap);
    PyObject *r = args ? PyObject_CallObject(fn, args) : NULL;
    if (!r)
        mdgpy_report_callback_error(name, fn);
    Py_XDECREF(args);
    Py_DECREF(fn);
    return r;
}

#define PK_FMT "y#"
#define PK_ARG(pk) (const char *)(pk), (Py_ssize_t)MDG_KEY_BYTES

static void *h_session_new(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], const uint8_t *sid,
                           size_t id_len, void *arg)
{
    (void)b;
    if (!mdgpy_python_alive())
        return NULL;
    PyGILState_STATE g = mdgpy_gil_enter();
    PyObject *r = call_hook((mdgpy_broker *)mdgpy_shim_owner(arg), "session_new", "(" PK_FMT "y#)",
                            PK_ARG(pk), (const char *)sid, (Py_ssize_t)id_len);
    PyGILState_Release(g);
    return r; /* the session's data: a reference, dropped at session_closed */
}

static void h_session_recovered(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *data,
                                void *arg)
{
    (void)b;
    if (!mdgpy_python_alive())
        return;
    PyGILState_STATE g = mdgpy_gil_enter();
    PyObject *r = call_hook((mdgpy_broker *)mdgpy_shim_owner(arg), "session_recovered",
                            "(" PK_FMT "O)", PK_ARG(pk), data ? (PyObject *)data : Py_None);
    Py_XDECREF(r);
    PyGILState_Release(g);
}

/* session_closed and node_left: the hook, then the data's reference goes
 * (even when the Python broker is gone: the library calls these for every
 * session left while it closes). */
static void closed_hook(const char *name, const uint8_t pk[MDG_KEY_BYTES], void *data, void *arg)
{
    if (!mdgpy_python_alive())
        return;
    PyGILState_STATE g = mdgpy_gil_enter();
    PyObject *r = call_hook((mdgpy_broker *)mdgpy_shim_owner(arg), name, "(" PK_FMT "O)", PK_ARG(pk),
                            data ? (PyObject *)data : Py_None);
    Py_XDECREF(r);
    Py_XDECREF((PyObject *)data);
    PyGILState_Release(g);
}

static void h_session_closed(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *data, void *arg)
{
    (void)b;
    closed_hook("session_closed", pk, data, arg);
}

static void *h_node_joined(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *arg)
{
    (void)b;
    if (!mdgpy_python_alive())
        return NULL;
    PyGILState_STATE g = mdgpy_gil_enter();
    PyObject *r = call_hook((mdgpy_broker *)mdgpy_shim_owner(arg), "node_joined", "(" PK_FMT ")",
                            PK_ARG(pk));
    PyGILState_Release(g);
    return r;
}

static void h_node_left(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *data, void *arg)
{
    (void)b;
    closed_hook("node_left", pk, data, arg);
}

static mdg_params *h_resources(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *arg)
{
    (void)b;
    if (!mdgpy_python_alive())
        return NULL;
    PyGILState_STATE g = mdgpy_gil_enter();
    mdg_params *p = NULL;
    PyObject *r = call_hook((mdgpy_broker *)mdgpy_shim_owner(arg), "resources", "(" PK_FMT ")",
                            PK_ARG(pk));
    if (r && r != Py_None && !(p = mdgpy_params_from_dict(r, "the resource offer")))
        mdgpy_report_callback_error("resources", r);
    Py_XDECREF(r);
    PyGILState_Release(g);
    return p; /* taken by the broker; NULL: no offer */
}

/* ------------------------------------------------------------ methods */

static PyObject *broker_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    mdgpy_broker *self = (mdgpy_broker *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->cond, NULL);
    if (mdgpy_owner_init(&self->o) < 0)
        Py_CLEAR(self);
    return (PyObject *)self;
}

static int broker_init(mdgpy_broker *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"public", "secret", "bind_address", "port", "session_grace_ms",
                             "node_grace_ms", "queue_limit", "node_window", "legacy",
                             "legacy_port", "max_message", NULL};
    PyObject *pk, *sk;
    uint8_t rpk[MDG_KEY_BYTES], rsk[MDG_KEY_BYTES];
    mdg_broker_options bo = {.port = MDG_DEFAULT_PORT};
    int legacy = 0, rc;
    mdg_keys *keys = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|ziiiiipiL:Broker", kwlist, &pk, &sk,
                                     &bo.bind_address, &bo.port, &bo.session_grace_ms,
                                     &bo.node_grace_ms, &bo.queue_limit, &bo.node_window, &legacy,
                                     &bo.legacy_port, &bo.max_message))
        return -1;
    if (self->b) {
        PyErr_SetString(PyExc_RuntimeError, "Broker.__init__ called twice");
        return -1;
    }
    if (bo.port < 0 || bo.port > 65535) {
        PyErr_Format(PyExc_ValueError, "port must be 0..65535, not %d", bo.port);
        return -1;
    }
    bo.legacy = legacy;
    if (mdgpy_key_arg(pk, "public key", rpk) < 0 || mdgpy_key_arg(sk, "secret key", rsk) < 0)
        return -1;
    if ((rc = mdg_keys_from_raw(&keys, rpk, rsk)) != 0 || (rc = mdg_broker_new(&self->b, keys, &bo)) != 0) {
        mdg_keys_destroy(&keys);
        mdgpy_raise(rc, "Broker", NULL);
        return -1;
    }
    mdg_keys_destroy(&keys);
    return 0;
}

static void stop_broker(void *obj)
{
    mdg_broker_stop(obj);
}

static void destroy_broker(void *obj)
{
    mdg_broker *b = obj;
    mdg_broker_destroy(&b); /* joins the loop; session_closed / node_left run */
}

/* Stop and close. The hooks are not called while the broker closes (the
 * sessions' and nodes' data are only released). */
static void broker_close(mdgpy_broker *self)
{
    mdg_broker *b = self->b;
    self->b = NULL;
    pthread_mutex_lock(&self->lock);
    self->stopped = true;
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->lock);
    mdgpy_owner_close(&self->o, stop_broker, destroy_broker, b);
    Py_CLEAR(self->hooks);
}

static void broker_dealloc(mdgpy_broker *self)
{
    broker_close(self);
    pthread_cond_destroy(&self->cond);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int apply_table(mdgpy_owner *o, mdg_cmd *t)
{
    int rc = mdg_broker_set_commands(((mdgpy_broker *)o)->b, t, o->shim);
    if (rc != 0)
        mdgpy_raise(rc, "set_commands", NULL);
    return rc ? -1 : 0;
}

static PyObject *broker_set_commands(mdgpy_broker *self, PyObject *rows)
{
    if (need_broker(self) < 0 || mdgpy_owner_set_table(&self->o, rows, apply_table) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *broker_set_hooks(mdgpy_broker *self, PyObject *hooks)
{
    if (need_broker(self) < 0)
        return NULL;
    mdg_broker_hooks h = {0};
#define HAS(name) PyObject_HasAttrString(hooks, name)
    if (HAS("session_new") || HAS("session_closed")) {
        h.session_new = h_session_new;
        h.session_closed = h_session_closed;
    }
    if (HAS("session_recovered"))
        h.session_recovered = h_session_recovered;
    if (HAS("node_joined") || HAS("node_left")) {
        h.node_joined = h_node_joined;
        h.node_left = h_node_left;
    }
    if (HAS("resources"))
        h.resources = h_resources;
#undef HAS
    int rc = mdg_broker_set_hooks(self->b, &h, self->o.shim);
    if (rc != 0)
        return mdgpy_raise(rc, "set_hooks", NULL);
    Py_XSETREF(self->hooks, Py_NewRef(hooks));
    Py_RETURN_NONE;
}

static PyObject *broker_allow_any(mdgpy_broker *self, PyObject *unused)
{
    (void)unused;
    if (need_broker(self) < 0)
        return NULL;
    int rc = mdg_broker_allow_any(self->b);
    if (rc != 0)
        return mdgpy_raise(rc, "allow_any", NULL);
    Py_RETURN_NONE;
}

static PyObject *broker_allow(mdgpy_broker *self, PyObject *args)
{
    PyObject *pk;
    int role;
    uint8_t raw[MDG_KEY_BYTES];
    if (!PyArg_ParseTuple(args, "Oi:allow", &pk, &role) || need_broker(self) < 0 ||
        mdgpy_key_arg(pk, "pk", raw) < 0)
        return NULL;
    int rc = mdg_broker_allow(self->b, raw, role);
    if (rc != 0)
        return mdgpy_raise(rc, "allow", NULL);
    Py_RETURN_NONE;
}

static PyObject *broker_start(mdgpy_broker *self, PyObject *unused)
{
    (void)unused;
    int rc;
    if (need_broker(self) < 0)
        return NULL;
    if (self->started)
        Py_RETURN_NONE;
    mdg_broker *b = self->b;
    mdgpy_shim *busy = mdgpy_busy_enter(&self->o);
    Py_BEGIN_ALLOW_THREADS
    rc = mdg_broker_start(b);
    mdgpy_busy_leave(busy);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return mdgpy_raise(rc, "start", NULL);
    self->started = true;
    Py_RETURN_NONE;
}

/* Serve until stop(): the loop runs on its own thread; this waits. */
static PyObject *broker_run(mdgpy_broker *self, PyObject *unused)
{
    PyObject *r = broker_start(self, unused);
    if (!r)
        return NULL;
    Py_DECREF(r);
    for (;;) {
        bool stopped;
        Py_BEGIN_ALLOW_THREADS
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += MDGPY_SLICE_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_mutex_lock(&self->lock);
        while (!self->stopped && pthread_cond_timedwait(&self->cond, &self->lock, &ts) != ETIMEDOUT)
            ;
        stopped = self->stopped;
        pthread_mutex_unlock(&self->lock);
        Py_END_ALLOW_THREADS
        if (stopped)
            Py_RETURN_NONE;
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
}

static PyObject *broker_stop(mdgpy_broker *self, PyObject *unused)
{
    (void)unused;
    broker_close(self);
    Py_RETURN_NONE;
}

static PyObject *broker_port(mdgpy_broker *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->b ? mdg_broker_port(self->b) : 0);
}

static PyObject *broker_legacy_port(mdgpy_broker *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->b ? mdg_broker_legacy_port(self->b) : 0);
}

static PyObject *broker_on_loop_thread(mdgpy_broker *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(mdgpy_on_loop_thread(&self->o));
}

static PyObject *broker_counts(mdgpy_broker *self, void *closure)
{
    if (!self->b)
        return PyLong_FromLong(0);
    return PyLong_FromSize_t(closure ? mdg_broker_node_count(self->b) : mdg_broker_session_count(self->b));
}

/* The library's send for session ids or node keys (to holds the key). */
static int send_to(mdg_broker *b, bool to_node, const Py_buffer *to, const char *cmd, mdg_params *p,
                   const Py_buffer *bulk)
{
    return to_node ? mdg_broker_send_node(b, to->buf, cmd, p, bulk->buf, (size_t)bulk->len)
                   : mdg_broker_send_session(b, to->buf, (size_t)to->len, cmd, p, bulk->buf,
                                             (size_t)bulk->len);
}

/* send_session(session_id, command, params=None, bulk=None) and
 * send_node(pk, ...): the original's send_cmd(rid, ...) from the broker. */
static PyObject *broker_send(mdgpy_broker *self, PyObject *args, PyObject *kw, bool to_node)
{
    static char *kwlist[] = {"to", "command", "params", "bulk", NULL};
    PyObject *params = Py_None, *bulk = Py_None;
    Py_buffer to, view;
    const char *cmd;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*s|OO:send", kwlist, &to, &cmd, &params, &bulk))
        return NULL;
    if (need_broker(self) < 0 || mdgpy_bulk_arg(bulk, &view) < 0) {
        PyBuffer_Release(&to);
        return NULL;
    }
    mdg_params *p = mdgpy_params_from_dict(params, "params");
    if (p && to_node && to.len != MDG_KEY_BYTES) {
        PyErr_Format(PyExc_ValueError, "a node's key is %d bytes, not %zd", MDG_KEY_BYTES, to.len);
        mdg_params_destroy(&p);
    }
    if (!p) {
        PyBuffer_Release(&to);
        PyBuffer_Release(&view);
        return NULL;
    }
    mdg_broker *b = self->b;
    if (mdgpy_on_loop_thread(&self->o)) /* quick and final there; no GIL dance */
        rc = send_to(b, to_node, &to, cmd, p, &view);
    else {
        mdgpy_shim *busy = mdgpy_busy_enter(&self->o);
        Py_BEGIN_ALLOW_THREADS
        rc = send_to(b, to_node, &to, cmd, p, &view);
        mdgpy_busy_leave(busy);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&to);
    PyBuffer_Release(&view);
    if (rc != 0)
        return mdgpy_raise(rc, cmd, NULL);
    Py_RETURN_NONE;
}

static PyObject *broker_send_session(mdgpy_broker *self, PyObject *args, PyObject *kw)
{
    return broker_send(self, args, kw, false);
}

static PyObject *broker_send_node(mdgpy_broker *self, PyObject *args, PyObject *kw)
{
    return broker_send(self, args, kw, true);
}

static PyObject *broker_disconnect_key(mdgpy_broker *self, PyObject *args)
{
    PyObject *pk;
    const char *reason = "disconnected by the broker";
    uint8_t raw[MDG_KEY_BYTES];
    if (!PyArg_ParseTuple(args, "O|s:disconnect_key", &pk, &reason) || need_broker(self) < 0 ||
        mdgpy_key_arg(pk, "pk", raw) < 0)
        return NULL;
    int rc = mdg_broker_disconnect_key(self->b, raw, reason);
    if (rc < 0)
        return mdgpy_raise(rc, "disconnect_key", NULL);
    return PyLong_FromLong(rc);
}

/* The identity store's handle, for Identity.attach. */
mdg_broker *mdgpy_broker_handle(PyObject *o)
{
    if (!PyObject_TypeCheck(o, &mdgpy_BrokerType)) {
        PyErr_Format(PyExc_TypeError, "a Broker is needed, not %s", Py_TYPE(o)->tp_name);
        return NULL;
    }
    mdgpy_broker *self = (mdgpy_broker *)o;
    return need_broker(self) < 0 ? NULL : self->b;
}

static PyMethodDef broker_methods[] = {
    {"set_commands", (PyCFunction)broker_set_commands, METH_O,
     "set_commands(rows): rows of (name, handler, required, flags); before start"},
    {"set_hooks", (PyCFunction)broker_set_hooks, METH_O,
     "set_hooks(obj): session_new, session_recovered, session_closed, node_joined, node_left, "
     "resources methods of obj; before start"},
    {"allow_any", (PyCFunction)broker_allow_any, METH_NOARGS, "admit every key as a user (tests)"},
    {"allow", (PyCFunction)broker_allow, METH_VARARGS, "allow(pk, role): admit pk as role"},
    {"start", (PyCFunction)broker_start, METH_NOARGS, "bind and serve on a background thread"},
    {"run", (PyCFunction)broker_run, METH_NOARGS, "serve until stop() (Ctrl-C: KeyboardInterrupt)"},
    {"stop", (PyCFunction)broker_stop, METH_NOARGS, "stop serving and close"},
    {"send_session", (PyCFunction)(void (*)(void))broker_send_session, METH_VARARGS | METH_KEYWORDS,
     "send_session(session_id, command, params=None, bulk=None)"},
    {"send_node", (PyCFunction)(void (*)(void))broker_send_node, METH_VARARGS | METH_KEYWORDS,
     "send_node(pk, command, params=None, bulk=None)"},
    {"disconnect_key", (PyCFunction)broker_disconnect_key, METH_VARARGS,
     "disconnect_key(pk, reason): close every session of a key"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef broker_getset[] = {
    {"port", (getter)broker_port, NULL, "the TCP port bound (0 before start)", NULL},
    {"legacy_port", (getter)broker_legacy_port, NULL, "the 1.x listener's port, or 0", NULL},
    {"session_count", (getter)broker_counts, NULL, "user sessions connected", NULL},
    {"node_count", (getter)broker_counts, NULL, "nodes connected", (void *)1},
    {"on_loop_thread", (getter)broker_on_loop_thread, NULL,
     "whether the calling thread is the broker's loop thread (a handler or hook)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject mdgpy_BrokerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "messidge._core.Broker",
    .tp_basicsize = sizeof(mdgpy_broker),
    .tp_dealloc = (destructor)broker_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A broker: users and nodes connect to it.",
    .tp_methods = broker_methods,
    .tp_getset = broker_getset,
    .tp_init = (initproc)broker_init,
    .tp_new = broker_new,
};
