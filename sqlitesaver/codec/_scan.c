/* _sqlitesaver_scan: sqlitesaver.codec.scan._scan() in C (issue #15).
 *
 * The same walk as the Python _scan() in scan.py, step for step, and the same answer for every
 * value (tests/test_scan_c.py compares the two on generated and pathological values): one level
 * of nesting at a time, each level's referents found as gc.get_referents() finds them (each
 * object's tp_traverse, so a dict gives its values, and its keys unless all are str), the same
 * sample of each level for the size estimate, the same bounds. Only the per-object work moves
 * from Python's set(map(type, level)) (~25 ns an object) to a loop here (~2 ns).
 *
 * What it relies on, and why it is safe:
 * - It runs no Python code: types are looked up in scan.py's sets, whose members are builtin
 *   types, and a value holding an instance of a class whose metaclass defines its own __hash__
 *   or __eq__ (whose lookups would run that code, and might merge types in Python's set) is
 *   answered None: "ask the Python walk", which scan.py then runs. tp_traverse of the builtin
 *   containers it walks runs none either. So no other thread runs meanwhile, nothing it walks
 *   changes under it, and a Ctrl-C waits for it to return (at most MAX_OBJECTS objects).
 * - Every object it keeps (the levels, the cached types) is held by a strong reference all the
 *   same: a later change that lets Python code run must not make them dangle.
 * - Sums saturate instead of overflowing: they are only compared with bounds far below.
 * - configure() runs once (scan.py's import): the sets and constants are copied then; scan.py's
 *   _UNCHECKED and MAX_OBJECTS, which tests lower, are passed at each call.
 * - Not the same: gc.get_referents() raises an audit event ("gc.get_referents") at each level
 *   of the Python walk; this walk raises none.
 *
 * Built by setup.py as an optional extension: where it cannot be built (no compiler), or is of
 * another VERSION than scan.py expects, scan.py uses its Python _scan().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define VERSION 1

/* Configured once by configure(): scan.py's sets and constants, its single source of truth. */
static PyObject *atoms, *native_kinds, *containers, *extras, *blobs;
static Py_ssize_t max_depth = -1, sample_size, fast_output, bytes_per_object;
static PyObject *results[6]; /* _CLEAN, _HAS_BYTEARRAY, _REJECT, _SHARED, _TOO_MANY, _NATIVE */
enum { CLEAN, HAS_BYTEARRAY, REJECT, SHARED, TOO_MANY, NATIVE };

/* What a type is, as the Python scan asks it of a level's set of types. */
enum {
    K_NATIVE = 1,     /* in _NATIVE_KINDS */
    K_BLOB = 2,       /* in _BLOBS */
    K_PLAIN = 4,      /* in _PLAIN (_CONTAINERS | _ATOMS) */
    K_CONTAINER = 8,  /* in _CONTAINERS */
    K_EXTRA = 16,     /* in _NATIVE_EXTRAS, but not bytearray */
    K_BYTEARRAY = 32, /* bytearray, which is in _NATIVE_EXTRAS */
    K_ATOM = 64,      /* in _ATOMS */
    K_DEFER = 128,    /* its metaclass defines __hash__ or __eq__: the Python walk decides */
};

#define SATURATED ((uint64_t)1 << 62)

static uint64_t sat_add(uint64_t a, uint64_t b) {
    return (a >= SATURATED || b >= SATURATED || a + b >= SATURATED) ? SATURATED : a + b;
}

static uint64_t sat_mul(uint64_t a, uint64_t b) {
    if (a == 0 || b == 0) return 0;
    return (a >= SATURATED / b) ? SATURATED : a * b;
}

/* --- a growable array of strong references ------------------------------------------------ */
typedef struct {
    PyObject **items;
    Py_ssize_t len, cap;
} Level;

static void level_clear(Level *level) {
    for (Py_ssize_t i = 0; i < level->len; i++) Py_DECREF(level->items[i]);
    level->len = 0;
}

