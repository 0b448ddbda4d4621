/* _sqlitesaver_shallow: two checks of the payload reader in C (issue #15):
 * sqlitesaver._fastpack._shallow() and sqlitesaver.codec._pair_python().
 *
 * shallow(data, max_depth) is True exactly when msgpack's own C parser, skipping ``data``
 * inside 1024 - max_depth open arrays (what _fastpack._shallow_python does, with pooled
 * Unpackers), would find one whole object ending at the last byte: every length it declares
 * backed by bytes, no byte 0xc1 (never used) where a header belongs, and at most ``max_depth``
 * containers on any path, an innermost empty one included (msgpack checks its stack before it
 * looks at a container's count). One pass, no allocation, nothing built, no Python code;
 * tests/test_shallow_c.py compares it with the Python version on generated, damaged and random
 * payloads. The Python version reads a 4 KiB state in two passes of msgpack's parser and a
 * pooled Unpacker's bookkeeping (~24,000 instructions per get); this one in one loop.
 *
 * pair(data) is codec._pair_python(data): the LangGraph adapter's ``[type, bytes]`` payload
 * read straight off ``data`` when it is exactly a fixarray of 2 holding a fixstr or str 8 of
 * valid UTF-8 and then a bin 8/16/32 ending at the last byte, else None (the general decoders
 * then decide). Three per get_tuple with two pending writes, ~0.7 us each in Python.
 *
 * Built by setup.py as an optional extension: where it cannot be built, or is of another
 * VERSION than its callers expect, they use their Python versions.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define VERSION 2 /* 2: pair() */
#define DEEPEST 64 /* the most max_depth this accepts: _fastpack's MAX_DEPTH is 16 */

static uint64_t load(const unsigned char *p, int size) {
    uint64_t value = 0;
    for (int i = 0; i < size; i++) value = (value << 8) | p[i];
    return value;
}

/* 1 if ``data`` is one whole msgpack object nesting at most ``max_depth`` containers. */
static int whole_and_shallow(const unsigned char *p, Py_ssize_t len, int max_depth) {
    const unsigned char *const end = p + len;
    uint64_t left[DEEPEST]; /* items still to come in each open container (a map's: 2 per entry) */
    int top = 0;
    for (;;) {
        if (p == end) return 0; /* an object was due: truncated */
        unsigned int b = *p++;
        uint64_t skip = 0, items = 0;
        int container = 0;
        if (b <= 0x7f || b >= 0xe0) {
            /* positive or negative fixint */
        } else if (b >= 0xa0 && b <= 0xbf) {
            skip = b & 0x1f; /* fixstr */
        } else if (b >= 0x90 && b <= 0x9f) {
            container = 1;
            items = b & 0x0f; /* fixarray */
        } else if (b >= 0x80 && b <= 0x8f) {
            container = 1;
            items = 2 * (uint64_t)(b & 0x0f); /* fixmap */
        } else {
            int size; /* bytes of the length or value that follow the type byte */
            switch (b) {
            case 0xc0: case 0xc2: case 0xc3: /* nil, false, true */
                break;
            case 0xc4: case 0xc5: case 0xc6: /* bin 8/16/32 */
            case 0xd9: case 0xda: case 0xdb: /* str 8/16/32 */
                size = (b == 0xc4 || b == 0xd9) ? 1 : (b == 0xc5 || b == 0xda) ? 2 : 4;
                if (end - p < size) return 0;
                skip = load(p, size);
                p += size;
                break;
            case 0xc7: case 0xc8: case 0xc9: /* ext 8/16/32: length, then type and data */
                size = b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4;
                if (end - p < size) return 0;
                /* msgpack's parser adds the type byte in a 32-bit unsigned int: for an ext 32
                 * of length 0xffffffff that wraps to 0, and it takes the object as ending
                 * there (found in review). So does this check, to answer as it does. */
                skip = (uint32_t)(load(p, size) + 1);
                p += size;
                break;
            case 0xca: case 0xcb: /* float 32/64 */
            case 0xcc: case 0xcd: case 0xce: case 0xcf: /* uint 8-64 */
            case 0xd0: case 0xd1: case 0xd2: case 0xd3: /* int 8-64 */
                skip = (uint64_t)1 << (b & 0x03);
                break;
            case 0xd4: case 0xd5: case 0xd6: case 0xd7: /* fixext 1/2/4/8: type and data */
                skip = ((uint64_t)1 << (b & 0x03)) + 1;
                break;
            case 0xd8: /* fixext 16 */
                skip = 17;
                break;
            case 0xdc: case 0xdd: case 0xde: case 0xdf: /* array 16/32, map 16/32 */
                size = (b & 0x01) ? 4 : 2;
                if (end - p < size) return 0;
                items = load(p, size);
                if (b >= 0xde) items *= 2;
                p += size;
                container = 1;
                break;
            default: /* 0xc1, never used: msgpack's parser stops there */
                return 0;
            }
        }
        if (container) {
            if (top >= max_depth) return 0; /* one container too many, even an empty one */
            if (items > 0) {
                left[top++] = items;
                continue; /* its first item is next */
            }
        } else {
            if ((uint64_t)(end - p) < skip) return 0; /* a length not backed by bytes */
            p += skip;
        }
        /* an object ended: it was an item of the innermost open container, which may end too */
        while (top > 0 && --left[top - 1] == 0) top--;
        if (top == 0) return p == end; /* the whole object: no byte may follow */
    }
}

