/* Compiled CPU loops: the exact flat step from row sums, and the hash-grid merge and labels.
 *
 * Built at install time (setup.py, an optional extension), so no process ever
 * compiles anything on its first fit.  Python calls it through ctypes
 * (meanshift_gpu/_neighbors/compiled.py), which releases the GIL; the step spreads its
 * groups of seeds over POSIX threads that take pieces from a shared counter,
 * so a thread slowed by another process on its core takes fewer pieces
 * instead of holding the others at a barrier.
 *
 * The row-sum step (meanshift_gpu/_neighbors/rowsum.py has the vectorised torch twin):
 * one loop walks the rows around a group of seeds in key order, finds each
 * row's reach with binary searches on the sorted first coordinate (galloping
 * from the previous seed's bounds), adds the interior from the running sums
 * and tests the band's points in place.  The sums are int64 fixed point, so
 * they do not depend on the order of summation: the result equals the torch
 * version bit for bit whatever the grouping or thread count.  The band test
 * is the dense step's formula in the seeds' dtype, feature by feature;
 * -ffp-contract=off keeps the compiler from fusing it into FMAs.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Runs of at most this many points are tested whole rather than searched for an interior. */
#define SHORT_RUN 48
/* Entry points ctypes looks up, whatever the default symbol visibility. */
#define EXPORT __attribute__((visibility("default")))
/* The band loops sum int64s under a 0/1 mask: vectorised well only with AVX2 or
 * AVX-512 (timings in benchmarks/README.md, "Tuning history").  The entry points
 * are compiled once per level and picked when the library loads; the helpers
 * are forced inline so that they take their caller's level.  The arithmetic is
 * the same at every level (no FMA: -ffp-contract=off). */
#if defined(__x86_64__) && ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || \
                            (defined(__clang__) && __clang_major__ >= 14)) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif
#define INLINE static inline __attribute__((always_inline))

typedef struct {
    int64_t d, m, n_rows, longest_row, n_points;
    double margin, shared_radius;
    double edge; /* the flat window's edge on squared distances (1 plus rounding) */
    const int64_t *row_keys, *row_bounds;
    const double *first;
    const void *coords; /* (d, n_points), the seeds' dtype */
    const int64_t *sums; /* (d + 1, n_points) fixed-point [w x, w] (w: the count for unweighted data) */
    const int64_t *prefix; /* (n_points + 1, d + 1) running sums */
    const int64_t *origin, *strides, *cell_lo, *cell_hi;
    const double *q; /* (n_seeds, d) float64 seeds: geometry */
    const void *seeds; /* (n_seeds, d) seeds in their dtype: the band test */
    const int64_t *group_starts;
    int64_t *acc; /* (n_seeds, d + 1) */
} RowSumArgs;

/* The arguments, with the feature-major arrays cut into one row per feature. */
typedef struct {
    const RowSumArgs *a;
    const void *coords[3];
    const int64_t *sums[4];
} RowSumTables;

typedef struct {
    int64_t capacity;
    void *coords; /* 3 x capacity of the seeds' dtype */
    int64_t *sums; /* 4 x capacity */
    double *dist;
    int64_t *index;
} Scratch;

typedef struct {
    double lo[3], hi[3], center[3], radius;
} Box;

/* First index in [lo, hi) with values[i] >= target (hi if none); halving with conditional moves. */
static int64_t lower_bound(const double *values, int64_t lo, int64_t hi, double target) {
    int64_t n = hi - lo;
    while (n > 0) {
        int64_t half = n >> 1;
        int below = values[lo + half] < target;
        lo = below ? lo + half + 1 : lo;
        n = below ? n - half - 1 : half;
    }
    return lo;
}

/* First index in [lo, hi) with values[i] > target (hi if none). */
static int64_t upper_bound(const double *values, int64_t lo, int64_t hi, double target) {
    int64_t n = hi - lo;
    while (n > 0) {
        int64_t half = n >> 1;
        int below = values[lo + half] <= target;
        lo = below ? lo + half + 1 : lo;
        n = below ? n - half - 1 : half;
    }
    return lo;
}