static void level_free(Level *level) {
    level_clear(level);
    PyMem_Free(level->items);
    level->items = NULL;
    level->cap = 0;
}

static int level_append(Level *level, PyObject *obj) {
    if (level->len == level->cap) {
        Py_ssize_t cap = level->cap ? level->cap * 2 : 64;
        if ((size_t)cap > PY_SSIZE_T_MAX / sizeof(PyObject *)) {
            PyErr_NoMemory();
            return -1;
        }
        PyObject **items = PyMem_Realloc(level->items, cap * sizeof(PyObject *));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        level->items = items;
        level->cap = cap;
    }
    Py_INCREF(obj);
    level->items[level->len++] = obj;
    return 0;
}

static int visit_append(PyObject *obj, void *arg) {
    return level_append((Level *)arg, obj);
}

/* --- a type's kind, cached per call ---------------------------------------------------------- */
#define CACHED_KINDS 16
typedef struct {
    PyTypeObject *types[CACHED_KINDS];
    int kinds[CACHED_KINDS];
    int count;
} KindCache;

static void cache_free(KindCache *cache) {
    for (int i = 0; i < cache->count; i++) Py_DECREF(cache->types[i]);
    cache->count = 0;
}

static int member(PyObject *set, PyTypeObject *type, int flag) {
    int found = PySet_Contains(set, (PyObject *)type);
    return found < 0 ? -1 : (found ? flag : 0);
}

/* The builtin types values are made of, and their kinds, found by configure(): static types,
 * which live as long as the interpreter, so no reference is needed, and no set lookup per call
 * (5 per type met: ~6,000 instructions per put of the 4 KiB state). */
#define BUILTINS 12
static PyTypeObject *builtin_types[BUILTINS];
static int builtin_kinds[BUILTINS];

static int kind_lookup(PyTypeObject *type);

/* The kind of ``type``, or -1 with an exception set. */
static int kind_of(KindCache *cache, PyTypeObject *type) {
    for (int i = 0; i < BUILTINS; i++)
        if (builtin_types[i] == type) return builtin_kinds[i];
    for (int i = 0; i < cache->count; i++)
        if (cache->types[i] == type) return cache->kinds[i];
    int kind = kind_lookup(type);
    if (kind >= 0 && cache->count < CACHED_KINDS) {
        /* A strong reference: the instances that kept the type alive may be dropped with
         * their level, and another type made at the same address must not hit the cache. */
        Py_INCREF(type);
        cache->types[cache->count] = type;
        cache->kinds[cache->count++] = kind;
    }
    return kind;
}

/* The kind of ``type`` from scan.py's sets, or -1 with an exception set. */
static int kind_lookup(PyTypeObject *type) {
    PyTypeObject *meta = Py_TYPE(type);
    if (meta->tp_hash != PyType_Type.tp_hash || meta->tp_richcompare != PyType_Type.tp_richcompare)
        return K_DEFER; /* looking it up would run its code: see the top of this file */
    int kind = 0, part;
    if ((part = member(native_kinds, type, K_NATIVE)) < 0) return -1;
    kind |= part;
    if ((part = member(blobs, type, K_BLOB)) < 0) return -1;
    kind |= part;
    if ((part = member(containers, type, K_CONTAINER | K_PLAIN)) < 0) return -1;
    kind |= part;
    if ((part = member(atoms, type, K_ATOM | K_PLAIN)) < 0) return -1;
    kind |= part;
    if ((part = member(extras, type, K_EXTRA)) < 0) return -1;
    kind |= part;
    if (type == &PyByteArray_Type && (kind & K_EXTRA)) kind = (kind & ~K_EXTRA) | K_BYTEARRAY;
    return kind;
}

/* operator.length_hint(obj) for the objects the scan measures (the exact types of _PLAIN);
 * anything else through the general call. -1 with an exception set. */
