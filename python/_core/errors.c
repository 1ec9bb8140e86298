/* errors.c - libmessidge error codes as Python exceptions.
 *
 * messidge.Error is a RuntimeError (the guide catches RuntimeError when a
 * key pair is missing) with the code in .code and the code's name in .name;
 * the codes a Python user would test for also derive from the builtin that
 * says the same thing (TimeoutError, ConnectionError, FileNotFoundError,
 * PermissionError). A remote handler's failure (MDG_EREMOTE) is the
 * original Python Messidge's ValueError, with the remote text.
 */
#include "core.h"

PyObject *mdgpy_Error;
static PyObject *TimeoutErr, *ClosedErr, *NoFileErr, *AuthErr;

static PyObject *subclass(PyObject *module, const char *name, PyObject *builtin, const char *doc)
{
    PyObject *bases = PyTuple_Pack(2, mdgpy_Error, builtin);
    if (!bases)
        return NULL;
    char full[64];
    snprintf(full, sizeof full, "messidge.%s", name);
    PyObject *cls = PyErr_NewExceptionWithDoc(full, doc, bases, NULL);
    Py_DECREF(bases);
    if (cls && PyModule_AddObjectRef(module, name, cls) < 0)
        Py_CLEAR(cls);
    return cls;
}

int mdgpy_errors_init(PyObject *module)
{
    mdgpy_Error = PyErr_NewExceptionWithDoc(
        "messidge.Error", "A libmessidge call failed: .code is the MDG_E... code, .name its name.",
        PyExc_RuntimeError, NULL);
    if (!mdgpy_Error || PyModule_AddObjectRef(module, "Error", mdgpy_Error) < 0)
        return -1;
    TimeoutErr = subclass(module, "TimeoutError", PyExc_TimeoutError, "It did not finish in time.");
    ClosedErr = subclass(module, "ClosedError", PyExc_ConnectionError,
                         "The connection, broker or session is closed.");
    NoFileErr = subclass(module, "NotFoundError", PyExc_FileNotFoundError,
                         "A key file or location file does not exist.");
    AuthErr = subclass(module, "AuthError", PyExc_PermissionError,
                       "The broker refused our key.");
    return TimeoutErr && ClosedErr && NoFileErr && AuthErr ? 0 : -1;
}

PyObject *mdgpy_raise(int rc, const char *what, const char *detail)
{
    if (!detail)
        detail = mdg_last_error();
    if (!detail || !*detail)
        detail = mdg_strerror(rc);
    if (rc == MDG_EREMOTE) {
        PyErr_SetString(PyExc_ValueError, detail);
        return NULL;
    }
    if (rc == MDG_ENOMEM)
        return PyErr_NoMemory();
    PyObject *cls = rc == MDG_ETIMEDOUT ? TimeoutErr
                    : rc == MDG_ECLOSED ? ClosedErr
                    : rc == MDG_ENOENT  ? NoFileErr
                    : rc == MDG_EAUTH   ? AuthErr
                                        : mdgpy_Error;
    PyObject *text = what ? PyUnicode_FromFormat("%s: %s", what, detail)
                          : PyUnicode_FromString(detail);
    if (!text)
        return NULL;
    PyObject *exc = PyObject_CallOneArg(cls, text);
    Py_DECREF(text);
    if (!exc)
        return NULL;
    PyObject *code = PyLong_FromLong(rc);
    PyObject *name = PyUnicode_FromString(mdg_strerror(rc));
    if (code && name && PyObject_SetAttrString(exc, "code", code) == 0 &&
        PyObject_SetAttrString(exc, "name", name) == 0)
        PyErr_SetObject(cls, exc);
    Py_XDECREF(code);
    Py_XDECREF(name);
    Py_DECREF(exc);
    return NULL;
}