static int64_t lower_bound_int(const int64_t *values, int64_t lo, int64_t hi, int64_t target) {
    while (lo < hi) {
        int64_t middle = lo + ((hi - lo) >> 1);
        if (values[middle] < target)
            lo = middle + 1;
        else
            hi = middle;
    }
    return lo;
}

/* lower_bound galloping out from hint (outside [lo, hi) it searches all): consecutive
 * seeds of a group are sorted along the rows, so each one's bound lies a few points
 * from the last seed's. */
static int64_t lower_bound_near(const double *values, int64_t lo, int64_t hi, double target, int64_t hint) {
    if (hint < lo || hint >= hi) return lower_bound(values, lo, hi, target);
    int64_t step = 1;
    if (values[hint] < target) {
        int64_t below = hint, bound = hint + 1;
        while (bound < hi && values[bound] < target) below = bound, step *= 2, bound = below + step;
        return lower_bound(values, below + 1, bound < hi ? bound : hi, target);
    }
    int64_t above = hint, bound = hint - 1;
    while (bound >= lo && values[bound] >= target) above = bound, step *= 2, bound = above - step;
    return lower_bound(values, bound + 1 > lo ? bound + 1 : lo, above, target);
}

static int64_t upper_bound_near(const double *values, int64_t lo, int64_t hi, double target, int64_t hint) {
    if (hint < lo || hint >= hi) return upper_bound(values, lo, hi, target);
    int64_t step = 1;
    if (values[hint] <= target) {
        int64_t below = hint, bound = hint + 1;
        while (bound < hi && values[bound] <= target) below = bound, step *= 2, bound = below + step;
        return upper_bound(values, below + 1, bound < hi ? bound : hi, target);
    }
    int64_t above = hint, bound = hint - 1;
    while (bound >= lo && values[bound] > target) above = bound, step *= 2, bound = above - step;
    return upper_bound(values, bound + 1 > lo ? bound + 1 : lo, above, target);
}

/* Smallest and largest distance, along one coordinate, between [box_lo, box_hi] and [lo, hi]. */
static void cell_distances(double lo, double hi, double box_lo, double box_hi, double *gap, double *far) {
    *gap = fmax(lo - box_hi, 0.0) + fmax(box_lo - hi, 0.0);
    *far = fmax(box_hi - lo, hi - box_lo);
}

/* Bounding box of seeds i0 .. i1 - 1, its centre, and a radius around the centre
 * that holds every seed, rounded up. */
static void box_radius(const double *q, int d, int64_t i0, int64_t i1, Box *box) {
    for (int j = 0; j < 3; j++) box->center[j] = 0.0;
    for (int j = 0; j < d; j++) box->lo[j] = box->hi[j] = q[i0 * d + j];
    for (int64_t i = i0 + 1; i < i1; i++)
        for (int j = 0; j < d; j++) {
            box->lo[j] = fmin(box->lo[j], q[i * d + j]);
            box->hi[j] = fmax(box->hi[j], q[i * d + j]);
        }
    double radius2 = 0.0;
    for (int j = 0; j < d; j++) {
        box->center[j] = 0.5 * (box->lo[j] + box->hi[j]);
        double half = fmax(box->hi[j] - box->center[j], box->center[j] - box->lo[j]);
        radius2 += half * half;
    }
    box->radius = sqrt(radius2) * (1.0 + 1e-12) + 1e-300;
}

/* Open-addressing table of cell keys, each heading a linked list of items. */
typedef struct {
    int64_t mask;
    int64_t *keys, *heads, *next;
} HashLists;

static const int64_t EMPTY_KEY = INT64_MIN;

