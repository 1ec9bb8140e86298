/* owner.c - the command table of a Broker or a Connection, and the one C
 * handler that runs a Python handler for every command of it.
 */
#include "core.h"

#include <time.h>

bool mdgpy_python_alive(void)
{
    return !_Py_IsFinalizing();
}

bool mdgpy_on_loop_thread(const mdgpy_owner *o)
{
    return o->loop_known && pthread_equal(o->loop_thread, pthread_self());
}

void mdgpy_note_loop_thread(mdgpy_owner *o)
{
    /* Written and read under the GIL. */
    if (!o->loop_known) {
        o->loop_thread = pthread_self();
        o->loop_known = true;
    }
}

void mdgpy_report_callback_error(const char *where, PyObject *callable)
{
    (void)where; /* the traceback names the callable; sys.unraisablehook may be set */
    PyErr_WriteUnraisable(callable);
}

static void free_table(mdg_cmd *t)
{
    if (!t)
        return;
    for (mdg_cmd *r = t; r->name; r++) {
        free((char *)r->name);
        if (r->required) {
            for (const char *const *q = r->required; *q; q++)
                free((char *)*q);
            free((void *)r->required);
        }
    }
    free(t);
}

int mdgpy_owner_init(mdgpy_owner *o)
{
    if (!(o->shim = calloc(1, sizeof *o->shim))) {
        PyErr_NoMemory();
        return -1;
    }
    o->shim->owner = o;
    return 0;
}

mdgpy_owner *mdgpy_shim_owner(void *shim)
{
    mdgpy_owner *o = ((mdgpy_shim *)shim)->owner;
    if (o)
        mdgpy_note_loop_thread(o);
    return o;
}

/* What closes a library object away from its own loop thread. */
typedef struct closer {
    mdgpy_close_fn stop_fn, destroy_fn;
    void *obj;
    mdgpy_shim *shim;
    mdg_cmd *table;
} closer;

/* Until no thread is in a library call on the object (each leaves once
 * its wait ends; the object is stopped). Without the GIL. */
static void wait_unused(const mdgpy_shim *shim)
{
    while (shim && atomic_load(&shim->busy) > 0)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
}

/* stop, wait for the users to leave, destroy: without the GIL. */
static void stop_and_destroy(closer *c)
{
    c->stop_fn(c->obj);
    wait_unused(c->shim);
    c->destroy_fn(c->obj);
}

static void *close_thread(void *arg)
{
    closer *c = arg;
    stop_and_destroy(c);
    free(c->shim);
    free_table(c->table); /* the library borrowed it until now */
    free(c);
    return NULL;
}

void mdgpy_owner_close(mdgpy_owner *o, mdgpy_close_fn stop_fn, mdgpy_close_fn destroy_fn, void *obj)
{
    mdgpy_shim *shim = o->shim;
    o->shim = NULL;
    if (shim)
        shim->owner = NULL; /* from now on callbacks find no one */
    closer c = {stop_fn, destroy_fn, obj, shim, o->table};
    if (obj && mdgpy_on_loop_thread(o)) {
        mdgpy_owner_drop_kept(o);
        closer *heap = malloc(sizeof *heap);
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (heap)
            *heap = c;
        if (!heap || pthread_create(&t, &attr, close_thread, heap) != 0) {
            /* Cannot close without joining ourselves: stop it, and leave
             * the object, its shim and its table as they are. */
            free(heap);
            stop_fn(obj);
            PyErr_WarnEx(PyExc_ResourceWarning, "messidge: cannot close from the loop thread", 1);
        }
        o->table = NULL; /* the closing thread's now (or left) */
        pthread_attr_destroy(&attr);
    } else if (obj) {
        Py_BEGIN_ALLOW_THREADS
        c.stop_fn(c.obj);
        wait_unused(c.shim);
        Py_END_ALLOW_THREADS
        mdgpy_owner_drop_kept(o); /* no thread replies on them now */
        Py_BEGIN_ALLOW_THREADS
        c.destroy_fn(c.obj);
        Py_END_ALLOW_THREADS
        free(shim);
    } else {
        mdgpy_owner_drop_kept(o);
        free(shim);
    }
    mdgpy_owner_clear(o);
}

void mdgpy_owner_clear(mdgpy_owner *o)
{
    free_table(o->table);
    o->table = NULL;
    Py_CLEAR(o->handlers);
}

