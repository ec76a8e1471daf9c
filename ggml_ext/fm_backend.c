/* The flashmoe ggml backend: an ACCEL device that takes over the routed-expert MUL_MAT_ID nodes.
 *
 * Placement: llama.cpp tries ACCEL devices' buffer types first for CPU-resident weights and keeps the first
 * whose device `supports_op` the weight's op. We accept MUL_MAT_ID only for the tensors in the expert table of
 * the model being loaded through flashmoe on this thread (the load scope, fm_backend_begin_load), so stock
 * models, in the same process and on other threads, are untouched. Our buffer type
 * is not host memory: the loader hands us expert bytes through set_tensor and we drop them (usage WEIGHTS),
 * backing the buffer with an untouched MAP_NORESERVE mapping. Only weights live in our buffer type: the
 * scheduler's compute buffers for our backend come from a host buffer type (compute_buft). The backend accepts
 * host buffers, so activations and router ids are read in place, without copies. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fm_clock.h"
#include "fm_ggml.h"
#include "fm_matmul.h"
#include "fm_model.h"

#define FM_NAME "FLASHMOE"

typedef struct {
    void *base;
    size_t size;
    fm_model *model;
} fm_buffer_ctx;

typedef struct {
    fm_pool *pool;
    int n_threads;
    void *ctx_mem;        /* graph_compute: the one-run graphs of the expert block's element-wise ops */
    size_t ctx_size;
    void *work;           /* ggml-cpu's work buffer for them */
    size_t work_cap;
} fm_backend_ctx;

/* registration happens once per process; the device, buffer type and registry below are filled then and only
   read afterwards (ggml keeps pointers to them) */
static pthread_mutex_t g_register_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_registered;

/* The load scope: the model whose weights llama.cpp is loading on this thread. A load runs entirely on the
 * thread that called llama_model_load_from_file_ptr (placement probes, buffer allocation, tensor uploads), so a
 * thread-local needs no lock, and loads on other threads (flashmoe or stock) never see it. */
static _Thread_local fm_model *tl_loading;

int fm_backend_begin_load(fm_model *m) {
    if (tl_loading) return -1;
    tl_loading = m;
    return 0;
}

void fm_backend_end_load(void) {
    tl_loading = NULL;
}

/* ---- buffer ------------------------------------------------------------------------------------------ */

static struct ggml_backend_buffer_type g_buft;

static void buf_free(ggml_backend_buffer_t buffer) {
    fm_buffer_ctx *c = buffer->context;
    if (c->base) munmap(c->base, c->size);
    free(c);
}

static void *buf_get_base(ggml_backend_buffer_t buffer) {
    return ((fm_buffer_ctx *) buffer->context)->base;
}

/* a tensor of a buffer allocated during a flashmoe load (its weights: supports_op placed only expert-table
   tensors here) becomes that table entry (tensor->extra) */
static enum ggml_status buf_init_tensor(ggml_backend_buffer_t buffer, struct ggml_tensor *tensor) {
    fm_buffer_ctx *c = buffer->context;
    if (tensor->view_src == NULL && c->model) {
        int idx = fm_store_find(c->model->store, tensor->name);
        if (idx >= 0) {
            tensor->extra = (void *) (uintptr_t) fm_store_tensor(c->model->store, idx);
            fm_store_bind(c->model->store, idx);
            c->model->n_bound++;
        }
    }
    return GGML_STATUS_SUCCESS;
}

static int is_weights(ggml_backend_buffer_t buffer) {
    return buffer->usage == GGML_BACKEND_BUFFER_USAGE_WEIGHTS;
}

static void buf_memset_tensor(ggml_backend_buffer_t buffer, struct ggml_tensor *tensor, uint8_t value, size_t offset,
                              size_t size) {
    if (is_weights(buffer) || tensor->extra) return;
    memset((char *) tensor->data + offset, value, size);
}

static void buf_set_tensor(ggml_backend_buffer_t buffer, struct ggml_tensor *tensor, const void *data, size_t offset,
                           size_t size) {
    fm_buffer_ctx *c = buffer->context;
    if (is_weights(buffer) || tensor->extra) {
        /* expert bytes: they stay on disk and are read when a token selects the expert */
        if (c->model) c->model->dropped += size;
        return;
    }
    memcpy((char *) tensor->data + offset, data, size);
}