static PyObject *shallow(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "shallow(data: bytes, max_depth: int)");
        return NULL;
    }
    long max_depth = PyLong_AsLong(args[1]);
    if (max_depth == -1 && PyErr_Occurred()) return NULL;
    if (max_depth < 0 || max_depth > DEEPEST) {
        PyErr_Format(PyExc_ValueError, "max_depth must be 0 to %d", DEEPEST);
        return NULL;
    }
    int found = whole_and_shallow((const unsigned char *)PyBytes_AS_STRING(args[0]),
                                  PyBytes_GET_SIZE(args[0]), (int)max_depth);
    return PyBool_FromLong(found);
}

/* codec._pair_python, step for step (tests/test_shallow_c.py compares the two). */
static PyObject *pair(PyObject *module, PyObject *data) {
    (void)module;
    if (!PyBytes_CheckExact(data)) {
        PyErr_SetString(PyExc_TypeError, "pair(data: bytes)");
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data), at, end, start, size;
    if (n < 4 || p[0] != 0x92) Py_RETURN_NONE;
    unsigned char head = p[1];
    if (head >= 0xA0 && head <= 0xBF) {
        at = 2;
        end = 2 + (head - 0xA0);
    } else if (head == 0xD9) {
        at = 3;
        end = 3 + p[2];
    } else {
        Py_RETURN_NONE;
    }
    if (end + 2 > n) Py_RETURN_NONE;
    unsigned char kind = p[end];
    if (kind == 0xC4) {
        start = end + 2;
        size = p[end + 1];
    } else if (kind == 0xC5 || kind == 0xC6) {
        start = end + (kind == 0xC5 ? 3 : 5);
        if (start > n) Py_RETURN_NONE; /* its length is not all there */
        size = (Py_ssize_t)load(p + end + 1, kind == 0xC5 ? 2 : 4);
    } else {
        Py_RETURN_NONE;
    }
    if (start > n || size != n - start) Py_RETURN_NONE;
    PyObject *name = PyUnicode_DecodeUTF8((const char *)p + at, end - at, "strict");
    if (name == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear(); /* not valid UTF-8: the general path's error */
            Py_RETURN_NONE;
        }
        return NULL;
    }
    PyObject *blob = PyBytes_FromStringAndSize((const char *)p + start, size);
    if (blob == NULL) {
        Py_DECREF(name);
        return NULL;
    }
    PyObject *list = PyList_New(2);
    if (list == NULL) {
        Py_DECREF(name);
        Py_DECREF(blob);
        return NULL;
    }
    PyList_SET_ITEM(list, 0, name);
    PyList_SET_ITEM(list, 1, blob);
    return list;
}

static PyMethodDef methods[] = {
    {"shallow", (PyCFunction)(void (*)(void))shallow, METH_FASTCALL,
     "shallow(data, max_depth): sqlitesaver._fastpack._shallow(data), in C."},
    {"pair", (PyCFunction)pair, METH_O,
     "pair(data): sqlitesaver.codec._pair_python(data), in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_sqlitesaver_shallow",
    .m_doc = "sqlitesaver._fastpack._shallow() and codec._pair_python() in C (see "
             "sqlitesaver/_shallow.c).",
    .m_size = -1,
    .m_methods = methods,
};

#ifndef SOURCE_SHA256
#define SOURCE_SHA256 "unknown" /* built without setup.py */
#endif

PyMODINIT_FUNC PyInit__sqlitesaver_shallow(void) {
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && (PyModule_AddIntConstant(module, "VERSION", VERSION) < 0 ||
                           PyModule_AddStringConstant(module, "SOURCE_SHA256", SOURCE_SHA256) < 0)) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