static int length_hint(PyObject *obj, uint64_t *out) {
    PyTypeObject *type = Py_TYPE(obj);
    Py_ssize_t n;
    if (type == &PyUnicode_Type) n = PyUnicode_GET_LENGTH(obj);
    else if (type == &PyList_Type || type == &PyTuple_Type) n = Py_SIZE(obj);
    else if (type == &PyDict_Type) n = PyDict_GET_SIZE(obj);
    else if (type == &PyBytes_Type) n = PyBytes_GET_SIZE(obj);
    else if (type == &PySet_Type || type == &PyFrozenSet_Type) n = PySet_GET_SIZE(obj);
    else if (type == &PyLong_Type || type == &PyFloat_Type || type == &PyBool_Type ||
             obj == Py_None) n = 0;
    else {
        n = PyObject_LengthHint(obj, 0);
        if (n < 0) return -1;
    }
    *out = (uint64_t)n;
    return 0;
}

/* _repeats(): True if a non-empty container is in the level twice (open addressing on the
 * addresses of the non-empty containers). 1, 0, or -1 with an exception set. */
static int repeats(KindCache *cache, Level *level) {
    size_t cap = 16;
    while (cap < (size_t)level->len * 2) cap *= 2;
    void **slots = PyMem_Calloc(cap, sizeof(void *));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int found = 0;
    for (Py_ssize_t i = 0; i < level->len && !found; i++) {
        PyObject *obj = level->items[i];
        int kind = kind_of(cache, Py_TYPE(obj));
        if (kind < 0) {
            found = -1;
            break;
        }
        if (!(kind & K_CONTAINER)) continue;
        uint64_t size;
        if (length_hint(obj, &size) < 0) {
            found = -1;
            break;
        }
        if (size == 0) continue; /* `and obj`: an empty container may repeat harmlessly */
        size_t h = ((uintptr_t)obj >> 4) * 0x9E3779B97F4A7C15ull;
        for (size_t j = h & (cap - 1);; j = (j + 1) & (cap - 1)) {
            if (slots[j] == NULL) {
                slots[j] = obj;
                break;
            }
            if (slots[j] == obj) {
                found = 1;
                break;
            }
        }
    }
    PyMem_Free(slots);
    return found;
}

/* scan()'s answer for "ask the Python walk" (K_DEFER). */
static PyObject *defer(void) {
    Py_RETURN_NONE;
}

static PyObject *answer(int which) {
    Py_INCREF(results[which]);
    return results[which];
}

/* scan(value, unchecked, max_objects): scan.py's _scan(value) with its _UNCHECKED and
 * MAX_OBJECTS (read there at each call: tests lower them), or None: ask the Python walk. A
 * bound beyond a Py_ssize_t is clamped (compared with counts that cannot reach it); one that
 * is not an int raises TypeError (scan.py then runs the Python walk, which compares it as is). */