static void buf_get_tensor(ggml_backend_buffer_t buffer, const struct ggml_tensor *tensor, void *data, size_t offset,
                           size_t size) {
    fm_buffer_ctx *c = buffer->context;
    const fm_tensor_info *t = tensor->extra;
    if (t && c->model) { /* weights read back (rare): from the file */
        fm_store_read_weights(c->model->store, t->index, offset, data, size);
        return;
    }
    memcpy(data, (const char *) tensor->data + offset, size);
}

static void buf_clear(ggml_backend_buffer_t buffer, uint8_t value) {
    fm_buffer_ctx *c = buffer->context;
    if (is_weights(buffer)) return; /* would commit the whole untouched mapping */
    memset(c->base, value, c->size);
}

static const struct ggml_backend_buffer_i g_buffer_iface = {
    .free_buffer = buf_free,
    .get_base = buf_get_base,
    .init_tensor = buf_init_tensor,
    .memset_tensor = buf_memset_tensor,
    .set_tensor = buf_set_tensor,
    .get_tensor = buf_get_tensor,
    .set_tensor_2d = NULL,
    .get_tensor_2d = NULL,
    .cpy_tensor = NULL,
    .clear = buf_clear,
    .reset = NULL,
};

static const char *buft_get_name(ggml_backend_buffer_type_t buft) {
    (void) buft;
    return FM_NAME;
}

/* Where the scheduler's intermediates for our backend live (the default buffer type of our backend, see
 * g_dev_compute): the buffer type stock llama.cpp gives its CPU backend (llama_context: the first GPU device's host
 * buffer type, CUDA's pinned CUDA_Host, else the CPU buffer type). The scheduler then sees the same buffer type for
 * the CPU backend and ours, so neither copies the other's results (a CPU-only decode step made a copy at each of
 * the four crossings of every MoE layer), and a crossing from or to a GPU is one transfer from pinned memory, as for
 * stock's CPU split (in our own buffer type, not host, each went through ggml_backend_tensor_copy's slow path: a
 * malloc'ed staging copy and a pageable transfer). */
static ggml_backend_buffer_type_t compute_buft(void) {
    size_t n = fm_g.ggml_backend_dev_count();
    for (size_t i = 0; i < n; i++) {
        ggml_backend_dev_t dev = fm_g.ggml_backend_dev_get(i);
        if (dev && fm_g.ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_GPU) {
            ggml_backend_buffer_type_t host = fm_g.ggml_backend_dev_host_buffer_type(dev);
            if (host) return host;
            break;
        }
    }
    return fm_g.ggml_backend_cpu_buffer_type();
}

static ggml_backend_buffer_t buft_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    fm_buffer_ctx *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    size_t page = (size_t) sysconf(_SC_PAGESIZE);
    c->size = size ? (size + page - 1) / page * page : page;
    /* MAP_NORESERVE: expert weights never touch their pages; intermediates commit what they use */
    c->base = mmap(NULL, c->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (c->base == MAP_FAILED) {
        free(c);
        return NULL;
    }
#ifdef MADV_NOHUGEPAGE
    /* a reservation: never huge pages (a touched page would commit 2 MiB), and flashmoe_gguf/hugepages.py, which
       advises the buffers llama.cpp fills during a load, tells it apart by this flag. Failure changes neither. */
    (void) madvise(c->base, c->size, MADV_NOHUGEPAGE);
#endif
    c->model = tl_loading;
    return fm_g.ggml_backend_buffer_init(buft, g_buffer_iface, c, size);
}

static size_t buft_get_alignment(ggml_backend_buffer_type_t buft) {
    (void) buft;
    return 64;
}

static bool buft_is_host(ggml_backend_buffer_type_t buft) {
    (void) buft;
    return false; /* the no-mmap loader would otherwise read experts straight into our (dropped) memory */
}

/* ---- backend ----------------------------------------------------------------------------------------- */

static ggml_guid g_guid = {0x66, 0x6c, 0x61, 0x73, 0x68, 0x6d, 0x6f, 0x65, 0x2d, 0x67, 0x67, 0x75, 0x66, 0x00, 0x01, 0x00};

static const char *be_get_name(ggml_backend_t backend) {
    (void) backend;
    return FM_NAME;
}

