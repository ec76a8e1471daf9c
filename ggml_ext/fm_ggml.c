/* Resolves the ggml functions of llama-cpp-python's already-loaded libraries (see fm_ggml.h). */
#define _GNU_SOURCE
#include "fm_ggml.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "fm_build_info.h"

struct fm_ggml fm_g;

static void *open_loaded(const char *lib_dir, const char *soname, char *err, size_t err_len) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", lib_dir, soname) >= (int) sizeof path) {
        snprintf(err, err_len, "library path too long");
        return NULL;
    }
    /* RTLD_NOLOAD: only accept the copy llama_cpp already loaded */
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!h) {
        snprintf(err, err_len, "%s is not loaded in this process (import llama_cpp first): %s", path, dlerror());
    }
    return h;
}

int fm_ggml_load(const char *lib_dir, char *err, size_t err_len) {
    void *base = open_loaded(lib_dir, "libggml-base.so.0", err, err_len);
    if (!base) return -1;
    void *reg = open_loaded(lib_dir, "libggml.so.0", err, err_len);
    if (!reg) return -1;
    void *cpu = open_loaded(lib_dir, "libggml-cpu.so.0", err, err_len);
    if (!cpu) return -1;
    struct fm_ggml t;
    memset(&t, 0, sizeof t);
#define FM_RESOLVE(lib, fn)                                                                 \
    do {                                                                                    \
        void *p = dlsym(lib, #fn);                                                          \
        if (!p) {                                                                           \
            snprintf(err, err_len, "symbol %s not found in the loaded ggml", #fn);          \
            return -1;                                                                      \
        }                                                                                   \
        memcpy(&t.fn, &p, sizeof p);                                                        \
    } while (0);
    FM_GGML_FUNCS(FM_RESOLVE)
#undef FM_RESOLVE
    const char *v = t.ggml_version();
    if (!v || strcmp(v, FM_GGML_VERSION) != 0) {
        snprintf(err, err_len, "loaded ggml is version %s, but this extension was built against ggml %s "
                 "(llama-cpp-python %s); reinstall flashmoe-gguf against the installed llama-cpp-python",
                 v ? v : "(unknown)", FM_GGML_VERSION, FM_LLAMA_CPP_PYTHON_VERSION);
        return -1;
    }
    fm_g = t;
    return 0;
}
