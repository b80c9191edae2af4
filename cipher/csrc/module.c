/*
 * cipher._native: the Python binding of the C core (sf_core.h). Buffers come in through
 * the buffer protocol (numpy arrays, bytes, bytearray); every size is checked before
 * anything is written. The GIL is released around every loop long enough to be worth it:
 * a release and retake costs two thread wake-ups when other threads want the GIL, more
 * than the few microseconds of the health check or the S-box stream.
 *
 * Module attributes: KERNELS, the kernels this CPU runs, fastest first (the table kernel
 * last); BUILT, every kernel compiled in; CONSTANT_TIME, those without secret-indexed
 * memory access. Which kernel runs is always the caller's argument.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "dicomwalk.h"
#include "sf_core.h"

#define MAX_STREAM_LANES (1 << 20)

/* Steps or bytes of work below which the GIL is kept (about 20 µs and less). */
#define NOGIL_MIN ((Py_ssize_t)1 << 15)

/* stmt, with the GIL released when `big` (a loop long enough to be worth it). */
#define RUN(big, stmt)                \
    do {                              \
        if (big) {                    \
            Py_BEGIN_ALLOW_THREADS    \
            stmt;                     \
            Py_END_ALLOW_THREADS      \
        } else {                      \
            stmt;                     \
        }                             \
    } while (0)