static void be_free(ggml_backend_t backend) {
    fm_backend_ctx *c = backend->context;
    fm_pool_free(c->pool);
    free(c->ctx_mem);
    free(c->work);
    free(c);
    free(backend);
}

/* ---- the routed-expert block of a GPU-hybrid model --------------------------------------------------------
 *
 * With layers on a GPU, stock llama.cpp with the experts in CPU memory (`-ot exps=CPU`) runs the whole block from
 * the first expert product to the last on the CPU: gate and up, the activation (GLU), the expert biases (ADD_ID),
 * down; the weighting and the sum go back to the GPU. The scheduler gives us the products (their weights are in
 * our buffer); the ops between them would go to the GPU, four device crossings per layer instead of two. So in a
 * model marked so (fm_model.expert_block: set with GPU layers) we also take those ops when every input they compute
 * from is one of our products or such an op: the same ops stock's CPU runs, computed by ggml-cpu's own code
 * (run_cpu_ops), so the results are stock's bit for bit. */

#define FM_BLOCK_DEPTH 8

static fm_model *expert_block_model(const struct ggml_tensor *t, int depth);

/* the marked model whose expert block op `op` belongs to, or NULL (then we do not take it) */
static fm_model *block_op_model(const struct ggml_tensor *op, int depth) {
    if (op->type != GGML_TYPE_F32) return NULL;
    switch (op->op) {
    case GGML_OP_GLU: { /* activation: gate (and up, split form) from our products or views of them */
        const struct ggml_tensor *a = op->src[0], *b = op->src[1];
        if (!a || a->type != GGML_TYPE_F32 || (b && b->type != GGML_TYPE_F32)) return NULL;
        fm_model *m = expert_block_model(a, depth);
        if (!m || (b && expert_block_model(b, depth) != m)) return NULL;
        return m;
    }
    case GGML_OP_ADD_ID: { /* an expert bias: products + bias[ids] (the bias is a weight, the ids an input) */
        const struct ggml_tensor *a = op->src[0], *bias = op->src[1], *ids = op->src[2];
        if (!a || !bias || !ids || a->type != GGML_TYPE_F32 || bias->type != GGML_TYPE_F32 ||
            ids->type != GGML_TYPE_I32) {
            return NULL;
        }
        return expert_block_model(a, depth);
    }
    default:
        return NULL;
    }
}

/* t (through views) is the output of one of our products in a marked model, or of a block op we take */
static fm_model *expert_block_model(const struct ggml_tensor *t, int depth) {
    while (t && t->view_src) t = t->view_src;
    if (!t || depth >= FM_BLOCK_DEPTH) return NULL;
    if (t->op == GGML_OP_MUL_MAT_ID) {
        const struct ggml_tensor *as = t->src[0];
        if (!as || !as->extra || !as->buffer || as->buffer->buft != &g_buft || !as->buffer->context) return NULL;
        fm_model *m = ((fm_buffer_ctx *) as->buffer->context)->model;
        return m && m->expert_block ? m : NULL;
    }
    return block_op_model(t, depth + 1);
}

static int grow(void **p, size_t *cap, size_t need) {
    if (*cap >= need) return 0;
    void *q = realloc(*p, need);
    if (!q) return -1;
    *p = q;
    *cap = need;
    return 0;
}

#define FM_RUN_NODES 64

/* nodes[0..n) (element-wise ops of the expert block, see block_op_model) through ggml-cpu's graph compute, on the
 * backend's threads: the code stock's CPU backend runs for them */
static enum ggml_status run_cpu_ops(fm_backend_ctx *c, struct ggml_tensor **nodes, int n) {
    const size_t need = fm_g.ggml_graph_overhead_custom(FM_RUN_NODES, false) + 1024;
    if (grow(&c->ctx_mem, &c->ctx_size, need) != 0) return GGML_STATUS_ALLOC_FAILED;
    struct ggml_init_params ip = {c->ctx_size, c->ctx_mem, true};
    struct ggml_context *ctx = fm_g.ggml_init(ip);
    if (!ctx) return GGML_STATUS_ALLOC_FAILED;
    struct ggml_cgraph *graph = fm_g.ggml_new_graph_custom(ctx, FM_RUN_NODES, false);
    for (int i = 0; i < n; i++) fm_g.ggml_graph_add_node(graph, nodes[i]);
    struct ggml_cplan plan = fm_g.ggml_graph_plan(graph, c->n_threads, NULL);
    enum ggml_status st = GGML_STATUS_ALLOC_FAILED;
    if (plan.work_size == 0 || grow(&c->work, &c->work_cap, plan.work_size) == 0) {
        plan.work_data = c->work;
        st = fm_g.ggml_graph_compute(graph, &plan);
    }
    fm_g.ggml_free(ctx);
    return st;
}

