/* cipher._native.walk (dicomwalk.c): the top-level element headers of a DICOM data set. */
#ifndef SF_DICOMWALK_H
#define SF_DICOMWALK_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyObject *sf_py_walk(PyObject *self, PyObject *args);

#endif
