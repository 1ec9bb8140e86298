/* message.c - messidge._core.Message: a received command or reply.
 *
 * command, params, bulk (and error, more for replies) are Python copies
 * made when the message arrives, so they stay valid for ever. A command
 * given to a handler can be replied to while its handler runs; msg.keep()
 * keeps it for replies later, from any thread (a long-term channel), until
 * the Message is freed or its broker / connection closes.
 */
#include "core.h"

#include <structmember.h>

PyTypeObject *mdgpy_ConnType;

mdgpy_message *mdgpy_message_new(mdg_msg *msg, mdgpy_owner *owner)
{
    mdgpy_message *m = PyObject_New(mdgpy_message, &mdgpy_MessageType);
    if (!m)
        return NULL;
    m->msg = owner ? msg : NULL;
    m->owner = NULL;
    m->next = NULL;
    m->kept = false;
    m->more = mdg_msg_more(msg);
    m->replyable = owner && mdg_msg_replyable(msg);
    m->command = PyUnicode_FromString(mdg_msg_command(msg));
    m->params = mdgpy_dict_from_params(mdg_msg_params(msg));
    size_t len = 0;
    const void *bulk = mdg_msg_bulk(msg, &len);
    m->bulk = bulk ? PyBytes_FromStringAndSize(bulk, (Py_ssize_t)len) : Py_NewRef(Py_None);
    const char *err = mdg_msg_error(msg);
    m->error = err ? PyUnicode_FromString(err) : Py_NewRef(Py_None);
    if (owner)
        m->owner = (mdgpy_owner *)Py_NewRef((PyObject *)owner);
    if (!m->command || !m->params || !m->bulk || !m->error) {
        m->msg = NULL;
        Py_DECREF(m);
        return NULL;
    }
    return m;
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

static PyMemberDef message_members[] = {
    {"command", T_OBJECT, offsetof(mdgpy_message, command), READONLY, "command name (str); '' for a reply"},
    {"params", T_OBJECT, offsetof(mdgpy_message, params), READONLY, "params (dict)"},
    {"bulk", T_OBJECT, offsetof(mdgpy_message, bulk), READONLY, "bulk data (bytes) or None"},
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
};
