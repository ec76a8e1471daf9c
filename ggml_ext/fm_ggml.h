/* The ggml functions the extension calls, resolved at run time from the ggml that llama-cpp-python already
 * loaded (libggml-base.so.0, libggml.so.0, libggml-cpu.so.0: the sonames libllama links against), so this
 * process never gets a second copy of ggml. Prototypes come from the pinned ggml headers via __typeof__. */
#ifndef FM_GGML_H
#define FM_GGML_H

#include <stddef.h>

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-backend-impl.h"
#include "ggml-cpu.h"

#define FM_GGML_FUNCS(X)                    \
    X(base, ggml_version)                   \
    X(base, ggml_nbytes)                    \
    X(base, ggml_row_size)                  \
    X(base, ggml_type_name)                 \
    X(base, ggml_op_name)                   \
    X(base, ggml_get_type_traits)           \
    X(base, ggml_graph_n_nodes)             \
    X(base, ggml_graph_node)                \
    X(base, ggml_backend_buffer_init)       \
    X(base, ggml_backend_buft_is_host)      \
    X(base, ggml_backend_dev_type)          \
    X(base, ggml_backend_dev_host_buffer_type) \
    X(base, ggml_init)                      \
    X(base, ggml_free)                      \
    X(base, ggml_tensor_overhead)           \
    X(base, ggml_graph_overhead_custom)     \
    X(base, ggml_new_tensor_2d)             \
    X(base, ggml_new_tensor_3d)             \
    X(base, ggml_mul_mat_id)                \
    X(base, ggml_new_graph_custom)          \
    X(base, ggml_build_forward_expand)      \
    X(base, ggml_graph_add_node)            \
    X(reg, ggml_backend_register)           \
    X(reg, ggml_backend_dev_count)          \
    X(reg, ggml_backend_dev_get)            \
    X(cpu, ggml_get_type_traits_cpu)        \
    X(cpu, ggml_backend_cpu_buffer_type)    \
    X(cpu, ggml_cpu_init)                   \
    X(cpu, ggml_cpu_has_avx2)               \
    X(cpu, ggml_cpu_has_fma)                \
    X(cpu, ggml_graph_plan)                 \
    X(cpu, ggml_graph_compute)

struct fm_ggml {
#define FM_DECLARE(lib, fn) __typeof__(fn) *fn;
    FM_GGML_FUNCS(FM_DECLARE)
#undef FM_DECLARE
};

/* The table, filled once by fm_ggml_load(); read-only afterwards. */
extern struct fm_ggml fm_g;

/* Resolve every function from the libraries in lib_dir, which must already be loaded in this process.
 * Returns 0, or -1 with a message in err. */
int fm_ggml_load(const char *lib_dir, char *err, size_t err_len);

#endif
