/* connection.c - messidge._core.Connection over mdg_conn: users and nodes.
 *
 * Blocking calls from an application thread are sent with a reply callback
 * and waited for in slices with the GIL released, so that Ctrl-C ends them
 * (KeyboardInterrupt; the late reply is dropped). On the connection's own
 * loop thread (inside a handler or a reply callback) they are
 * mdg_conn_call, which reads the socket there until its reply comes.
 */
#include "core.h"

#include <errno.h>
#include <time.h>

typedef struct {
    mdgpy_owner o;
    mdg_conn *conn;
    PyObject *on_event; /* callable(event, detail) or NULL */
    PyObject *on_error; /* callable(command, text) or NULL */
} mdgpy_conn;

/* ------------------------------------------------------------ waits */

/* A deadline in ms on CLOCK_MONOTONIC, or -1 for none, from seconds. */
static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int timeout_arg(PyObject *timeout, int64_t *deadline)
{
    if (!timeout || timeout == Py_None) {
        *deadline = -1;
        return 0;
    }
    double s = PyFloat_AsDouble(timeout);
    if (s == -1.0 && PyErr_Occurred())
        return -1;
    if (s < 0) {
        PyErr_SetString(PyExc_ValueError, "timeout must be >= 0 seconds, or None to wait for ever");
        return -1;
    }
    *deadline = now_ms() + (int64_t)(s * 1000);
    return 0;
}

/* The next slice: up to MDGPY_SLICE_MS, never past the deadline. */
static int slice_ms(int64_t deadline)
{
    if (deadline < 0)
        return MDGPY_SLICE_MS;
    int64_t left = deadline - now_ms();
    return left <= 0 ? 0 : left < MDGPY_SLICE_MS ? (int)left : MDGPY_SLICE_MS;
}

/* -------------------------------------------------- reply callbacks */

/* send(..., callback=f): f(msg) on the loop thread for every reply. */
typedef struct {
    mdgpy_shim *shim; /* only to note the loop thread (valid while callbacks come) */
    PyObject *callback;
} cb_ctx;

static void on_reply(mdg_msg *reply, void *arg)
{
    cb_ctx *ctx = arg;
    bool final = !mdg_msg_more(reply);
    if (!mdgpy_python_alive())
        return;
    PyGILState_STATE g = mdgpy_gil_enter();
    mdgpy_shim_owner(ctx->shim); /* notes the loop thread, for nested calls */
    mdgpy_message *m = mdgpy_message_lazy(reply);
    PyObject *r = m ? PyObject_CallOneArg(ctx->callback, (PyObject *)m) : NULL;
    if (!r)
        mdgpy_report_callback_error("reply callback", ctx->callback);
    Py_XDECREF(r);
    if (m)
        mdgpy_message_unlazy(m);
    Py_XDECREF(m);
    if (final) { /* the library calls no more for this call */
        Py_DECREF(ctx->callback);
        free(ctx);
    }
    PyGILState_Release(g);
}

/* A blocking call waited for by an application thread. Two hold it: the
 * waiter, and the library until the call's final reply; the last frees. */
typedef struct {
    mdgpy_shim *shim; /* only to note the loop thread */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int holders;
    bool done;
    mdgpy_message *reply; /* the first reply */
    PyObject *error;      /* or why it could not be made a Message, for the caller */
} waiter;