static PyObject *scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan(value, unchecked, max_objects)");
        return NULL;
    }
    if (max_depth < 0) {
        PyErr_SetString(PyExc_RuntimeError, "_sqlitesaver_scan.configure() was not called");
        return NULL;
    }
    PyObject *value = args[0];
    if (!PyLong_Check(args[1]) || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "scan(): the bounds must be ints");
        return NULL;
    }
    Py_ssize_t unchecked = PyNumber_AsSsize_t(args[1], NULL);
    if (unchecked == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t max_objects = PyNumber_AsSsize_t(args[2], NULL);
    if (max_objects == -1 && PyErr_Occurred()) return NULL;

    KindCache cache = {.count = 0};
    int top = kind_of(&cache, Py_TYPE(value));
    if (top < 0) {
        cache_free(&cache);
        return NULL;
    }
    if (top & K_DEFER) {
        cache_free(&cache);
        return defer();
    }
    if (top & K_ATOM) { /* a flat value: nothing inside it to look at */
        uint64_t size = 0;
        /* its length only if native, as the Python walk's `and` */
        int failed = (top & K_NATIVE) && length_hint(value, &size) < 0;
        cache_free(&cache);
        if (failed) return NULL;
        return answer((top & K_NATIVE) && size <= (uint64_t)fast_output ? NATIVE : CLEAN);
    }

    Level level = {0}, next = {0};
    PyObject *result = NULL;
    int found = NATIVE, checked = 0, ended = 0;
    uint64_t total = 1, blob_bytes = 0;
    if (level_append(&level, value) < 0) goto done;
    for (Py_ssize_t depth = 0; depth <= max_depth; depth++) {
        /* kinds = set(map(type, level)), as the flags of its members */
        int all_native = 1, any_blob = 0, all_plain = 1, any_container = 0, extra = 0,
            bytearray = 0;
        PyTypeObject *last = NULL;
        int kind = 0;
        for (Py_ssize_t i = 0; i < level.len; i++) {
            PyTypeObject *type = Py_TYPE(level.items[i]);
            if (type != last) {
                kind = kind_of(&cache, type);
                if (kind < 0) goto done;
                if (kind & K_DEFER) {
                    /* (every type of the level is met here first: the filter and repeats()
                     * below only see types this loop passed) */
                    result = defer();
                    goto done;
                }
                last = type;
            }
            all_native &= (kind & K_NATIVE) != 0;
            any_blob |= (kind & K_BLOB) != 0;
            all_plain &= (kind & K_PLAIN) != 0;
            any_container |= (kind & K_CONTAINER) != 0;
            extra |= (kind & K_EXTRA) != 0;
            bytearray |= (kind & K_BYTEARRAY) != 0;
        }
        if (found == NATIVE) {
            if (!all_native) found = CLEAN;
            else if (any_blob) {
                Py_ssize_t n = level.len < sample_size ? level.len : sample_size;
                uint64_t sum = 0, size;
                for (Py_ssize_t i = 0; i < n; i++) {
                    if (length_hint(level.items[i], &size) < 0) goto done;
                    sum = sat_add(sum, size);
                }
                blob_bytes = sat_add(blob_bytes, sat_mul(sum, (uint64_t)level.len) / (uint64_t)n);
            }
        }
        if (!all_plain) {
            if (extra || bytearray) {
                if (extra) {
                    result = answer(REJECT);
                    goto done;
                }
                found = HAS_BYTEARRAY;
            }
            /* level = [obj for obj in level if type(obj) in _CONTAINERS] */
            Py_ssize_t kept = 0;
            for (Py_ssize_t i = 0; i < level.len; i++) {
                PyObject *obj = level.items[i];
                int k = kind_of(&cache, Py_TYPE(obj));
                if (k < 0) {
                    /* keep the array whole for level_free: the rest are still counted */
                    for (Py_ssize_t j = i; j < level.len; j++) level.items[kept++] = level.items[j];
                    level.len = kept;
                    goto done;
                }
                if (k & K_CONTAINER) level.items[kept++] = obj;
                else Py_DECREF(obj);
            }
            level.len = kept;
        } else if (!any_container) {
            ended = 1; /* atoms only: there is no level below */
            break;
        }
        if (!checked && level.len > 1) {
            uint64_t sum = 0, size;
            for (Py_ssize_t i = 0; i < level.len && sum < SATURATED; i++) {
                if (length_hint(level.items[i], &size) < 0) goto done;
                sum = sat_add(sum, size);
            }
            if (sat_add(total, sat_mul(2, sum)) > (uint64_t)(unchecked < 0 ? 0 : unchecked))
                checked = 1;
        }
        if (checked) {
            int r = repeats(&cache, &level);
            if (r < 0) goto done;
            if (r) {
                result = answer(SHARED);
                goto done;
            }
        }
        /* level = gc.get_referents(*level) */
        for (Py_ssize_t i = 0; i < level.len; i++) {
            PyObject *obj = level.items[i];
            traverseproc traverse = Py_TYPE(obj)->tp_traverse;
            if (!PyObject_IS_GC(obj) || traverse == NULL) continue;
            if (traverse(obj, visit_append, &next) != 0) goto done;
        }
        level_clear(&level);
        Level swap = level;
        level = next;
        next = swap;
        total = sat_add(total, (uint64_t)level.len);
        if (total > (uint64_t)(max_objects < 0 ? 0 : max_objects)) {
            result = answer(TOO_MANY);
            goto done;
        }
        if (level.len == 0) {
            ended = 1;
            break;
        }
    }
    if (!ended) {
        result = answer(REJECT); /* more than _MAX_DEPTH levels */
        goto done;
    }
    if (found == NATIVE && blob_bytes > (uint64_t)fast_output &&
            blob_bytes > sat_mul((uint64_t)bytes_per_object, total))
        found = CLEAN; /* mostly str and bytes, which msgpack packs faster */
    result = answer(found);
done:
    level_free(&level);
    level_free(&next);
    cache_free(&cache);
    return result;
}