/* the graph's nodes; *model: the model whose experts it multiplied (NULL if none) */
static enum ggml_status compute_nodes(fm_backend_ctx *c, struct ggml_cgraph *cgraph, fm_model **model) {
    int n = fm_g.ggml_graph_n_nodes(cgraph);
    struct ggml_tensor *run[FM_RUN_NODES];
    int n_run = 0;
    for (int i = 0; i < n; i++) {
        struct ggml_tensor *node = fm_g.ggml_graph_node(cgraph, i);
        if (node->op == GGML_OP_GLU || node->op == GGML_OP_ADD_ID) {
            if (!block_op_model(node, 0)) return GGML_STATUS_FAILED;
            run[n_run++] = node;
            if (n_run == FM_RUN_NODES) {
                enum ggml_status st = run_cpu_ops(c, run, n_run);
                if (st != GGML_STATUS_SUCCESS) return st;
                n_run = 0;
            }
            continue;
        }
        if (n_run > 0 && node->op == GGML_OP_MUL_MAT_ID) { /* it may read what the run computes */
            enum ggml_status st = run_cpu_ops(c, run, n_run);
            if (st != GGML_STATUS_SUCCESS) return st;
            n_run = 0;
        }
        switch (node->op) {
        case GGML_OP_NONE:
        case GGML_OP_RESHAPE:
        case GGML_OP_VIEW:
        case GGML_OP_PERMUTE:
        case GGML_OP_TRANSPOSE:
            continue;
        case GGML_OP_MUL_MAT_ID: {
            struct ggml_tensor *as = node->src[0];
            const fm_tensor_info *t = as ? as->extra : NULL;
            if (!t || !as->buffer || as->buffer->buft != &g_buft) return GGML_STATUS_FAILED;
            fm_model *m = ((fm_buffer_ctx *) as->buffer->context)->model;
            *model = m;
            if (fm_mul_mat_id(m->store, c->pool, c->n_threads, t->index, &m->mm, node) != 0) {
                return GGML_STATUS_FAILED;
            }
            continue;
        }
        default:
            return GGML_STATUS_FAILED;
        }
    }
    return n_run > 0 ? run_cpu_ops(c, run, n_run) : GGML_STATUS_SUCCESS;
}

static enum ggml_status be_graph_compute(ggml_backend_t backend, struct ggml_cgraph *cgraph) {
    const double t0 = fm_now_s();
    fm_model *m = NULL;
    enum ggml_status st = compute_nodes(backend->context, cgraph, &m);
    if (m) {
        uint64_t k = m->timeline_n++ % FM_TIMELINE;
        m->timeline[2 * k] = t0;
        m->timeline[2 * k + 1] = fm_now_s();
    }
    return st;
}

/* Events exist for llama.cpp's chunked loader (see dev_get_props): our work is synchronous, so an event is
 * complete as soon as it is recorded. */
static void be_event_record(ggml_backend_t backend, ggml_backend_event_t event) {
    (void) backend;
    (void) event;
}

static void be_event_wait(ggml_backend_t backend, ggml_backend_event_t event) {
    (void) backend;
    (void) event;
}

static const struct ggml_backend_i g_backend_iface = {
    .get_name = be_get_name,
    .free = be_free,
    .graph_compute = be_graph_compute,
    .event_record = be_event_record,
    .event_wait = be_event_wait,
};

static void fm_set_n_threads(ggml_backend_t backend, int n_threads) {
    fm_backend_ctx *c = backend->context;
    if (n_threads < 1) n_threads = 1;
    c->n_threads = n_threads;
}

/* ---- device ------------------------------------------------------------------------------------------ */

static struct ggml_backend_device g_dev;
/* The device our backends report (ggml_backend_get_device): g_dev's functions except the buffer type, which
 * ggml_backend_get_default_buffer_type takes from the backend's device for the scheduler's compute buffers. The
 * registry lists g_dev only: llama.cpp places weights with its buffer type (experts in our own, not host, type). */