static int hash_lists_init(HashLists *t, int64_t n_cells, int64_t n_items) {
    int64_t size = 4;
    while (size < 2 * n_cells + 2) size *= 2;
    t->mask = size - 1;
    t->keys = malloc(size * sizeof(int64_t));
    t->heads = malloc(size * sizeof(int64_t));
    t->next = malloc((n_items > 0 ? n_items : 1) * sizeof(int64_t));
    if (!t->keys || !t->heads || !t->next) {
        free(t->keys), free(t->heads), free(t->next);
        return -1;
    }
    for (int64_t i = 0; i < size; i++) t->keys[i] = EMPTY_KEY, t->heads[i] = -1;
    return 0;
}

static void hash_lists_free(HashLists *t) { free(t->keys), free(t->heads), free(t->next); }

/* Different cells may share a key: their lists then mix, which costs a few
 * extra distance tests and changes no decision.  The multipliers are the
 * splitmix64 constants, as in meanshift_gpu/_engine/ascent.py (_MIX_1, _MIX_2);
 * the two hashes are independent, so nothing has to match between them. */
static int64_t cell_key(int64_t c0, int64_t c1, int64_t c2) {
    uint64_t key = ((uint64_t)c0 * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)c1 * 0xBF58476D1CE4E5B9ull) ^
                   ((uint64_t)c2 * 0x94D049BB133111EBull);
    return (int64_t)(key == (uint64_t)EMPTY_KEY ? key + 1 : key);
}

static int64_t hash_slot(const HashLists *t, int64_t key) {
    int64_t slot = (int64_t)(((uint64_t)key ^ ((uint64_t)key >> 29)) & (uint64_t)t->mask);
    while (t->keys[slot] != EMPTY_KEY && t->keys[slot] != key) slot = (slot + 1) & t->mask;
    return slot;
}

static int64_t hash_lists_head(const HashLists *t, int64_t key) {
    int64_t slot = hash_slot(t, key);
    return t->keys[slot] != EMPTY_KEY ? t->heads[slot] : -1;
}

static void hash_lists_push(HashLists *t, int64_t key, int64_t item) {
    int64_t slot = hash_slot(t, key);
    if (t->keys[slot] == EMPTY_KEY) t->keys[slot] = key;
    t->next[item] = t->heads[slot];
    t->heads[slot] = item;
}

#define REAL float
#define SFX f32
#include "_native_rowsum.h"
#undef REAL
#undef SFX

#define REAL double
#define SFX f64
#include "_native_rowsum.h"
#undef REAL
#undef SFX

/* ---- the threaded entry point of the row-sum step ---- */

typedef struct {
    const RowSumTables *tables;
    const int64_t *pieces;
    int64_t n_pieces;
    int64_t next_piece; /* taken with atomic fetch-add */
    int is_double;
    int64_t capacity;
    int failed;
} StepWork;

static int scratch_init(Scratch *s, int64_t capacity, size_t real_size) {
    s->capacity = capacity > 0 ? capacity : 1;
    s->coords = malloc(3 * s->capacity * real_size);
    s->sums = malloc(4 * s->capacity * sizeof(int64_t));
    s->dist = malloc(s->capacity * sizeof(double));
    s->index = malloc(s->capacity * sizeof(int64_t));
    if (!s->coords || !s->sums || !s->dist || !s->index) {
        free(s->coords), free(s->sums), free(s->dist), free(s->index);
        return -1;
    }
    return 0;
}

static void scratch_free(Scratch *s) { free(s->coords), free(s->sums), free(s->dist), free(s->index); }