static void waiter_drop(waiter *w)
{
    pthread_mutex_lock(&w->lock);
    bool last = --w->holders == 0;
    pthread_mutex_unlock(&w->lock);
    if (!last)
        return;
    if (w->reply || w->error) { /* a reply the waiter left (timed out meanwhile) */
        PyGILState_STATE g = mdgpy_gil_enter(); /* the loop thread's dropper has not got it */
        Py_CLEAR(w->reply);
        Py_CLEAR(w->error);
        PyGILState_Release(g);
    }
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

/* The reply is made a Message under the GIL, which is dropped before the
 * waiter is woken: woken first, it would wake only to wait for the GIL. */
static void on_blocking_reply(mdg_msg *reply, void *arg)
{
    waiter *w = arg;
    bool final = !mdg_msg_more(reply);
    if (!mdgpy_python_alive())
        return;
    pthread_mutex_lock(&w->lock);
    bool first = !w->done && w->holders == 2;
    pthread_mutex_unlock(&w->lock);
    if (first) {
        PyGILState_STATE g = mdgpy_gil_enter();
        mdgpy_shim_owner(w->shim);
        PyObject *error = NULL;
        mdgpy_message *m = mdgpy_message_new(reply, NULL);
        if (!m) { /* the caller raises why */
            PyObject *type, *tb;
            PyErr_Fetch(&type, &error, &tb);
            PyErr_NormalizeException(&type, &error, &tb);
            Py_XDECREF(type);
            Py_XDECREF(tb);
        }
        pthread_mutex_lock(&w->lock);
        bool stored = !w->done;
        if (stored) {
            w->reply = m;
            w->error = error;
            w->done = true;
        }
        pthread_mutex_unlock(&w->lock);
        if (!stored) {
            Py_XDECREF(m);
            Py_XDECREF(error);
        }
        PyGILState_Release(g);
        if (stored) { /* w is still ours: our hold goes only below */
            pthread_mutex_lock(&w->lock);
            pthread_cond_signal(&w->cond);
            pthread_mutex_unlock(&w->lock);
        }
    }
    if (final)
        waiter_drop(w);
}

/* Wait for w in slices; 0 when done, 1 at the deadline, -1 on a signal's
 * exception. */
static int waiter_wait(waiter *w, int64_t deadline)
{
    for (;;) {
        int ms = slice_ms(deadline);
        bool done;
        Py_BEGIN_ALLOW_THREADS
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += ms / 1000;
        ts.tv_nsec += (long)(ms % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_mutex_lock(&w->lock);
        while (!w->done && pthread_cond_timedwait(&w->cond, &w->lock, &ts) != ETIMEDOUT)
            ;
        done = w->done;
        pthread_mutex_unlock(&w->lock);
        Py_END_ALLOW_THREADS
        if (done)
            return 0;
        if (PyErr_CheckSignals() < 0)
            return -1;
        if (deadline >= 0 && now_ms() >= deadline)
            return 1;
    }
}

/* ------------------------------------------------------------ helpers */

static int need_conn(mdgpy_conn *self)
{
    if (!self->conn) {
        PyErr_SetString(mdgpy_Error, "the connection is closed (disconnect() was called)");
        return -1;
    }
    return 0;
}

static void on_event(mdg_conn *c, int event, const char *detail, void *arg)
{
    (void)c;
    if (!mdgpy_python_alive())
        return;
    PyGILState_STATE g = mdgpy_gil_enter();
    mdgpy_conn *self = (mdgpy_conn *)mdgpy_shim_owner(arg);
    PyObject *fn = self ? self->on_event : NULL;
    if (fn) {
        Py_INCREF(fn);
        PyObject *r = PyObject_CallFunction(fn, "is", event, detail ? detail : "");
        if (!r)
            mdgpy_report_callback_error("event handler", fn);
        Py_XDECREF(r);
        Py_DECREF(fn);
    }
    PyGILState_Release(g);
}

static void on_error(const char *command, const char *text, void *arg)
{
    if (!mdgpy_python_alive())
        return;
    PyGILState_STATE g = mdgpy_gil_enter();
    mdgpy_conn *self = (mdgpy_conn *)mdgpy_shim_owner(arg);
    PyObject *fn = self ? self->on_error : NULL;
    if (fn) {
        Py_INCREF(fn);
        PyObject *r = PyObject_CallFunction(fn, "ss", command, text);
        if (!r)
            mdgpy_report_callback_error("error handler", fn);
        Py_XDECREF(r);
        Py_DECREF(fn);
    }
    PyGILState_Release(g);
}

static void stop_conn(void *obj)
{
    mdg_conn_disconnect(obj); /* every wait on it ends */
}

static void destroy_conn(void *obj)
{
    mdg_conn *c = obj;
    mdg_conn_destroy(&c);
}

static void conn_close(mdgpy_conn *self)
{
    mdg_conn *c = self->conn;
    self->conn = NULL;
    mdgpy_owner_close(&self->o, stop_conn, destroy_conn, c);
    Py_CLEAR(self->on_event);
    Py_CLEAR(self->on_error);
}

/* ------------------------------------------------------------- methods */

static PyObject *conn_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    mdgpy_conn *self = (mdgpy_conn *)type->tp_alloc(type, 0);
    if (self && mdgpy_owner_init(&self->o) < 0)
        Py_CLEAR(self);
    return (PyObject *)self;
}

static int conn_init(mdgpy_conn *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"location", "server_pk", "public", "secret", "prefix", "port",
                             "reflect_errors", "queue_limit", "nonblocking", "heartbeat_ms",
                             "reconnect_min_ms", "reconnect_max_ms", "failover_ms", NULL};
    const char *location = NULL, *prefix = NULL;
    PyObject *server_pk = Py_None, *pk = Py_None, *sk = Py_None;
    mdg_conn_options co = {0};
    int reflect = 0, nonblocking = 0, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|zOOOzipiiiiii:Connection", kwlist, &location,
                                     &server_pk, &pk, &sk, &prefix, &co.port, &reflect,
                                     &co.queue_limit, &nonblocking, &co.heartbeat_ms,
                                     &co.reconnect_min_ms, &co.reconnect_max_ms, &co.failover_ms))
        return -1;
    if (self->conn) {
        PyErr_SetString(PyExc_RuntimeError, "Connection.__init__ called twice");
        return -1;
    }
    if (co.port < 0 || co.port > 65535) {
        PyErr_Format(PyExc_ValueError, "port must be 1..65535 (0: the default), not %d", co.port);
        return -1;
    }
    co.reflect_errors = reflect;
    co.nonblocking = nonblocking;
    if (pk == Py_None && sk == Py_None && server_pk == Py_None) {
        /* the guide's Connection(location): key files under the prefix */
        Py_BEGIN_ALLOW_THREADS
        rc = mdg_conn_new(&self->conn, location, prefix, &co);
        Py_END_ALLOW_THREADS
    } else {
        uint8_t spk[MDG_KEY_BYTES], rpk[MDG_KEY_BYTES], rsk[MDG_KEY_BYTES];
        mdg_keys *keys = NULL;
        if (server_pk == Py_None || pk == Py_None || sk == Py_None) {
            PyErr_SetString(PyExc_TypeError,
                            "explicit keys need all of server_pk, public and secret");
            return -1;
        }
        if (mdgpy_key_arg(server_pk, "server_pk", spk) < 0 || mdgpy_key_arg(pk, "public key", rpk) < 0 ||
            mdgpy_key_arg(sk, "secret key", rsk) < 0)
            return -1;
        if ((rc = mdg_keys_from_raw(&keys, rpk, rsk)) != 0) {
            mdgpy_raise(rc, "keys", NULL);
            return -1;
        }
        rc = mdg_conn_new_with_keys(&self->conn, location ? location : "localhost", spk, keys, &co);
        mdg_keys_destroy(&keys);
    }
    if (rc != 0) {
        mdgpy_raise(rc, "Connection", NULL);
        return -1;
    }
    return 0;
}