/* configure(atoms, native_kinds, containers, extras, blobs, max_depth, sample, fast_output,
 *           bytes_per_object, results) */
static PyObject *configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (max_depth >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "_sqlitesaver_scan.configure() runs once");
        return NULL;
    }
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "configure() takes 10 arguments");
        return NULL;
    }
    for (int i = 0; i < 5; i++) {
        if (!PyAnySet_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "configure(): the first five must be sets");
            return NULL;
        }
    }
    Py_ssize_t numbers[4];
    for (int i = 0; i < 4; i++) {
        numbers[i] = PyLong_AsSsize_t(args[5 + i]);
        if (numbers[i] == -1 && PyErr_Occurred()) return NULL;
    }
    if (numbers[0] < 0 || numbers[1] < 1 || numbers[2] < 0 || numbers[3] < 0) {
        PyErr_SetString(PyExc_ValueError, "configure(): bad bounds");
        return NULL;
    }
    if (!PyTuple_Check(args[9]) || PyTuple_GET_SIZE(args[9]) != 6) {
        PyErr_SetString(PyExc_TypeError, "configure(): results must be a tuple of 6");
        return NULL;
    }
    PyObject **sets[5] = {&atoms, &native_kinds, &containers, &extras, &blobs};
    for (int i = 0; i < 5; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*sets[i], args[i]);
    }
    for (int i = 0; i < 6; i++) {
        Py_INCREF(PyTuple_GET_ITEM(args[9], i));
        Py_XSETREF(results[i], PyTuple_GET_ITEM(args[9], i));
    }
    PyTypeObject *builtins[BUILTINS] = {
        Py_TYPE(Py_None), &PyBool_Type, &PyLong_Type, &PyFloat_Type, &PyUnicode_Type,
        &PyBytes_Type, &PyList_Type, &PyDict_Type, &PyTuple_Type, &PySet_Type,
        &PyFrozenSet_Type, &PyByteArray_Type};
    for (int i = 0; i < BUILTINS; i++) {
        builtin_types[i] = NULL; /* looked up in the new sets, not the old kinds */
        int kind = kind_lookup(builtins[i]);
        if (kind < 0) return NULL;
        builtin_kinds[i] = kind;
        builtin_types[i] = builtins[i];
    }
    max_depth = numbers[0];
    sample_size = numbers[1];
    fast_output = numbers[2];
    bytes_per_object = numbers[3];
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(value, unchecked, max_objects): sqlitesaver.codec.scan._scan(value), in C."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(...): scan.py's sets and bounds (called once, by scan.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_sqlitesaver_scan",
    .m_doc = "sqlitesaver.codec.scan._scan() in C (see sqlitesaver/codec/_scan.c).",
    .m_size = -1,
    .m_methods = methods,
};

#ifndef SOURCE_SHA256
#define SOURCE_SHA256 "unknown" /* built without setup.py */
#endif

PyMODINIT_FUNC PyInit__sqlitesaver_scan(void) {
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && (PyModule_AddIntConstant(module, "VERSION", VERSION) < 0 ||
                           PyModule_AddStringConstant(module, "SOURCE_SHA256", SOURCE_SHA256) < 0)) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