/* One row from (name, handler, required, flags). */
static int fill_row(mdg_cmd *r, PyObject *row, PyObject *handlers)
{
    PyObject *name, *handler, *required;
    unsigned int flags;
    if (!PyArg_ParseTuple(row, "UOOI:command row", &name, &handler, &required, &flags))
        return -1;
    if (!PyCallable_Check(handler)) {
        PyErr_Format(PyExc_TypeError, "the handler of '%U' is not callable", name);
        return -1;
    }
    const char *cname = PyUnicode_AsUTF8(name);
    PyObject *req = cname ? PySequence_Fast(required, "required params must be a list of str") : NULL;
    if (!req)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(req);
    const char **list = calloc((size_t)n + 1, sizeof *list);
    r->name = strdup(cname);
    r->required = list;
    r->handler = mdgpy_dispatch;
    r->flags = flags;
    if (!list || !r->name) {
        Py_DECREF(req);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PySequence_Fast_GET_ITEM(req, i);
        const char *cs = PyUnicode_Check(s) ? PyUnicode_AsUTF8(s) : NULL;
        if (!cs || !(list[i] = strdup(cs))) {
            Py_DECREF(req);
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "required params of '%U' must be str", name);
            return -1;
        }
    }
    Py_DECREF(req);
    return PyDict_SetItem(handlers, name, handler);
}

int mdgpy_owner_set_table(mdgpy_owner *o, PyObject *rows, int (*apply)(mdgpy_owner *o, mdg_cmd *t))
{
    PyObject *fast = PySequence_Fast(rows, "commands must be a list of rows");
    if (!fast)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    mdg_cmd *t = calloc((size_t)n + 1, sizeof *t); /* zeroed: the last row ends it */
    PyObject *handlers = PyDict_New();
    int rc = t && handlers ? 0 : -1;
    if (rc)
        PyErr_NoMemory();
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++)
        rc = fill_row(&t[i], PySequence_Fast_GET_ITEM(fast, i), handlers);
    Py_DECREF(fast);
    if (rc == 0)
        rc = apply(o, t);
    if (rc) {
        free_table(t);
        Py_XDECREF(handlers);
        return -1;
    }
    mdgpy_owner_clear(o);
    o->table = t;
    o->handlers = handlers;
    return 0;
}

/* The handler raised: a ValueError fails the message with its text (the
 * original Python Messidge's reflected ValueError); anything else is
 * reported here and fails a replyable message with its type and text, so
 * that its caller is not left waiting. */
static void handler_failed(mdg_msg *msg, PyObject *handler)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    PyObject *text = exc ? PyObject_Str(exc) : NULL;
    const char *ctext = text ? PyUnicode_AsUTF8(text) : NULL;
    if (!ctext) {
        PyErr_Clear();
        ctext = "the handler failed";
    }
    if (exc && PyErr_GivenExceptionMatches(exc, PyExc_ValueError)) {
        mdg_msg_fail(msg, "%s", ctext);
        Py_XDECREF(type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
    } else {
        char name[128];
        snprintf(name, sizeof name, "%s", exc ? Py_TYPE(exc)->tp_name : "error");
        PyErr_Restore(type, exc, tb); /* the references go back */
        PyErr_WriteUnraisable(handler);
        if (mdg_msg_replyable(msg))
            mdg_msg_fail(msg, "%s: %s", name, ctext);
    }
    Py_XDECREF(text);
}

void mdgpy_dispatch(mdg_msg *msg, void *shim)
{
    if (!mdgpy_python_alive())
        return;
    PyGILState_STATE g = mdgpy_gil_enter();
    mdgpy_owner *o = mdgpy_shim_owner(shim);
    /* The Message first: its command is the handlers' key, so a message
     * makes one str of its name, not a second one for the lookup. */
    mdgpy_message *m = o && o->handlers ? mdgpy_message_new(msg, o) : NULL;
    PyObject *handler = m ? Py_XNewRef(PyDict_GetItemWithError(o->handlers, m->command)) : NULL;
    PyObject *r = NULL;
    if (handler)
        r = PyObject_CallOneArg(handler, (PyObject *)m);
    else if (!PyErr_Occurred() && mdg_msg_replyable(msg)) /* closing: the Python side is gone */
        mdg_msg_fail(msg, "'%s' not handled: closing", mdg_msg_command(msg));
    if (r)
        Py_DECREF(r);
    else if (PyErr_Occurred()) /* the handler raised, or the Message could not be made */
        handler_failed(msg, handler);
    if (m) {
        mdgpy_message_release(m);
        Py_DECREF(m);
    }
    Py_XDECREF(handler);
    PyGILState_Release(g);
}
