/* core.h - messidge._core, the CPython extension over libmessidge's public
 * API: what its files share.
 *
 * Threads: the library calls handlers, hooks and reply callbacks on its
 * loop threads; every such entry takes the GIL (mdgpy_gil_enter) for the
 * call. Every call into the library that may wait releases the GIL, and
 * waits that may be long wait in slices so that Ctrl-C (a pending signal,
 * PyErr_CheckSignals) ends them in the main thread.
 */
#ifndef MESSIDGE_PY_CORE_H
#define MESSIDGE_PY_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "messidge.h"
#include "messidge_identity.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

/* How long one slice of a long wait lasts before signals are checked. */
#define MDGPY_SLICE_MS 100

/* --------------------------------------------------------------- errors */

/* messidge._core.Error (a RuntimeError) and its subclasses by code. */
extern PyObject *mdgpy_Error;
int mdgpy_errors_init(PyObject *module);
/* Raise the exception for rc with "what: detail" (detail from
 * mdg_last_error() when NULL); returns NULL for `return mdgpy_raise(...)`. */
PyObject *mdgpy_raise(int rc, const char *what, const char *detail);

/* ------------------------------------------------------------ arguments */

/* A METH_FASTCALL | METH_KEYWORDS method's arguments by position or by
 * name (names[0..n-1]) into out[n], NULL where not given, the first
 * `required` of them needed; -1 with a TypeError as Python's own says it. */
int mdgpy_fast_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                    const char *const *names, int n, int required, PyObject **out);

/* ---------------------------------------------------------------- params */

/* dict (or None) -> params, new; NULL with a Python exception set. */
mdg_params *mdgpy_params_from_dict(PyObject *dict, const char *what);
/* params -> new dict; NULL with a Python exception set. */
PyObject *mdgpy_dict_from_params(const mdg_params *p);
/* A 32-byte key from bytes; -1 with TypeError/ValueError set. */
int mdgpy_key_arg(PyObject *o, const char *what, uint8_t out[MDG_KEY_BYTES]);
/* Optional bulk (bytes-like or None) as a buffer; release with
 * PyBuffer_Release when view->obj is set. */
int mdgpy_bulk_arg(PyObject *o, Py_buffer *view);

/* ----------------------------------------------------------------- owner */

/* What a Broker and a Connection have in common, at the start of both
 * objects: the command table handed to the library and the Python
 * handlers behind it, and the messages kept past their handler (destroyed
 * when the owner's library object is). */
typedef struct mdgpy_message mdgpy_message;
typedef struct mdgpy_owner mdgpy_owner;
/* What the library is given as the arg of every callback: it outlives the
 * Python object (the library may call while the object is being freed, or
 * after, until its loop thread has ended), and says whether the object is
 * still there to call (owner NULL: no). Read and written under the GIL. */
typedef struct mdgpy_shim {
    mdgpy_owner *owner;
    /* Threads using the library object with the GIL released: closing
     * waits for them to leave before it destroys the object. */
    atomic_int busy;
} mdgpy_shim;
struct mdgpy_owner {
    PyObject_HEAD
    mdgpy_shim *shim;
    mdg_cmd *table;        /* NULL-name terminated; the library borrows it */
    PyObject *handlers;    /* dict: command name (str) -> callable */
    mdgpy_message *kept;   /* kept messages, linked through their next */
    pthread_t loop_thread; /* the library thread that calls us */
    bool loop_known;
};

/* Make the shim (in tp_new); -1 with MemoryError. */
int mdgpy_owner_init(mdgpy_owner *o);
/* Take the owner of a shim for a callback, with the GIL held: NULL when
 * the Python object is gone or going (the callback then does nothing). */
mdgpy_owner *mdgpy_shim_owner(void *shim);
/* Close the library object obj: stop_fn(obj) (which ends every wait on
 * it), then wait until no thread uses it (busy), then destroy_fn(obj)
 * with the kept messages destroyed before it, all with the GIL released;
 * then the table and the shim go. From the owner's loop thread (a handler,
 * or the object freed there) the loop cannot be joined: a thread of its
 * own closes it, and the kept messages go at once. */