static struct ggml_backend_device g_dev_compute;
static struct ggml_backend_reg g_reg;

static const char *dev_get_name(ggml_backend_dev_t dev) {
    (void) dev;
    return FM_NAME;
}

static const char *dev_get_description(ggml_backend_dev_t dev) {
    (void) dev;
    return "flashmoe-gguf: routed experts streamed from disk";
}

static void dev_get_memory(ggml_backend_dev_t dev, size_t *free_mem, size_t *total) {
    (void) dev;
    *free_mem = 0;
    *total = 0;
}

static enum ggml_backend_dev_type dev_get_type(ggml_backend_dev_t dev) {
    (void) dev;
    return GGML_BACKEND_DEVICE_TYPE_ACCEL;
}

/* async + host_buffer + events: llama.cpp's no-mmap loader then streams our tensors through four 1 MiB host
 * buffers (llama_model_loader::load_all_data, "async uploads"). Without them it stages every tensor in a
 * temporary buffer of the tensor's size, which it allocates and writes: 16 GB of writes and page faults for a
 * 16 GB file's experts, only for set_tensor to drop them. The expert ranges of the file the loader reads are
 * skipped (fm_open_file_skipping), so the chunks cost neither I/O nor copies. These caps are only read by the
 * loader and by pipeline parallelism, which considers GPU devices only (we are ACCEL). */
static void dev_get_props(ggml_backend_dev_t dev, struct ggml_backend_dev_props *props) {
    memset(props, 0, sizeof *props);
    props->name = dev_get_name(dev);
    props->description = dev_get_description(dev);
    props->type = GGML_BACKEND_DEVICE_TYPE_ACCEL;
    props->caps.async = true;
    props->caps.host_buffer = true;
    props->caps.events = true;
}

static ggml_backend_buffer_type_t dev_get_host_buffer_type(ggml_backend_dev_t dev) {
    (void) dev;
    return fm_g.ggml_backend_cpu_buffer_type();
}

static ggml_backend_event_t dev_event_new(ggml_backend_dev_t dev) {
    ggml_backend_event_t e = calloc(1, sizeof *e);
    if (e) e->device = dev;
    return e;
}

static void dev_event_free(ggml_backend_dev_t dev, ggml_backend_event_t event) {
    (void) dev;
    free(event);
}

static void dev_event_synchronize(ggml_backend_dev_t dev, ggml_backend_event_t event) {
    (void) dev;
    (void) event;
}

static ggml_backend_t dev_init_backend(ggml_backend_dev_t dev, const char *params) {
    (void) dev;
    (void) params;
    fm_backend_ctx *c = calloc(1, sizeof *c);
    ggml_backend_t be = calloc(1, sizeof *be);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (!c || !be) {
        free(c);
        free(be);
        return NULL;
    }
    c->n_threads = ncpu > 0 ? (int) ncpu : 1;
    c->pool = fm_pool_new(c->n_threads);
    if (!c->pool) {
        free(c);
        free(be);
        return NULL;
    }
    be->guid = &g_guid;
    be->iface = g_backend_iface;
    be->device = &g_dev_compute;
    be->context = c;
    return be;
}

static ggml_backend_buffer_type_t dev_get_buffer_type(ggml_backend_dev_t dev) {
    (void) dev;
    return &g_buft;
}

static ggml_backend_buffer_type_t dev_compute_get_buffer_type(ggml_backend_dev_t dev) {
    (void) dev;
    return compute_buft();
}