static void conn_dealloc(mdgpy_conn *self)
{
    conn_close(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int apply_table(mdgpy_owner *o, mdg_cmd *t)
{
    int rc = mdg_conn_register_commands(((mdgpy_conn *)o)->conn, t, o->shim);
    if (rc != 0)
        mdgpy_raise(rc, "register_commands", NULL);
    return rc ? -1 : 0;
}

static PyObject *conn_register_commands(mdgpy_conn *self, PyObject *rows)
{
    if (need_conn(self) < 0 || mdgpy_owner_set_table(&self->o, rows, apply_table) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *conn_set_event_handler(mdgpy_conn *self, PyObject *fn)
{
    if (need_conn(self) < 0)
        return NULL;
    int rc = mdg_conn_set_event_handler(self->conn, on_event, self->o.shim);
    if (rc != 0)
        return mdgpy_raise(rc, "set_event_handler", NULL);
    Py_XSETREF(self->on_event, fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyObject *conn_set_error_handler(mdgpy_conn *self, PyObject *fn)
{
    if (need_conn(self) < 0)
        return NULL;
    int rc = mdg_conn_set_error_handler(self->conn, on_error, self->o.shim);
    if (rc != 0)
        return mdgpy_raise(rc, "set_error_handler", NULL);
    Py_XSETREF(self->on_error, fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyObject *conn_start(mdgpy_conn *self, PyObject *unused)
{
    (void)unused;
    if (need_conn(self) < 0)
        return NULL;
    int rc = mdg_conn_start(self->conn);
    if (rc != 0)
        return mdgpy_raise(rc, "start", NULL);
    Py_RETURN_NONE;
}

static PyObject *conn_wait_until_ready(mdgpy_conn *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    int64_t deadline;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:wait_until_ready", kwlist, &timeout) ||
        timeout_arg(timeout, &deadline) < 0 || need_conn(self) < 0)
        return NULL;
    for (;;) {
        int ms = slice_ms(deadline);
        if (need_conn(self) < 0) /* closed by another thread meanwhile */
            return NULL;
        mdg_conn *c = self->conn;
        mdgpy_shim *busy = mdgpy_busy_enter(&self->o);
        Py_BEGIN_ALLOW_THREADS
        rc = mdg_conn_wait_until_ready(c, ms);
        mdgpy_busy_leave(busy);
        Py_END_ALLOW_THREADS
        if (rc != MDG_ETIMEDOUT || (deadline >= 0 && now_ms() >= deadline))
            break;
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
    if (rc != 0)
        return mdgpy_raise(rc, "wait_until_ready", NULL);
    Py_RETURN_NONE;
}

/* command, params, bulk of a send: converted, or -1. */
static int send_args(mdgpy_conn *self, PyObject *command, PyObject *params, PyObject *bulk, const char **cmd,
                     mdg_params **p, Py_buffer *view)
{
    if (PyBytes_Check(command)) /* the guide's b'write_note' */
        *cmd = PyBytes_AS_STRING(command);
    else if (PyUnicode_Check(command))
        *cmd = PyUnicode_AsUTF8(command);
    else {
        PyErr_Format(PyExc_TypeError, "the command must be bytes or str, not %s",
                     Py_TYPE(command)->tp_name);
        return -1;
    }
    if (!*cmd)
        return -1;
    if (!**cmd) {
        PyErr_SetString(PyExc_ValueError, "the command name is empty");
        return -1;
    }
    if (mdgpy_bulk_arg(bulk, view) < 0)
        return -1;
    if (!(*p = mdgpy_params_from_dict(params, "params"))) {
        PyBuffer_Release(view);
        return -1;
    }
    if (need_conn(self) < 0) { /* closed by another thread while converting */
        mdg_params_destroy(p);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* command, params, bulk and a fourth argument of send_cmd or
 * send_blocking_cmd, Py_None where not given. */
static int four_args(const char *fname, const char *fourth, PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames, PyObject **out)
{
    const char *names[] = {"command", "params", "bulk", fourth};
    if (mdgpy_fast_args(fname, args, nargs, kwnames, names, 4, 1, out) < 0)
        return -1;
    for (int i = 1; i < 4; i++)
        if (!out[i])
            out[i] = Py_None;
    return 0;
}

static PyObject *conn_send(mdgpy_conn *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[4];
    const char *cmd;
    mdg_params *p;
    Py_buffer view;
    int rc;
    if (four_args("send_cmd", "reply_callback", args, nargs, kwnames, a) < 0 || need_conn(self) < 0)
        return NULL;
    PyObject *command = a[0], *params = a[1], *bulk = a[2], *callback = a[3];
    if (callback != Py_None && !PyCallable_Check(callback)) {
        PyErr_Format(PyExc_TypeError, "the reply callback is not callable (%s)",
                     Py_TYPE(callback)->tp_name);
        return NULL;
    }
    if (send_args(self, command, params, bulk, &cmd, &p, &view) < 0)
        return NULL;
    mdg_conn *c = self->conn;
    mdgpy_shim *busy;
    if (callback == Py_None) {
        busy = mdgpy_busy_enter(&self->o);
        Py_BEGIN_ALLOW_THREADS /* a full queue waits for room */
        rc = mdg_conn_send(c, cmd, p, view.buf, (size_t)view.len);
        mdgpy_busy_leave(busy);
        Py_END_ALLOW_THREADS
    } else {
        cb_ctx *ctx = malloc(sizeof *ctx);
        if (!ctx) {
            mdg_params_destroy(&p);
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
        ctx->shim = self->o.shim;
        ctx->callback = Py_NewRef(callback);
        busy = mdgpy_busy_enter(&self->o);
        Py_BEGIN_ALLOW_THREADS
        rc = mdg_conn_send_cb(c, cmd, p, view.buf, (size_t)view.len, on_reply, ctx);
        mdgpy_busy_leave(busy);
        Py_END_ALLOW_THREADS
        if (rc != 0) {
            Py_DECREF(ctx->callback);
            free(ctx);
        }
    }
    PyBuffer_Release(&view);
    if (rc != 0)
        return mdgpy_raise(rc, cmd, NULL);
    Py_RETURN_NONE;
}

/* A reply as the caller's result: the Message, or ValueError for a
 * handler's failure. A failure made here, not by a peer (the connection
 * closed, or its session was lost, before the reply came), carries no
 * "error" param: that is a ClosedError. */
static PyObject *call_result(mdgpy_message *m, const char *cmd)
{
    if (m->error != Py_None) {
        int local = PyDict_GetItemString(m->params, "error") == NULL;
        if (local)
            mdgpy_raise(MDG_ECLOSED, cmd, PyUnicode_AsUTF8(m->error));
        else
            PyErr_SetObject(PyExc_ValueError, m->error);
        Py_DECREF(m);
        return NULL;
    }
    return (PyObject *)m;
}

/* On the loop thread: mdg_conn_call reads the socket here meanwhile. */
static PyObject *nested_call(mdgpy_conn *self, const char *cmd, mdg_params *p, Py_buffer *view,
                             int64_t deadline)
{
    mdg_msg *reply = NULL;
    int rc, ms = deadline < 0 ? -1 : (int)(deadline - now_ms() > 0 ? deadline - now_ms() : 0);
    mdg_conn *c = self->conn;
    mdgpy_shim *busy = mdgpy_busy_enter(&self->o);
    Py_BEGIN_ALLOW_THREADS
    rc = mdg_conn_call(c, cmd, p, view->buf, (size_t)view->len, ms, &reply);
    mdgpy_busy_leave(busy);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return mdgpy_raise(rc, rc == MDG_EREMOTE ? NULL : cmd, NULL);
    mdgpy_message *m = mdgpy_message_new(reply, NULL);
    mdg_msg_destroy(&reply);
    return m ? call_result(m, cmd) : NULL;
}

static PyObject *conn_call(mdgpy_conn *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[4];
    const char *cmd;
    mdg_params *p;
    Py_buffer view;
    int64_t deadline;
    int rc;
    if (four_args("send_blocking_cmd", "timeout", args, nargs, kwnames, a) < 0)
        return NULL;
    PyObject *timeout = a[3];
    if (timeout_arg(timeout, &deadline) < 0 || need_conn(self) < 0 ||
        send_args(self, a[0], a[1], a[2], &cmd, &p, &view) < 0)
        return NULL;
    if (mdgpy_on_loop_thread(&self->o)) {
        PyObject *r = nested_call(self, cmd, p, &view, deadline);
        PyBuffer_Release(&view);
        return r;
    }
    waiter *w = calloc(1, sizeof *w);
    if (!w) {
        mdg_params_destroy(&p);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    w->holders = 2;
    w->shim = self->o.shim;
    mdg_conn *c = self->conn;
    mdgpy_shim *busy = mdgpy_busy_enter(&self->o);
    Py_BEGIN_ALLOW_THREADS
    rc = mdg_conn_send_cb(c, cmd, p, view.buf, (size_t)view.len, on_blocking_reply, w);
    mdgpy_busy_leave(busy);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc != 0) {
        w->holders = 1;
        waiter_drop(w);
        return mdgpy_raise(rc, cmd, NULL);
    }
    int waited = waiter_wait(w, deadline);
    mdgpy_message *m = NULL;
    PyObject *error = NULL;
    pthread_mutex_lock(&w->lock);
    if (waited == 0) {
        m = w->reply;
        w->reply = NULL;
        error = w->error;
        w->error = NULL;
    } else {
        w->done = true; /* a late reply is dropped */
    }
    pthread_mutex_unlock(&w->lock);
    waiter_drop(w);
    if (waited < 0)
        return NULL; /* KeyboardInterrupt, or what the signal handler raised */
    if (waited > 0) {
        PyErr_Format(PyExc_TimeoutError, "no reply to '%s' within %S s", cmd, timeout);
        return NULL;
    }
    if (!m) {
        if (!error)
            return PyErr_NoMemory();
        PyErr_SetObject((PyObject *)Py_TYPE(error), error);
        Py_DECREF(error);
        return NULL;
    }
    return call_result(m, cmd);
}

static PyObject *conn_wait_until_complete(mdgpy_conn *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    int64_t deadline;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:wait_until_complete", kwlist, &timeout) ||
        timeout_arg(timeout, &deadline) < 0)
        return NULL;
    for (;;) {
        int ms = slice_ms(deadline);
        if (!self->conn) /* disconnected, maybe by a handler before we came: complete */
            Py_RETURN_TRUE;
        mdg_conn *c = self->conn;
        mdgpy_shim *busy = mdgpy_busy_enter(&self->o);
        Py_BEGIN_ALLOW_THREADS
        rc = mdg_conn_wait_until_complete(c, ms);
        mdgpy_busy_leave(busy);
        Py_END_ALLOW_THREADS
        if (rc != MDG_ETIMEDOUT)
            break;
        if (deadline >= 0 && now_ms() >= deadline)
            Py_RETURN_FALSE;
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
    if (rc != 0)
        return mdgpy_raise(rc, "wait_until_complete", NULL);
    Py_RETURN_TRUE;
}

/* Another broker of the fleet to fail over to (mdg_conn_add_broker). */
static PyObject *conn_add_broker(mdgpy_conn *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"location", "server_pk", "port", NULL};
    const char *location = NULL;
    PyObject *server_pk = NULL;
    int port = 0;
    uint8_t spk[MDG_KEY_BYTES];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sO|i:add_broker", kwlist, &location, &server_pk, &port) ||
        need_conn(self) < 0 || mdgpy_key_arg(server_pk, "server_pk", spk) < 0)
        return NULL;
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port must be 1..65535 (0: the connection's), not %d", port);
        return NULL;
    }
    int rc = mdg_conn_add_broker(self->conn, location, port, spk);
    if (rc != 0)
        return mdgpy_raise(rc, "add_broker", NULL);
    Py_RETURN_NONE;
}

/* Say goodbye and close. From a handler the loop cannot be joined there:
 * it ends, and the connection is freed by a thread of its own. */
static PyObject *conn_disconnect(mdgpy_conn *self, PyObject *unused)
{
    (void)unused;
    conn_close(self);
    Py_RETURN_NONE;
}

static PyObject *conn_session_id(mdgpy_conn *self, void *closure)
{
    (void)closure;
    size_t len = 0;
    const uint8_t *id = self->conn ? mdg_conn_session_id(self->conn, &len) : NULL;
    if (!id || !len)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)id, (Py_ssize_t)len);
}

static PyObject *conn_closed(mdgpy_conn *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->conn == NULL);
}

static PyMethodDef conn_methods[] = {
    {"register_commands", (PyCFunction)conn_register_commands, METH_O,
     "register_commands(rows): before start; rows of (name, handler, required, flags)"},
    {"set_event_handler", (PyCFunction)conn_set_event_handler, METH_O,
     "set_event_handler(f): before start; f(event, detail) on the loop thread"},
    {"set_error_handler", (PyCFunction)conn_set_error_handler, METH_O,
     "set_error_handler(f): f(command, text) for errors the broker reports on sends"},
    {"add_broker", (PyCFunction)(void (*)(void))conn_add_broker, METH_VARARGS | METH_KEYWORDS,
     "add_broker(location, server_pk, port=0): before start; another broker to fail over to"},
    {"start", (PyCFunction)conn_start, METH_NOARGS, "start the loop thread and connect"},
    {"wait_until_ready", (PyCFunction)(void (*)(void))conn_wait_until_ready,
     METH_VARARGS | METH_KEYWORDS, "wait_until_ready(timeout=None)"},
    {"send_cmd", (PyCFunction)(void (*)(void))conn_send, METH_FASTCALL | METH_KEYWORDS,
     "send_cmd(command, params=None, bulk=None, reply_callback=None)\n\n"
     "Fire and forget, or with reply_callback(msg) called on the loop thread for each reply\n"
     "(an error reply has msg.error set)."},
    {"send_blocking_cmd", (PyCFunction)(void (*)(void))conn_call, METH_FASTCALL | METH_KEYWORDS,
     "send_blocking_cmd(command, params=None, bulk=None, timeout=None) -> Message\n\n"
     "Send and wait for the reply (a Message); a handler's failure raises ValueError with its\n"
     "text. timeout in seconds (None: for ever; messidge.TimeoutError past it)."},
    {"wait_until_complete", (PyCFunction)(void (*)(void))conn_wait_until_complete,
     METH_VARARGS | METH_KEYWORDS, "wait_until_complete(timeout=None) -> True when ended"},
    {"disconnect", (PyCFunction)conn_disconnect, METH_NOARGS, "say goodbye and close"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef conn_getset[] = {
    {"session_id", (getter)conn_session_id, NULL, "the session id the broker gave (bytes)", NULL},
    {"closed", (getter)conn_closed, NULL, "disconnect() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject mdgpy_ConnectionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "messidge._core.Connection",
    .tp_basicsize = sizeof(mdgpy_conn),
    .tp_dealloc = (destructor)conn_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A connection to a broker (a user's or a node's).",
    .tp_methods = conn_methods,
    .tp_getset = conn_getset,
    .tp_init = (initproc)conn_init,
    .tp_new = conn_new,
};
