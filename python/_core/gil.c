/* gil.c - entering Python from the library's threads.
 *
 * PyGILState_Ensure on a thread Python does not know makes a thread state
 * for the call and PyGILState_Release deletes it again: per reply that is
 * a thread state made and freed, its frame stack mapped and unmapped
 * (mmap, munmap and a TLB flush on every core) - most of what a pipelined
 * reply cost. Here such a thread gets one thread state for its lifetime:
 * its first entry makes it and keeps one PyGILState count of its own, so
 * the following Ensure / Release pairs only take and drop the GIL; a
 * thread-specific destructor deletes it when the thread ends (the library
 * joins its loop threads with the GIL released: closing, the atexit hook).
 */
#include "core.h"

static pthread_key_t kept_state; /* the thread's PyThreadState, made by us */
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static bool key_made;

/* At the end of a library thread. glibc may have cleared Python's own
 * thread-specific slot for it already (it clears each key's slot as it
 * goes, Python's being older), so the PyGILState functions cannot be used
 * here: the thread state is deleted directly. Once Python is finalizing,
 * it frees every thread state itself. */
static void thread_ended(void *state)
{
    if (!mdgpy_python_alive())
        return;
    PyEval_RestoreThread(state);
    PyThreadState_Clear(state);
    PyThreadState_DeleteCurrent(); /* and drops the GIL */
}

static void make_key(void)
{
    key_made = pthread_key_create(&kept_state, thread_ended) == 0;
}

PyGILState_STATE mdgpy_gil_enter(void)
{
    pthread_once(&key_once, make_key);
    if (key_made && !PyGILState_GetThisThreadState()) {
        /* A thread Python has not seen: its state for good (the count
         * this Ensure takes is never released), the GIL dropped again so
         * that the Ensure below is an ordinary one. */
        PyGILState_STATE first = PyGILState_Ensure();
        if (pthread_setspecific(kept_state, PyGILState_GetThisThreadState()) != 0)
            return first; /* cannot keep it: an ordinary entry */
        PyEval_SaveThread();
    }
    return PyGILState_Ensure();
}

/* _thread_states(): how many thread states the interpreter has, for the
 * tests (that a library thread's goes when the thread ends). */
PyObject *mdgpy_thread_states(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    long n = 0;
    PyInterpreterState *interp = PyThreadState_GetInterpreter(PyThreadState_Get());
    for (PyThreadState *t = PyInterpreterState_ThreadHead(interp); t; t = PyThreadState_Next(t))
        n++;
    return PyLong_FromLong(n);
}
