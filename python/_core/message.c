/* message.c - messidge._core.Message: a received command or reply.
 *
 * command, params, bulk (and error, more for replies) are Python copies,
 * so they stay valid for ever. A handler's Message and a blocking call's
 * reply make them when the message arrives; a reply callback's makes them
 * when first read (most callbacks read none: the params dict is what a
 * reply cost most), and at the latest when the callback returns, if the
 * Message outlives it. A command given to a handler can be replied to
 * while its handler runs; msg.keep() keeps it for replies later, from any
 * thread (a long-term channel), until the Message is freed or its broker /
 * connection closes.
 */
#include "core.h"

#include <structmember.h>

PyTypeObject *mdgpy_ConnType;

static mdgpy_message *message_alloc(mdg_msg *msg)
{
    mdgpy_message *m = PyObject_New(mdgpy_message, &mdgpy_MessageType);
    if (!m)
        return NULL;
    m->msg = NULL;
    m->lazy = NULL;
    m->owner = NULL;
    m->next = NULL;
    m->kept = false;
    m->more = mdg_msg_more(msg);
    m->replyable = false;
    m->command = m->params = m->bulk = NULL;
    const char *err = mdg_msg_error(msg);
    if (!(m->error = err ? PyUnicode_FromString(err) : Py_NewRef(Py_None))) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/* Set *field to made (a new reference, or NULL: -1) unless another thread
 * set it meanwhile: making may run Python code (the collector's
 * finalizers) that lets another thread in to read the same field. */
static int set_field(PyObject **field, PyObject *made)
{
    if (!made)
        return -1;
    if (*field)
        Py_DECREF(made);
    else
        *field = made;
    return 0;
}

/* command, params and bulk from msg; -1 with an exception set. */
static int fill_from(mdgpy_message *m, mdg_msg *msg)
{
    size_t len = 0;
    const void *bulk = mdg_msg_bulk(msg, &len);
    if (!m->command && set_field(&m->command, PyUnicode_FromString(mdg_msg_command(msg))) < 0)
        return -1;
    if (!m->params && set_field(&m->params, mdgpy_dict_from_params(mdg_msg_params(msg))) < 0)
        return -1;
    if (!m->bulk && set_field(&m->bulk, bulk ? PyBytes_FromStringAndSize(bulk, (Py_ssize_t)len)
                                             : Py_NewRef(Py_None)) < 0)
        return -1;
    return 0;
}

/* A reply callback's fields on first read: from the library's message
 * while the callback runs. 0 once made, -1 with an exception set. */
static int fill(mdgpy_message *m)
{
    if (m->command && m->params && m->bulk)
        return 0;
    if (!m->lazy) { /* could not be made when its callback ended */
        PyErr_SetString(PyExc_MemoryError, "the message's fields could not be made");
        return -1;
    }
    return fill_from(m, m->lazy);
}

mdgpy_message *mdgpy_message_new(mdg_msg *msg, mdgpy_owner *owner)
{
    mdgpy_message *m = message_alloc(msg);
    if (!m)
        return NULL;
    if (fill_from(m, msg) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (owner) {
        m->msg = msg;
        m->replyable = mdg_msg_replyable(msg);
        m->owner = (mdgpy_owner *)Py_NewRef((PyObject *)owner);
    }
    return m;
}

mdgpy_message *mdgpy_message_lazy(mdg_msg *reply)
{
    mdgpy_message *m = message_alloc(reply);
    if (m)
        m->lazy = reply;
    return m;
}

void mdgpy_message_unlazy(mdgpy_message *m)
{
    if (Py_REFCNT(m) > 1 && fill(m) < 0) /* kept past the callback */
        PyErr_WriteUnraisable((PyObject *)m);
    m->lazy = NULL;
}

void mdgpy_message_release(mdgpy_message *m)
{
    if (m->kept)
        return; /* the owner's now, through owner->kept */
    m->msg = NULL;
    Py_CLEAR(m->owner);
}

/* Unlink from the owner's kept list. */
static void unlink_kept(mdgpy_message *m)
{
    if (!m->kept || !m->owner)
        return;
    for (mdgpy_message **pp = &m->owner->kept; *pp; pp = &(*pp)->next) {
        if (*pp == m) {
            *pp = m->next;
            break;
        }
    }
    m->kept = false;
}

void mdgpy_owner_drop_kept(mdgpy_owner *o)
{
    while (o->kept) {
        mdgpy_message *m = o->kept;
        o->kept = m->next;
        m->kept = false;
        mdg_msg_destroy(&m->msg);
        Py_CLEAR(m->owner); /* may free o's last other reference: o is still referenced by the caller */
    }
}

static void message_dealloc(mdgpy_message *m)
{
    if (m->kept && m->msg) {
        unlink_kept(m);
        mdg_msg_destroy(&m->msg);
    }
    Py_CLEAR(m->owner);
    Py_CLEAR(m->command);
    Py_CLEAR(m->params);
    Py_CLEAR(m->bulk);
    Py_CLEAR(m->error);
    PyObject_Free(m);
}

static PyObject *message_keep(mdgpy_message *m, PyObject *unused)
{
    (void)unused;
    if (!m->msg) {
        PyErr_SetString(PyExc_RuntimeError,
                        "keep() is for a command, from its handler (the message is no longer the library's)");
        return NULL;
    }
    if (!m->kept) {
        mdg_msg_keep(m->msg);
        m->kept = true;
        m->next = m->owner->kept;
        m->owner->kept = m;
    }
    return Py_NewRef((PyObject *)m);
}

/* reply([conn,] results=None, bulk=None): the original's node form passes
 * the connection's socket first (send_skt()); it is accepted and unused. */
static PyObject *do_reply(mdgpy_message *m, PyObject *args, PyObject *kw, bool more)
{
    static char *kwlist[] = {"results", "bulk", NULL};
    PyObject *results = Py_None, *bulk = Py_None;
    Py_ssize_t skip = 0;
    if (PyTuple_GET_SIZE(args) > 0 && mdgpy_ConnType &&
        PyObject_TypeCheck(PyTuple_GET_ITEM(args, 0), mdgpy_ConnType))
        skip = 1;
    PyObject *rest = PyTuple_GetSlice(args, skip, PyTuple_GET_SIZE(args));
    if (!rest)
        return NULL;
    int ok = PyArg_ParseTupleAndKeywords(rest, kw, "|OO:reply", kwlist, &results, &bulk);
    Py_DECREF(rest);
    if (!ok)
        return NULL;
    if (!m->msg) {
        if (fill(m) < 0)
            return NULL;
        PyErr_Format(PyExc_RuntimeError,
                     "cannot reply to '%U' here: reply from its handler, or call msg.keep() there "
                     "to reply later", m->command);
        return NULL;
    }
    if (!m->replyable) {
        PyErr_Format(PyExc_ValueError, "'%U' was sent without wanting a reply", m->command);
        return NULL;
    }
    if (!m->owner->shim) /* its broker or connection is closing */
        return mdgpy_raise(MDG_ECLOSED, "reply", "closed");
    Py_buffer view;
    if (mdgpy_bulk_arg(bulk, &view) < 0)
        return NULL;
    mdg_params *p = mdgpy_params_from_dict(results, "reply results");
    if (!p) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (!m->msg || !m->owner || !m->owner->shim) { /* closed while the results were made */
        mdg_params_destroy(&p);
        PyBuffer_Release(&view);
        return mdgpy_raise(MDG_ECLOSED, "reply", "closed");
    }
    int rc;
    mdg_msg *msg = m->msg;
    /* A reply from an application thread may wait for room in the queue;
     * a closing owner waits for it before destroying the message. */
    mdgpy_shim *busy = mdgpy_busy_enter(m->owner);
    Py_BEGIN_ALLOW_THREADS
    rc = more ? mdg_msg_reply_more(msg, p, view.buf, (size_t)view.len)
              : mdg_msg_reply(msg, p, view.buf, (size_t)view.len);
    mdgpy_busy_leave(busy);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc != 0)
        return mdgpy_raise(rc, "reply", NULL);
    Py_RETURN_NONE;
}

static PyObject *message_reply(mdgpy_message *m, PyObject *args, PyObject *kw)
{
    return do_reply(m, args, kw, false);
}

static PyObject *message_reply_more(mdgpy_message *m, PyObject *args, PyObject *kw)
{
    return do_reply(m, args, kw, true);
}

static PyObject *message_fail(mdgpy_message *m, PyObject *args)
{
    const char *text;
    if (!PyArg_ParseTuple(args, "s:fail", &text))
        return NULL;
    if (!m->msg) {
        if (fill(m) < 0)
            return NULL;
        PyErr_Format(PyExc_RuntimeError, "cannot fail '%U' here: from its handler, or keep() it",
                     m->command);
        return NULL;
    }
    int rc = mdg_msg_fail(m->msg, "%s", text);
    if (rc != 0)
        return mdgpy_raise(rc, "fail", NULL);
    Py_RETURN_NONE;
}

static PyObject *message_repr(mdgpy_message *m)
{
    if (fill(m) < 0)
        return NULL;
    if (m->error != Py_None)
        return PyUnicode_FromFormat("<messidge.Message error %R>", m->error);
    return PyUnicode_FromFormat("<messidge.Message %R params=%R>", m->command, m->params);
}

static PyMethodDef message_methods[] = {
    {"reply", (PyCFunction)(void (*)(void))message_reply, METH_VARARGS | METH_KEYWORDS,
     "reply([conn,] results=None, bulk=None): the final reply (closes a channel)"},
    {"reply_more", (PyCFunction)(void (*)(void))message_reply_more, METH_VARARGS | METH_KEYWORDS,
     "reply_more(results=None, bulk=None): a reply on a long-term channel; more follow"},
    {"fail", (PyCFunction)message_fail, METH_VARARGS,
     "fail(text): the caller's call raises ValueError(text)"},
    {"keep", (PyCFunction)message_keep, METH_NOARGS,
     "keep(): keep this command past its handler, to reply later from any thread"},
    {NULL, NULL, 0, NULL},
};

/* command, params, bulk: made on first read for a reply callback's. */
static PyObject *message_field(mdgpy_message *m, void *offset)
{
    if (fill(m) < 0)
        return NULL;
    return Py_NewRef(*(PyObject **)((char *)m + (size_t)offset));
}

static PyGetSetDef message_getset[] = {
    {"command", (getter)message_field, NULL, "command name (str); '' for a reply",
     (void *)offsetof(mdgpy_message, command)},
    {"params", (getter)message_field, NULL, "params (dict)", (void *)offsetof(mdgpy_message, params)},
    {"bulk", (getter)message_field, NULL, "bulk data (bytes) or None", (void *)offsetof(mdgpy_message, bulk)},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef message_members[] = {
    {"error", T_OBJECT, offsetof(mdgpy_message, error), READONLY, "an error reply's text, else None"},
    {"more", T_BOOL, offsetof(mdgpy_message, more), READONLY, "more replies follow on this channel"},
    {"replyable", T_BOOL, offsetof(mdgpy_message, replyable), READONLY, "the sender wants a reply"},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject mdgpy_MessageType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "messidge.Message",
    .tp_basicsize = sizeof(mdgpy_message),
    .tp_dealloc = (destructor)message_dealloc,
    .tp_repr = (reprfunc)message_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A received command (handlers) or reply (calls, reply callbacks).",
    .tp_methods = message_methods,
    .tp_members = message_members,
    .tp_getset = message_getset,
};
