// Python module opmask_fast._C. Importing it runs the TORCH_LIBRARY registrations of every linked source; the
// module itself only reports how it was built.
#include <Python.h>

static struct PyModuleDef opmask_fast_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&opmask_fast_module);
  if (m == nullptr) return nullptr;
#ifdef OPMASK_FAST_WITH_CUDA
  PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
  return m;
}