static int check_map_args(double x0, double r, double quant)
{
    if (!(x0 >= 0.0 && x0 <= 1.0) || !(r >= 0.0 && r <= 4.0) || !(quant >= 1.0 && quant <= 4294967296.0)) {
        PyErr_SetString(PyExc_ValueError, "logistic map needs 0 <= x0 <= 1, 0 <= r <= 4, 1 <= quant <= 2^32");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(scalar_samples_doc,
"scalar_samples(x0, r, count, transient, quant) -> bytes\n\n"
"count samples (uint64(x*quant) mod 256) of one logistic map after transient discarded steps.");

static PyObject *py_scalar_samples(PyObject *self, PyObject *args)
{
    double x0, r, quant;
    Py_ssize_t count, transient;
    (void)self;
    if (!PyArg_ParseTuple(args, "ddnnd:scalar_samples", &x0, &r, &count, &transient, &quant))
        return NULL;
    if (check_map_args(x0, r, quant) < 0)
        return NULL;
    if (count < 0 || transient < 0) {
        PyErr_SetString(PyExc_ValueError, "count and transient must be >= 0");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, count);
    if (out == NULL)
        return NULL;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    RUN(count + transient >= NOGIL_MIN, sf_scalar_fill(x0, r, transient, quant, dst, count));
    return out;
}

PyDoc_STRVAR(stream_samples_doc,
"stream_samples(x0, r, count, lanes, step, transient, quant) -> bytes\n\n"
"count bytes from `lanes` logistic maps started at x0 + j*step and iterated together;\n"
"after `transient` discarded steps each step yields one sample per lane, lane 0 first.");

static PyObject *py_stream_samples(PyObject *self, PyObject *args)
{
    double x0, r, step, quant;
    Py_ssize_t count, lanes, transient;
    (void)self;
    if (!PyArg_ParseTuple(args, "ddnndnd:stream_samples", &x0, &r, &count, &lanes, &step, &transient, &quant))
        return NULL;
    if (check_map_args(x0, r, quant) < 0)
        return NULL;
    if (count < 0 || transient < 0 || lanes < 1 || lanes > MAX_STREAM_LANES) {
        PyErr_SetString(PyExc_ValueError, "need count >= 0, transient >= 0 and 1 <= lanes <= 2^20");
        return NULL;
    }
    if (!(step >= 0.0) || !(x0 + (double)(lanes - 1) * step <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "lane seeds x0 + j*step must stay in [0, 1]");
        return NULL;
    }
    double *x = PyMem_Malloc((size_t)lanes * sizeof(double));
    if (x == NULL)
        return PyErr_NoMemory();
    PyObject *out = PyBytes_FromStringAndSize(NULL, count);
    if (out == NULL) {
        PyMem_Free(x);
        return NULL;
    }
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    RUN(count + lanes * transient >= NOGIL_MIN, sf_stream_fill(x0, r, lanes, step, transient, quant, x, dst, count));
    PyMem_Free(x);
    return out;
}

PyDoc_STRVAR(distinct_doc, "distinct(buf) -> int\n\nNumber of distinct byte values in a buffer (constant time).");

static PyObject *py_distinct(PyObject *self, PyObject *arg)
{
    Py_buffer b;
    int n;
    (void)self;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    RUN(b.len >= NOGIL_MIN, n = sf_distinct(b.buf, b.len));
    PyBuffer_Release(&b);
    return PyLong_FromLong(n);
}

PyDoc_STRVAR(matrix_doc,
"matrix(size) -> bytearray\n\n"
"A new matrix of size bytes for encrypt/decrypt with src, not initialised (the first pass\n"
"writes every byte): no zero-filling pass over memory the cipher overwrites anyway.");

static PyObject *py_matrix(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must be >= 0");
        return NULL;
    }
    return PyByteArray_FromStringAndSize(NULL, size);
}

PyDoc_STRVAR(sbox_doc,
"sbox(samples) -> (S, S_inv)\n\n"
"The S-box and its inverse (256 bytes each) from the 34 used samples of the S-box stream.");

static PyObject *py_sbox(PyObject *self, PyObject *args)
{
    Py_buffer smp;
    sf_sbox d;
    uint8_t s[256], inv[256];
    (void)self;
    if (!PyArg_ParseTuple(args, "y*:sbox", &smp))
        return NULL;
    if (smp.len != SF_SBOX_SAMPLES) {
        PyBuffer_Release(&smp);
        PyErr_Format(PyExc_ValueError, "S-box needs %d samples, got %zd", SF_SBOX_SAMPLES, smp.len);
        return NULL;
    }
    sf_sbox_from_samples(smp.buf, &d);
    PyBuffer_Release(&smp);
    for (unsigned x = 0; x < 256; x++) {
        s[x] = sf_sbox_eval(&d, x);
        inv[s[x]] = (uint8_t)x;
    }
    return Py_BuildValue("(y#y#)", (const char *)s, (Py_ssize_t)256, (const char *)inv, (Py_ssize_t)256);
}

static PyObject *run_cipher(PyObject *args, PyObject *kwargs, int forward)
{
    static char *kwlist[] = {"m", "st", "sbox_samples", "g_f", "g_b", "lane_bits", "last", "tail_start", "kernel", "src", NULL};
    Py_buffer mb, sb, xb, srcb;
    int g_f, g_b, k, have_src = 0;
    Py_ssize_t last, t0;
    const char *name;
    PyObject *src = Py_None, *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, forward ? "w*y*y*iiinns|O:encrypt" : "w*y*y*iiinns|O:decrypt", kwlist,
                                     &mb, &sb, &xb, &g_f, &g_b, &k, &last, &t0, &name, &src))
        return NULL;
    const sf_kernel *kn = sf_kernel_named(name);
    if (kn == NULL) {
        PyErr_Format(PyExc_ValueError, "unknown chaos kernel '%s'", name);
        goto done;
    }
    if (k < 0 || k > SF_MAX_LANE_BITS) {
        PyErr_Format(PyExc_ValueError, "lane_bits must be in [0, %d], got %d", SF_MAX_LANE_BITS, k);
        goto done;
    }
    Py_ssize_t L = (Py_ssize_t)1 << k;
    if (mb.len <= 0 || mb.len % L != 0) {
        PyErr_Format(PyExc_ValueError, "matrix of %zd bytes is not a positive number of rows of %zd lanes", mb.len, L);
        goto done;
    }
    Py_ssize_t R = mb.len / L;
    if (last < 1 || last > L) {
        PyErr_Format(PyExc_ValueError, "last must be in [1, %zd], got %zd", L, last);
        goto done;
    }
    if (t0 < 1 || t0 > R) {
        PyErr_Format(PyExc_ValueError, "tail_start must be in [1, %zd], got %zd", R, t0);
        goto done;
    }
    if (sb.len != 4 * L + 2 * R) {
        PyErr_Format(PyExc_ValueError, "stream must hold 4L + 2R = %zd bytes, got %zd", 4 * L + 2 * R, sb.len);
        goto done;
    }
    if (xb.len != SF_SBOX_SAMPLES) {
        PyErr_Format(PyExc_ValueError, "S-box needs %d samples, got %zd", SF_SBOX_SAMPLES, xb.len);
        goto done;
    }
    if (g_f < 0 || g_f > 255 || g_b < 0 || g_b > 255) {
        PyErr_SetString(PyExc_ValueError, "g_f and g_b must be bytes (0..255)");
        goto done;
    }
    if (src != Py_None) {
        if (PyObject_GetBuffer(src, &srcb, PyBUF_SIMPLE) < 0)
            goto done;
        have_src = 1;
        if (srcb.len != (R - 1) * L + last) {
            PyErr_Format(PyExc_ValueError, "src must hold (R-1)*L + last = %zd bytes, got %zd", (R - 1) * L + last, srcb.len);
            goto done;
        }
    }
    if (!kn->cpu_ok()) {
        PyErr_Format(PyExc_RuntimeError, "this CPU cannot run the %s chaos kernel", kn->name);
        goto done;
    }
    sf_sbox sd;
    sf_sbox_from_samples(xb.buf, &sd);
    const uint8_t *st = sb.buf;
    sf_job jb = {mb.buf, R, L, last, t0, k, st, st + L, st + 2 * L, st + 3 * L, st + 4 * L, st + 4 * L + R,
                 have_src ? (const uint8_t *)srcb.buf : NULL, 0};
    Py_BEGIN_ALLOW_THREADS
    if (forward)
        sf_encrypt(&jb, &sd, (uint8_t)g_f, (uint8_t)g_b, kn);
    else
        sf_decrypt(&jb, &sd, (uint8_t)g_f, (uint8_t)g_b, kn);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&mb);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&xb);
    if (have_src)
        PyBuffer_Release(&srcb);
    return result;
}