static void *step_worker(void *arg) {
    StepWork *work = arg;
    Scratch scratch;
    if (scratch_init(&scratch, work->capacity, work->is_double ? sizeof(double) : sizeof(float))) {
        __atomic_store_n(&work->failed, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    for (;;) {
        int64_t piece = __atomic_fetch_add(&work->next_piece, 1, __ATOMIC_RELAXED);
        if (piece >= work->n_pieces) break;
        int64_t g0 = work->pieces[piece], g1 = work->pieces[piece + 1];
        if (work->is_double)
            accumulate_groups_f64(work->tables, g0, g1, &scratch);
        else
            accumulate_groups_f32(work->tables, g0, g1, &scratch);
    }
    scratch_free(&scratch);
    return NULL;
}

/* Window sums of every group of seeds into args->acc.  pieces: n_pieces + 1 group
 * bounds; threads take pieces one at a time.  Returns 0, or -1 when memory ran out. */
EXPORT int rowsum_accumulate(const RowSumArgs *args, int is_double, const int64_t *pieces, int64_t n_pieces,
                             int64_t n_threads) {
    size_t real_size = is_double ? sizeof(double) : sizeof(float);
    RowSumTables tables = {args, {NULL}, {NULL}};
    for (int f = 0; f < 3; f++)
        tables.coords[f] = (const char *)args->coords + (f < args->d ? f : 0) * args->n_points * real_size;
    for (int f = 0; f < 4; f++) tables.sums[f] = args->sums + (f <= args->d ? f : 0) * args->n_points;
    StepWork work = {&tables, pieces, n_pieces, 0, is_double, args->longest_row, 0};
    if (n_threads > n_pieces) n_threads = n_pieces;
    if (n_threads < 1) n_threads = 1;
    pthread_t *threads = n_threads > 1 ? malloc((n_threads - 1) * sizeof(pthread_t)) : NULL;
    int64_t started = 0;
    if (threads)
        for (; started < n_threads - 1; started++)
            if (pthread_create(&threads[started], NULL, step_worker, &work)) break;
    step_worker(&work); /* this thread works too; fewer started threads only mean fewer workers */
    for (int64_t i = 0; i < started; i++) pthread_join(threads[i], NULL);
    free(threads);
    return work.failed ? -1 : 0;
}

/* Starts (and the end) of groups of at most max_size seeds, cut along a Z-order curve.
 * keys (own row cells) and codes (Morton codes) are sorted by (key, code).  A run of
 * equal keys is halved at the highest bit where its codes differ, recursively, until
 * the pieces are small: each piece is a box of the Z-order's implicit k-d tree.
 * starts has room for n + 1; returns the number of entries written. */
EXPORT int64_t rowsum_split_groups(const int64_t *keys, const int64_t *codes, int64_t n, int64_t top_bit, int64_t max_size,
                            int64_t *starts) {
    int64_t k = 0;
    int64_t stack[2 * 66][3];
    int64_t i = 0;
    while (i < n) {
        int64_t j = i;
        while (j < n && keys[j] == keys[i]) j++;
        stack[0][0] = i, stack[0][1] = j, stack[0][2] = top_bit;
        int depth = 1;
        while (depth > 0) {
            depth--;
            int64_t lo = stack[depth][0], hi = stack[depth][1], bit = stack[depth][2];
            if (hi - lo <= max_size || bit < 0) {
                for (int64_t start = lo; start < hi; start += max_size) starts[k++] = start;
                continue;
            }
            /* Codes of a piece share every bit above bit: those with it clear come first. */
            int64_t mask = (int64_t)1 << bit;
            int64_t a = lo, b = hi;
            while (a < b) {
                int64_t middle = (a + b) >> 1;
                if (codes[middle] & mask)
                    b = middle;
                else
                    a = middle + 1;
            }
            /* The lower half is popped (and emitted) first. */
            stack[depth][0] = a, stack[depth][1] = hi, stack[depth][2] = bit - 1;
            stack[depth + 1][0] = lo, stack[depth + 1][1] = a, stack[depth + 1][2] = bit - 1;
            depth += 2;
        }
        i = j;
    }
    starts[k++] = n;
    return k;
}

/* The module holds no Python functions: ctypes loads the same file and calls the
 * functions above with the GIL released. */
static struct PyModuleDef native_module = {PyModuleDef_HEAD_INIT, "_native",
                                           "Compiled CPU loops of meanshift_gpu, called through ctypes.", -1, NULL,
                                           NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }
