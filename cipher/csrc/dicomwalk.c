/*
 * cipher._native.walk: the top-level element headers of a DICOM data set held in memory.
 *
 * The same walk as cipher/dicomstream.py's reader over bytes in memory (_MemIn, _scan,
 * _skip_items, _skip_dataset), which stays the reference and the path for streams: a
 * restore reads a file's leading elements twice (the archive's copy, then the original's
 * skeleton), about a hundred elements at a few microseconds each in Python. Here the walk
 * only finds where elements are; what they mean (the UIDs, ScanFort's block, when to stop)
 * is decided in Python from the headers returned.
 *
 * walk(buf, pos, little, explicit, stop_group, keep_group, keep_tags) -> (elements, status, end)
 *
 *   elements: [(group, element, vr, length, value_offset), ...] of the top-level elements
 *             from `pos` that are in group `keep_group` or among `keep_tags` (a tuple of
 *             group << 16 | element), and the last one of a PIXELS or STOPPED walk, in
 *             order; vr is b"" for an implicit VR element or an item tag.
 *             Each value but the last element's was stepped over (one of undefined
 *             length, a sequence or an encapsulated or UN value, through its items): it
 *             lies within the buffer.
 *   status:   END (0)       the data ended at an element boundary; end = len(buf)
 *             PIXELS (1)    the last element is (7FE0,0010); end = its value's offset
 *             STOPPED (2)   the last element is the first of a group above stop_group
 *                           (stop_group < 0: never); end = where it starts (a walk
 *                           from there goes on past it)
 *             SHORT (-1)    the data ends inside an element: its header or its value
 *             MALFORMED (-2) a VR that is not two letters, a malformed sequence, or
 *                           sequences nested deeper than 32
 *             (for both errors, end is where the failing element starts; it is not
 *             returned, those before it are: the caller meets the error where the Python
 *             walk would, after the same elements).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#include "dicomwalk.h"

enum { END = 0, PIXELS = 1, STOPPED = 2, SHORT = -1, MALFORMED = -2 };

#define UNDEFINED 0xFFFFFFFFu
#define MAX_DEPTH 32

typedef struct {
    const uint8_t *buf;
    Py_ssize_t len, pos;
    int little;
} walker;

typedef struct {
    unsigned group, elem;
    char vr[2];
    int has_vr;
    uint32_t length;
} header;

static unsigned u16(const walker *w, Py_ssize_t at)
{
    const uint8_t *p = w->buf + at;
    return w->little ? (unsigned)(p[0] | p[1] << 8) : (unsigned)(p[0] << 8 | p[1]);
}

static uint32_t u32(const walker *w, Py_ssize_t at)
{
    const uint8_t *p = w->buf + at;
    return w->little ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
                     : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static int is_letter(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int long_vr(const char *vr)
{
    static const char *const names[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (vr[0] == names[i][0] && vr[1] == names[i][1])
            return 1;
    return 0;
}

/* The next element's header (dicomstream._MemIn.header): 0, or SHORT / MALFORMED. */
static int read_header(walker *w, int explicit, header *h)
{
    Py_ssize_t pos = w->pos;
    if (pos + 8 > w->len)
        return SHORT;
    h->group = u16(w, pos);
    h->elem = u16(w, pos + 2);
    h->has_vr = 0;
    if (h->group == 0xFFFE || !explicit) { /* items and delimiters never carry a VR */
        h->length = u32(w, pos + 4);
        w->pos = pos + 8;
        return 0;
    }
    h->vr[0] = (char)w->buf[pos + 4];
    h->vr[1] = (char)w->buf[pos + 5];
    h->has_vr = 1;
    if (long_vr(h->vr)) {
        if (pos + 12 > w->len)
            return SHORT;
        h->length = u32(w, pos + 8);
        w->pos = pos + 12;
        return 0;
    }
    if (!is_letter(w->buf[pos + 4]) || !is_letter(w->buf[pos + 5]))
        return MALFORMED;
    h->length = u16(w, pos + 6);
    w->pos = pos + 8;
    return 0;
}

static int skip(walker *w, uint32_t n)
{
    if ((Py_ssize_t)n > w->len - w->pos)
        return SHORT;
    w->pos += (Py_ssize_t)n;
    return 0;
}

static int skip_dataset(walker *w, int explicit, int depth);

/* The items of an undefined-length value up to its sequence delimiter (_skip_items). */
static int skip_items(walker *w, int little, int explicit, int depth)
{
    if (depth > MAX_DEPTH)
        return MALFORMED;
    int outer = w->little;
    w->little = little;
    int rc = 0;
    for (;;) {
        header h;
        if ((rc = read_header(w, 0, &h)) != 0)
            break;
        if (h.group == 0xFFFE && h.elem == 0xE0DD)
            break;
        if (h.group != 0xFFFE || h.elem != 0xE000) {
            rc = MALFORMED;
            break;
        }
        rc = h.length != UNDEFINED ? skip(w, h.length) : skip_dataset(w, explicit, depth + 1);
        if (rc != 0)
            break;
    }
    w->little = outer;
    return rc;
}

/* The elements of an undefined-length item up to its item delimiter (_skip_dataset). */
static int skip_dataset(walker *w, int explicit, int depth)
{
    for (;;) {
        header h;
        int rc = read_header(w, explicit, &h);
        if (rc != 0)
            return rc;
        if (h.group == 0xFFFE && h.elem == 0xE00D)
            return 0;
        if (h.length == UNDEFINED) {
            /* an undefined-length UN holds an implicit VR little endian sequence (PS3.5 6.2.2) */
            int un = h.has_vr && h.vr[0] == 'U' && h.vr[1] == 'N';
            rc = un ? skip_items(w, 1, 0, depth + 1) : skip_items(w, w->little, explicit, depth + 1);
        } else {
            rc = skip(w, h.length);
        }
        if (rc != 0)
            return rc;
    }
}

static int append(PyObject *list, const header *h, Py_ssize_t value)
{
    PyObject *item = Py_BuildValue("(IIy#kn)", h->group, h->elem, h->vr, (Py_ssize_t)(h->has_vr ? 2 : 0),
                                   (unsigned long)h->length, value);
    if (item == NULL)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

PyObject *sf_py_walk(PyObject *self, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t pos;
    int little, explicit;
    long stop_group, keep_group;
    PyObject *keep_tags;
    uint32_t tags[8];
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nppllO!:walk", &b, &pos, &little, &explicit, &stop_group, &keep_group,
                          &PyTuple_Type, &keep_tags))
        return NULL;
    Py_ssize_t ntags = PyTuple_GET_SIZE(keep_tags);
    if (ntags > 8) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "at most 8 keep_tags");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < ntags; i++) {
        unsigned long t = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(keep_tags, i));
        if (t == (unsigned long)-1 && PyErr_Occurred()) {
            PyBuffer_Release(&b);
            return NULL;
        }
        tags[i] = (uint32_t)t;
    }
    if (pos < 0 || pos > b.len) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "pos must be within the buffer");
        return NULL;
    }
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        PyBuffer_Release(&b);
        return NULL;
    }
    walker w = {(const uint8_t *)b.buf, b.len, pos, little};
    int status = END;
    Py_ssize_t end = pos;
    for (;;) {
        Py_ssize_t start = w.pos;
        if (start == w.len) {
            status = END;
            end = start;
            break;
        }
        header h;
        int rc = read_header(&w, explicit, &h);
        if (rc == 0) {
            Py_ssize_t value = w.pos;
            int last = (h.group == 0x7FE0 && h.elem == 0x0010) || (stop_group >= 0 && (long)h.group > stop_group);
            if (!last) { /* its value is stepped over before it is returned */
                int un = h.has_vr && h.vr[0] == 'U' && h.vr[1] == 'N';
                if (h.length != UNDEFINED)
                    rc = skip(&w, h.length);
                else
                    rc = un ? skip_items(&w, 1, 0, 0) : skip_items(&w, w.little, explicit, 0);
            }
            int keep = last || (long)h.group == keep_group;
            for (Py_ssize_t i = 0; i < ntags && !keep; i++)
                keep = tags[i] == ((uint32_t)h.group << 16 | h.elem);
            if (rc == 0 && keep && append(list, &h, value) < 0) {
                Py_DECREF(list);
                PyBuffer_Release(&b);
                return NULL;
            }
            if (rc == 0 && last) {
                int pixels = h.group == 0x7FE0 && h.elem == 0x0010;
                status = pixels ? PIXELS : STOPPED;
                end = pixels ? w.pos : start;
                break;
            }
        }
        if (rc != 0) { /* the element is not returned: the error is met at it */
            status = rc;
            end = start;
            break;
        }
    }
    PyBuffer_Release(&b);
    return Py_BuildValue("(Nin)", list, status, end);
}