typedef void (*mdgpy_close_fn)(void *obj);
void mdgpy_owner_close(mdgpy_owner *o, mdgpy_close_fn stop_fn, mdgpy_close_fn destroy_fn, void *obj);
/* Around a use of the library object with the GIL released: enter (with
 * the GIL, the object open) before Py_BEGIN_ALLOW_THREADS, leave right
 * after the call, still without the GIL. */
static inline mdgpy_shim *mdgpy_busy_enter(mdgpy_owner *o)
{
    atomic_fetch_add(&o->shim->busy, 1);
    return o->shim;
}
static inline void mdgpy_busy_leave(mdgpy_shim *s)
{
    atomic_fetch_sub(&s->busy, 1);
}
/* Set the table from a list of (name, handler, required tuple, flags):
 * the new table is given to the library by apply(o, table); only when
 * that succeeds does it replace the old one (which the library may still
 * be reading otherwise). */
int mdgpy_owner_set_table(mdgpy_owner *o, PyObject *rows, int (*apply)(mdgpy_owner *o, mdg_cmd *t));
/* Drop handlers and free the table (after the library object is gone). */
void mdgpy_owner_clear(mdgpy_owner *o);
/* Destroy every kept message (before the library object goes). */
void mdgpy_owner_drop_kept(mdgpy_owner *o);
/* Whether the calling thread is the owner's loop thread. */
bool mdgpy_on_loop_thread(const mdgpy_owner *o);
/* Note the loop thread: called on entry of every callback. */
void mdgpy_note_loop_thread(mdgpy_owner *o);
/* The library's handler for every row: finds the Python handler by the
 * command's name, runs it with a Message; a ValueError fails the message
 * with its text. arg is the owner. */
void mdgpy_dispatch(mdg_msg *msg, void *shim);
/* PyGILState_Ensure for a library thread's callback (pair it with
 * PyGILState_Release): a thread Python did not know keeps the thread state
 * made at its first entry until it ends, instead of one made and deleted
 * per callback (gil.c). */
PyGILState_STATE mdgpy_gil_enter(void);
/* _core._thread_states(): the interpreter's thread states (for the tests). */
PyObject *mdgpy_thread_states(PyObject *self, PyObject *unused);
/* Whether Python can be entered from a library thread (not finalizing). */
bool mdgpy_python_alive(void);
/* Report an exception raised in a callback, with where it came from. */
void mdgpy_report_callback_error(const char *where, PyObject *callable);

/* --------------------------------------------------------------- message */

extern PyTypeObject mdgpy_MessageType;
extern PyTypeObject *mdgpy_ConnType; /* reply(conn, ...) skips a leading connection */
struct mdgpy_message {
    PyObject_HEAD
    mdg_msg *msg;         /* the library's message while it may be replied to */
    mdg_msg *lazy;        /* a reply callback's, while it runs: the fields not yet made */
    mdgpy_owner *owner;   /* strong ref while kept */
    mdgpy_message *next;  /* in owner->kept */
    bool kept;
    PyObject *command;    /* str (NULL until made, while lazy) */
    PyObject *params;     /* dict (idem) */
    PyObject *bulk;       /* bytes or None (idem) */
    PyObject *error;      /* str or None (error replies) */
    bool more;            /* more replies follow on this channel */
    bool replyable;
};
/* A Message for msg: borrowed (handler) when owner is given, else a
 * copy of a reply (msg stays the caller's). */
mdgpy_message *mdgpy_message_new(mdg_msg *msg, mdgpy_owner *owner);
/* A reply callback's Message: command, params and bulk are made from
 * reply when first read; mdgpy_message_unlazy when the callback returns
 * (reply is then the library's again) makes them if the Message lives on. */
mdgpy_message *mdgpy_message_lazy(mdg_msg *reply);
void mdgpy_message_unlazy(mdgpy_message *m);
/* After the handler: a message not kept is no longer the library's. */
void mdgpy_message_release(mdgpy_message *m);

/* ----------------------------------------------------- connection, broker */

extern PyTypeObject mdgpy_ConnectionType;
extern PyTypeObject mdgpy_BrokerType;
extern PyTypeObject mdgpy_IdentityType;
extern PyTypeObject mdgpy_AccountServerType;

#endif