static bool dev_supports_op(ggml_backend_dev_t dev, const struct ggml_tensor *op) {
    (void) dev;
    switch (op->op) {
    case GGML_OP_NONE:
    case GGML_OP_RESHAPE:
    case GGML_OP_VIEW:
    case GGML_OP_PERMUTE:
    case GGML_OP_TRANSPOSE:
        return true;
    case GGML_OP_MUL_MAT_ID: {
        const struct ggml_tensor *as = op->src[0];
        if (!as || !op->src[1] || op->src[1]->type != GGML_TYPE_F32) return false;
        /* llama.cpp probes placement with a dummy buffer of the candidate type; buffers remember the model
         * that was loading through flashmoe when they were made (NULL for anyone else's load) */
        if (!as->buffer || as->buffer->buft != &g_buft) return false;
        fm_buffer_ctx *bc = as->buffer->context;
        /* ggml makes zero-size probe buffers itself, without a context: the load in progress on this thread */
        fm_model *m = bc ? bc->model : tl_loading;
        if (!m) return false;
        if (as->extra) return true; /* scheduling: one of our bound expert tensors */
        int ok = fm_store_find(m->store, as->name) >= 0; /* placement: in this model's expert table */
        if (ok) {
            const struct ggml_type_traits_cpu *tt = fm_g.ggml_get_type_traits_cpu(as->type);
            ok = tt && tt->vec_dot != NULL;
        }
        return ok;
    }
    case GGML_OP_GLU:
    case GGML_OP_ADD_ID:
        return block_op_model(op, 0) != NULL;
    default:
        return false;
    }
}

static bool dev_supports_buft(ggml_backend_dev_t dev, ggml_backend_buffer_type_t buft) {
    (void) dev;
    return buft == &g_buft || fm_g.ggml_backend_buft_is_host(buft);
}

static const struct ggml_backend_device_i g_dev_iface = {
    .get_name = dev_get_name,
    .get_description = dev_get_description,
    .get_memory = dev_get_memory,
    .get_type = dev_get_type,
    .get_props = dev_get_props,
    .init_backend = dev_init_backend,
    .get_buffer_type = dev_get_buffer_type,
    .get_host_buffer_type = dev_get_host_buffer_type,
    .supports_op = dev_supports_op,
    .supports_buft = dev_supports_buft,
    .event_new = dev_event_new,
    .event_free = dev_event_free,
    .event_synchronize = dev_event_synchronize,
};

/* ---- registry ---------------------------------------------------------------------------------------- */

static const char *reg_get_name(ggml_backend_reg_t reg) {
    (void) reg;
    return FM_NAME;
}

static size_t reg_get_device_count(ggml_backend_reg_t reg) {
    (void) reg;
    return 1;
}

static ggml_backend_dev_t reg_get_device(ggml_backend_reg_t reg, size_t index) {
    (void) reg;
    return index == 0 ? &g_dev : NULL;
}

static struct ggml_backend_feature g_features[] = {{"FLASHMOE", "1"}, {NULL, NULL}};

static struct ggml_backend_feature *fm_get_features(ggml_backend_reg_t reg) {
    (void) reg;
    return g_features;
}

static void *reg_get_proc_address(ggml_backend_reg_t reg, const char *name) {
    (void) reg;
    void *p = NULL;
    if (strcmp(name, "ggml_backend_set_n_threads") == 0) {
        ggml_backend_set_n_threads_t f = fm_set_n_threads;
        memcpy(&p, &f, sizeof p);
    } else if (strcmp(name, "ggml_backend_get_features") == 0) {
        ggml_backend_get_features_t f = fm_get_features;
        memcpy(&p, &f, sizeof p);
    }
    return p;
}

static const struct ggml_backend_reg_i g_reg_iface = {
    .get_name = reg_get_name,
    .get_device_count = reg_get_device_count,
    .get_device = reg_get_device,
    .get_proc_address = reg_get_proc_address,
};

int fm_backend_register(char *err, size_t err_len) {
    pthread_mutex_lock(&g_register_mu);
    if (g_registered) {
        pthread_mutex_unlock(&g_register_mu);
        return 0;
    }
    g_buft.iface.get_name = buft_get_name;
    g_buft.iface.alloc_buffer = buft_alloc_buffer;
    g_buft.iface.get_alignment = buft_get_alignment;
    g_buft.iface.is_host = buft_is_host;
    g_buft.device = &g_dev;
    g_buft.context = NULL;
    g_dev.iface = g_dev_iface;
    g_dev.reg = &g_reg;
    g_dev.context = NULL;
    g_dev_compute = g_dev;
    g_dev_compute.iface.get_buffer_type = dev_compute_get_buffer_type;
    g_reg.api_version = GGML_BACKEND_API_VERSION;
    g_reg.iface = g_reg_iface;
    g_reg.context = NULL;
    fm_g.ggml_backend_register(&g_reg);
    g_registered = 1;
    pthread_mutex_unlock(&g_register_mu);
    (void) err;
    (void) err_len;
    return 0;
}