PyDoc_STRVAR(encrypt_doc,
"encrypt(m, st, sbox_samples, g_f, g_b, lane_bits, last, tail_start, kernel, src=None) -> None\n\n"
"Encrypt the padded rows x lanes byte matrix m in place (forward, backward and tail passes)\n"
"with the named kernel (one of KERNELS); with src (the (R-1)*L + last input bytes), m need\n"
"not be initialised: the input is read from src and the matrix (zero padding included)\n"
"written by the first pass. st: the 4L + 2R used samples of the byte stream (IVF, KF, IVB,\n"
"KB, WF, WB); sbox_samples: the 34 used samples of the S-box stream; g_f, g_b: the\n"
"multipliers; L = 2^lane_bits, R = len(m) / L. ValueError for bad sizes or an unknown\n"
"kernel, RuntimeError for a kernel this CPU cannot run.");

static PyObject *py_encrypt(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    return run_cipher(args, kwargs, 1);
}

PyDoc_STRVAR(decrypt_doc,
"decrypt(m, st, sbox_samples, g_f, g_b, lane_bits, last, tail_start, kernel, src=None) -> None\n\n"
"Exact inverse of encrypt on the padded matrix (tail, backward, forward undone); src as for\n"
"encrypt.");

static PyObject *py_decrypt(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    return run_cipher(args, kwargs, 0);
}

static PyMethodDef methods[] = {
    {"scalar_samples", py_scalar_samples, METH_VARARGS, scalar_samples_doc},
    {"stream_samples", py_stream_samples, METH_VARARGS, stream_samples_doc},
    {"distinct", py_distinct, METH_O, distinct_doc},
    {"matrix", py_matrix, METH_O, matrix_doc},
    {"walk", sf_py_walk, METH_VARARGS,
     "walk(buf, pos, little, explicit, stop_group, keep_group, keep_tags) -> (elements, status, end)\n\n"
     "The top-level element headers of a DICOM data set in memory (see csrc/dicomwalk.c)."},
    {"sbox", py_sbox, METH_VARARGS, sbox_doc},
    {"encrypt", (PyCFunction)(void (*)(void))py_encrypt, METH_VARARGS | METH_KEYWORDS, encrypt_doc},
    {"decrypt", (PyCFunction)(void (*)(void))py_decrypt, METH_VARARGS | METH_KEYWORDS, decrypt_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "cipher._native",
    "C kernels of the ScanFort chaos cipher v1 (see cipher/csrc/ and cipher/SPEC.md).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

/* A tuple of the names of the kernels for which keep(kernel) holds, in list order. */
static PyObject *names(int (*keep)(const sf_kernel *))
{
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < sf_kernel_count; i++) {
        if (!keep(sf_kernels[i]))
            continue;
        PyObject *s = PyUnicode_FromString(sf_kernels[i]->name);
        if (s == NULL || PyList_Append(out, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(s);
    }
    PyObject *t = PyList_AsTuple(out);
    Py_DECREF(out);
    return t;
}

static int runs_here(const sf_kernel *kn)
{
    return kn->cpu_ok();
}

static int built(const sf_kernel *kn)
{
    (void)kn;
    return 1;
}

static int constant_time(const sf_kernel *kn)
{
    return kn->constant_time;
}

PyMODINIT_FUNC PyInit__native(void)
{
    sf_init();
#if SF_X86
    __builtin_cpu_init();
#endif
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    const char *attr[] = {"KERNELS", "BUILT", "CONSTANT_TIME"};
    int (*keep[])(const sf_kernel *) = {runs_here, built, constant_time};
    for (int i = 0; i < 3; i++) {
        PyObject *value = names(keep[i]);
        if (value == NULL || PyModule_AddObject(mod, attr[i], value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(mod);
            return NULL;
        }
    }
    return mod;
}
