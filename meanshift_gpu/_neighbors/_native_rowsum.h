/* The row-sum flat step and the hash-grid merge/labels, for one seed dtype.
 *
 * Included twice by _native.c, with REAL = float / double and SFX = f32 / f64:
 * the band tests and merge distances run in the seeds' (data's) dtype, the
 * geometry (row bounds, searches, group boxes) in double.  Line for line the
 * algorithm of meanshift_gpu/_neighbors/rowsum.py's vectorised step (see its docstring
 * and _native.c's): the same int64 fixed-point summands, interior margin and
 * band formula, so results equal it bit for bit.
 */

#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define FN(name) CAT(name, SFX)

/* Sums [w x_0, w x_1, w x_2, w] over the points of [lo, hi) inside the seed's
 * window, tested one by one (d = 1, 2, 3; features beyond d give 0).  A 0/1
 * select rather than a branch: about half of a band is inside. */
INLINE void FN(band_sums)(int64_t lo, int64_t hi, int d, REAL s0, REAL s1, REAL s2, REAL edge,
                          const REAL *const *coords, const int64_t *const *sums, int64_t out[4]) {
    int64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    const REAL *first = coords[0];
    const int64_t *w0 = sums[0], *w1 = sums[1];
    /* inside is 0 or -1: the summands (the last row counts) are masked, not branched on. */
    if (d == 1) {
        const int64_t *count = w1;
        for (int64_t p = lo; p < hi; p++) {
            REAL diff = s0 - first[p];
            int64_t inside = -(int64_t)(diff * diff <= edge);
            a0 += w0[p] & inside;
            a1 += count[p] & inside;
        }
    } else if (d == 2) {
        const REAL *second = coords[1];
        const int64_t *count = sums[2];
        for (int64_t p = lo; p < hi; p++) {
            REAL diff = s0 - first[p];
            REAL d2 = diff * diff;
            diff = s1 - second[p];
            d2 += diff * diff;
            int64_t inside = -(int64_t)(d2 <= edge);
            a0 += w0[p] & inside;
            a1 += w1[p] & inside;
            a2 += count[p] & inside;
        }
    } else {
        const REAL *second = coords[1], *third = coords[2];
        const int64_t *w2 = sums[2], *count = sums[3];
        for (int64_t p = lo; p < hi; p++) {
            REAL diff = s0 - first[p];
            REAL d2 = diff * diff;
            diff = s1 - second[p];
            d2 += diff * diff;
            diff = s2 - third[p];
            d2 += diff * diff;
            int64_t inside = -(int64_t)(d2 <= edge);
            a0 += w0[p] & inside;
            a1 += w1[p] & inside;
            a2 += w2[p] & inside;
            a3 += count[p] & inside;
        }
    }
    out[0] = a0;
    out[1] = a1;
    out[2] = a2;
    out[3] = a3;
}

/* band_sums for two seeds at once (d = 2 or 3): each point is loaded once for
 * both, the shared shell's test being bound by loads. */
INLINE void FN(band_sums_pair)(int64_t lo, int64_t hi, int d, const REAL s[3], const REAL t[3], REAL edge,
                               const REAL *const *coords, const int64_t *const *sums, int64_t a[4],
                               int64_t b[4]) {
    int64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
    const REAL *first = coords[0], *second = coords[1];
    const int64_t *w0 = sums[0], *w1 = sums[1];
    if (d == 2) {
        const int64_t *count = sums[2];
        for (int64_t p = lo; p < hi; p++) {
            REAL x = first[p], y = second[p];
            REAL diff = s[0] - x;
            REAL ds = diff * diff;
            diff = s[1] - y;
            ds += diff * diff;
            diff = t[0] - x;
            REAL dt = diff * diff;
            diff = t[1] - y;
            dt += diff * diff;
            int64_t in_s = -(int64_t)(ds <= edge), in_t = -(int64_t)(dt <= edge);
            int64_t u0 = w0[p], u1 = w1[p];
            a0 += u0 & in_s;
            a1 += u1 & in_s;
            b0 += u0 & in_t;
            b1 += u1 & in_t;
            a2 += count[p] & in_s;
            b2 += count[p] & in_t;
        }
    } else {
        const REAL *third = coords[2];
        const int64_t *w2 = sums[2], *count = sums[3];
        for (int64_t p = lo; p < hi; p++) {
            REAL x = first[p], y = second[p], z = third[p];
            REAL diff = s[0] - x;
            REAL ds = diff * diff;
            diff = s[1] - y;
            ds += diff * diff;
            diff = s[2] - z;
            ds += diff * diff;
            diff = t[0] - x;
            REAL dt = diff * diff;
            diff = t[1] - y;
            dt += diff * diff;
            diff = t[2] - z;
            dt += diff * diff;
            int64_t in_s = -(int64_t)(ds <= edge), in_t = -(int64_t)(dt <= edge);
            int64_t u0 = w0[p], u1 = w1[p], u2 = w2[p];
            a0 += u0 & in_s;
            a1 += u1 & in_s;
            a2 += u2 & in_s;
            b0 += u0 & in_t;
            b1 += u1 & in_t;
            b2 += u2 & in_t;
            a3 += count[p] & in_s;
            b3 += count[p] & in_t;
        }
    }
    a[0] = a0, a[1] = a1, a[2] = a2, a[3] = a3;
    b[0] = b0, b[1] = b1, b[2] = b2, b[3] = b3;
}

/* One row's share of a seed's window, added into acc4.  rho_min2 / rho_max2:
 * squared smallest and largest distance from the seed to the row's cell
 * across the rows.  hints holds the previous seed's four bounds in this row
 * (-1: none) and is updated. */
INLINE void FN(row_sums)(const RowSumTables *t, double q0, REAL s0, REAL s1, REAL s2, int64_t rank, double rho_min2,
                         double rho_max2, int64_t hints[4], int64_t acc4[4]) {
    const REAL *const *coords = (const REAL *const *)t->coords;
    int d = (int)t->a->d;
    int64_t start = t->a->row_bounds[rank], end = t->a->row_bounds[rank + 1];
    double reach_out = sqrt(fmax(0.0, 1.0 + t->a->margin - rho_min2));
    int64_t lo_out = lower_bound_near(t->a->first, start, end, q0 - reach_out, hints[0]);
    int64_t hi_out = upper_bound_near(t->a->first, lo_out, end, q0 + reach_out, hints[1]);
    hints[0] = lo_out, hints[1] = hi_out;
    double inner2 = 1.0 - t->a->margin - rho_max2;
    int64_t lo_in = hi_out, hi_in = hi_out;
    /* Short runs are cheaper to test whole than to search for their interior. */
    if (inner2 > 0.0 && hi_out - lo_out > SHORT_RUN) {
        double reach_in = sqrt(inner2);
        lo_in = lower_bound_near(t->a->first, lo_out, hi_out, q0 - reach_in, hints[2]);
        hi_in = upper_bound_near(t->a->first, lo_in, hi_out, q0 + reach_in, hints[3]);
        hints[2] = lo_in, hints[3] = hi_in;
    }
    int64_t a[4], b[4];
    FN(band_sums)(lo_out, lo_in, d, s0, s1, s2, (REAL)t->a->edge, coords, t->sums, a);
    FN(band_sums)(hi_in, hi_out, d, s0, s1, s2, (REAL)t->a->edge, coords, t->sums, b);
    for (int k = 0; k < 4; k++) acc4[k] = a[k] + b[k];
    if (hi_in > lo_in) {
        const int64_t *p_hi = t->a->prefix + hi_in * (d + 1), *p_lo = t->a->prefix + lo_in * (d + 1);
        for (int k = 0; k <= d; k++) acc4[k] += p_hi[k] - p_lo[k];
    }
}

/* One row's share of the windows of a compact group of seeds i0 .. i1 - 1, into
 * acc.  The row's points inside every seed's window for sure are summed once
 * for the group, those outside all skipped; only a shell of width 2 radius is
 * tested seed by seed.  "For sure" keeps the interior margin, so the per-seed
 * test would decide every skipped or summed point the same way. */
INLINE void FN(shared_row_sums)(const RowSumTables *t, int64_t i0, int64_t i1, int64_t rank,
                                double lo_last, double hi_last, double lo_1, double hi_1, const Box *box,
                                Scratch *scratch) {
    const REAL *seeds = (const REAL *)t->a->seeds;
    const REAL *const *coords = (const REAL *const *)t->coords;
    int d = (int)t->a->d;
    int64_t *acc = t->a->acc;
    int64_t start = t->a->row_bounds[rank], end = t->a->row_bounds[rank + 1];
    double gap, far;
    cell_distances(lo_last, hi_last, box->lo[d - 1], box->hi[d - 1], &gap, &far);
    double rho_min2 = gap * gap, rho_max2 = far * far;
    if (d == 3) {
        cell_distances(lo_1, hi_1, box->lo[1], box->hi[1], &gap, &far);
        rho_min2 += gap * gap;
        rho_max2 += far * far;
    }
    if (rho_min2 > 1.0 + t->a->margin) return;
    double reach_out = sqrt(1.0 + t->a->margin - rho_min2);
    int64_t lo_out = lower_bound(t->a->first, start, end, box->lo[0] - reach_out);
    int64_t hi_out = upper_bound(t->a->first, lo_out, end, box->hi[0] + reach_out);
    double inner2 = 1.0 - t->a->margin - rho_max2;
    int64_t lo_in = hi_out, hi_in = hi_out;
    if (inner2 > 0.0) {
        /* Inside every window: |x_0 - q_0| <= reach_in for every seed's q_0. */
        double reach_in = sqrt(inner2);
        if (box->hi[0] - reach_in <= box->lo[0] + reach_in) {
            lo_in = lower_bound(t->a->first, lo_out, hi_out, box->hi[0] - reach_in);
            hi_in = upper_bound(t->a->first, lo_in, hi_out, box->lo[0] + reach_in);
            if (hi_in <= lo_in) lo_in = hi_in = hi_out;
        }
    }
    int64_t common[4] = {0, 0, 0, 0};
    if (hi_in > lo_in) {
        const int64_t *p_hi = t->a->prefix + hi_in * (d + 1), *p_lo = t->a->prefix + lo_in * (d + 1);
        for (int k = 0; k <= d; k++) common[k] += p_hi[k] - p_lo[k];
    }
    /* Squared distances from the centre: inside every window below sure_in,
     * outside all above sure_out (float64 rounding allowed for). */
    double inside = sqrt(1.0 - t->a->margin) - box->radius;
    double sure_in = inside > 0.0 ? inside * inside * (1.0 - 1e-12) : -1.0;
    double outside = sqrt(1.0 + t->a->margin) + box->radius;
    double sure_out = outside * outside * (1.0 + 1e-12);
    double c0 = box->center[0], c1 = box->center[1], c2 = box->center[2];
    /* Distances first (a loop without branches), then the shell is gathered
     * through a list of its positions. */
    int64_t n_low = lo_in - lo_out;
    const REAL *x0 = coords[0], *x1 = coords[1], *x2 = coords[d - 1];
    double *dist = scratch->dist;
    for (int part = 0; part < 2; part++) {
        int64_t lo = part == 0 ? lo_out : hi_in, hi = part == 0 ? lo_in : hi_out, base = part == 0 ? 0 : n_low;
        int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        const int64_t *w0 = t->sums[0], *w1 = t->sums[1], *w2 = t->sums[2], *w3 = t->sums[d == 3 ? 3 : 2];
        for (int64_t p = lo; p < hi; p++) {
            double diff = (double)x0[p] - c0;
            double dist2 = diff * diff;
            diff = (double)x1[p] - c1;
            dist2 += diff * diff;
            if (d == 3) {
                diff = (double)x2[p] - c2;
                dist2 += diff * diff;
            }
            dist[base + (p - lo)] = dist2;
            int64_t in_all = -(int64_t)(dist2 <= sure_in);
            s0 += w0[p] & in_all;
            s1 += w1[p] & in_all;
            s2 += w2[p] & in_all;
            s3 += w3[p] & in_all;
        }
        common[0] += s0, common[1] += s1, common[2] += s2;
        if (d == 3) common[3] += s3;
    }
    int64_t k = 0, n_band = n_low + hi_out - hi_in;
    for (int64_t at = 0; at < n_band; at++) {
        scratch->index[k] = at;
        double dist2 = dist[at];
        k += (dist2 > sure_in) & (dist2 <= sure_out);
    }
    REAL *shell[3] = {(REAL *)scratch->coords, (REAL *)scratch->coords + scratch->capacity,
                      (REAL *)scratch->coords + 2 * scratch->capacity};
    int64_t *shell_sums[4] = {scratch->sums, scratch->sums + scratch->capacity, scratch->sums + 2 * scratch->capacity,
                              scratch->sums + 3 * scratch->capacity};
    for (int64_t j = 0; j < k; j++) {
        int64_t at = scratch->index[j];
        int64_t point = at < n_low ? lo_out + at : hi_in + (at - n_low);
        for (int f = 0; f < d; f++) shell[f][j] = coords[f][point];
        for (int f = 0; f <= d; f++) shell_sums[f][j] = t->sums[f][point];
    }
    /* Seeds two by two over the shell (each point loaded once for both), an odd one alone. */
    int64_t i = i0;
    int width = d + 1;
    for (; i + 1 < i1; i += 2) {
        REAL s[3] = {seeds[i * d], seeds[i * d + 1], d == 3 ? seeds[i * d + 2] : seeds[i * d]};
        REAL u[3] = {seeds[(i + 1) * d], seeds[(i + 1) * d + 1], d == 3 ? seeds[(i + 1) * d + 2] : seeds[(i + 1) * d]};
        int64_t a[4], b[4];
        FN(band_sums_pair)(0, k, d, s, u, (REAL)t->a->edge, (const REAL *const *)shell, (const int64_t *const *)shell_sums, a, b);
        for (int f = 0; f < width; f++) {
            acc[i * width + f] += common[f] + a[f];
            acc[(i + 1) * width + f] += common[f] + b[f];
        }
    }
    if (i < i1) {
        REAL s0 = seeds[i * d], s1 = seeds[i * d + 1], s2 = d == 3 ? seeds[i * d + 2] : s0;
        int64_t a[4];
        FN(band_sums)(0, k, d, s0, s1, s2, (REAL)t->a->edge, (const REAL *const *)shell, (const int64_t *const *)shell_sums, a);
        for (int f = 0; f < width; f++) acc[i * width + f] += common[f] + a[f];
    }
}

/* The window sums of the seeds of groups g_first .. g_end - 1, added into t->a->acc. */
VECTOR_CLONES static void FN(accumulate_groups)(const RowSumTables *t, int64_t g_first, int64_t g_end,
                                  Scratch *scratch) {
    const double *q = t->a->q;
    const REAL *seeds = (const REAL *)t->a->seeds;
    int d = (int)t->a->d, width = d + 1;
    int64_t m = t->a->m, reach = m + 1;
    int64_t *acc = t->a->acc;
    if (t->a->n_rows == 0) return;
    int64_t hints[4];
    Box box;
    for (int64_t grp = g_first; grp < g_end; grp++) {
        int64_t i0 = t->a->group_starts[grp], i1 = t->a->group_starts[grp + 1];
        box_radius(q, d, i0, i1, &box);
        int shared = i1 - i0 > 1 && box.radius <= t->a->shared_radius;
        if (d == 1) {
            /* No coordinate across the rows: one row, at distance 0. */
            hints[0] = hints[1] = hints[2] = hints[3] = -1;
            for (int64_t i = i0; i < i1; i++) {
                int64_t a[4];
                REAL s0 = seeds[i];
                FN(row_sums)(t, q[i], s0, s0, s0, 0, 0.0, 0.0, hints, a);
                acc[i * width] += a[0];
                acc[i * width + 1] += a[1];
            }
            continue;
        }
        /* Rows outer, seeds inner: the row's points stay in cache for the group. */
        int64_t own1 = (int64_t)floor(q[i0 * d + 1] * (double)m);
        int64_t own2 = d == 3 ? (int64_t)floor(q[i0 * d + d - 1] * (double)m) : 0;
        int last = d - 2; /* the coordinate (of the last d - 1) that varies along a line of rows */
        int64_t own_last = d == 3 ? own2 : own1;
        int64_t lines = d == 3 ? 2 * reach + 1 : 1;
        for (int64_t line = 0; line < lines; line++) {
            int64_t c1 = d == 3 ? own1 + line - reach : 0;
            if (d == 3 && (c1 < t->a->cell_lo[0] || c1 > t->a->cell_hi[0])) continue;
            int64_t ptr = -1;
            for (int64_t step = 0; step < 2 * reach + 1; step++) {
                int64_t c = own_last + step - reach;
                if (c < t->a->cell_lo[last] || c > t->a->cell_hi[last]) continue;
                int64_t key = (c - t->a->origin[last]) * t->a->strides[last];
                if (d == 3) key += (c1 - t->a->origin[0]) * t->a->strides[0];
                /* One binary search per line; the line's keys are consecutive. */
                if (ptr < 0) ptr = lower_bound_int(t->a->row_keys, 0, t->a->n_rows, key);
                while (ptr < t->a->n_rows && t->a->row_keys[ptr] < key) ptr++;
                if (ptr >= t->a->n_rows || t->a->row_keys[ptr] != key) continue;
                double lo_last = (double)c / (double)m, hi_last = (double)(c + 1) / (double)m;
                double lo_1 = (double)c1 / (double)m, hi_1 = (double)(c1 + 1) / (double)m;
                if (shared) {
                    FN(shared_row_sums)(t, i0, i1, ptr, lo_last, hi_last, lo_1, hi_1, &box, scratch);
                    continue;
                }
                hints[0] = hints[1] = hints[2] = hints[3] = -1;
                for (int64_t i = i0; i < i1; i++) {
                    double x = q[i * d + last + 1];
                    double gap = fmax(lo_last - x, 0.0) + fmax(x - hi_last, 0.0);
                    double far = fmax(x - lo_last, hi_last - x);
                    double rho_min2 = 0.0, rho_max2 = 0.0;
                    if (d == 3) {
                        double y = q[i * d + 1];
                        double gap1 = fmax(lo_1 - y, 0.0) + fmax(y - hi_1, 0.0);
                        double far1 = fmax(y - lo_1, hi_1 - y);
                        rho_min2 = gap1 * gap1;
                        rho_max2 = far1 * far1;
                    }
                    rho_min2 += gap * gap;
                    rho_max2 += far * far;
                    if (rho_min2 > 1.0 + t->a->margin) continue;
                    REAL s0 = seeds[i * d], s1 = seeds[i * d + 1], s2 = d == 3 ? seeds[i * d + 2] : s0;
                    int64_t a[4];
                    FN(row_sums)(t, q[i * d], s0, s1, s2, ptr, rho_min2, rho_max2, hints, a);
                    for (int f = 0; f < width; f++) acc[i * width + f] += a[f];
                }
            }
        }
    }
}

/* sum_f (a_f - b_f)**2 feature by feature in the data's dtype (the dense formula). */
static REAL FN(squared_distance)(const REAL *a, const REAL *b, int d) {
    REAL diff = a[0] - b[0];
    REAL dist2 = diff * diff;
    for (int f = 1; f < d; f++) {
        diff = a[f] - b[f];
        dist2 += diff * diff;
    }
    return dist2;
}

static void FN(cell_of)(const REAL *x, int d, double side, int64_t cell[3]) {
    for (int f = 0; f < 3; f++) cell[f] = f < d ? (int64_t)floor((double)x[f] / side) : 0;
}

/* Which candidates (n, d <= 3, in merge order) the merge keeps: each unless a
 * kept one lies within distance 1 (squared distance <= within: 1 plus rounding).  Kept modes are more than 1 apart, so a
 * cell of side (> 1, so that a pair at rounded distance 1 is never two cells
 * apart) holds few; a candidate looks into its own and the 3**d adjacent cells. */
EXPORT VECTOR_CLONES int FN(keep_separated_modes)(const REAL *candidates, int64_t n, int d, double side, double within,
                                                 uint8_t *kept) {
    HashLists table;
    if (hash_lists_init(&table, n, n)) return -1;
    int64_t cell[3];
    int reach1 = d >= 2, reach2 = d >= 3;
    for (int64_t i = 0; i < n; i++) {
        const REAL *c = candidates + i * d;
        FN(cell_of)(c, d, side, cell);
        int covered = 0;
        for (int o0 = -1; o0 <= 1 && !covered; o0++)
            for (int o1 = -reach1; o1 <= reach1 && !covered; o1++)
                for (int o2 = -reach2; o2 <= reach2 && !covered; o2++) {
                    int64_t j = hash_lists_head(&table, cell_key(cell[0] + o0, cell[1] + o1, cell[2] + o2));
                    for (; j >= 0; j = table.next[j])
                        if (FN(squared_distance)(c, candidates + j * d, d) <= (REAL)within) {
                            covered = 1;
                            break;
                        }
                }
        kept[i] = !covered;
        if (!covered) hash_lists_push(&table, cell_key(cell[0], cell[1], cell[2]), i);
    }
    hash_lists_free(&table);
    return 0;
}

/* Index of, and squared distance to, the nearest center for every point (d <= 3).
 * Centers are hashed into cells of side; each point searches rings of cells
 * around its own until the best distance found is below ring * side, and past
 * max_ring rings compares with every center.  Ties go to the lowest index. */
EXPORT VECTOR_CLONES int FN(nearest_on_grid)(const REAL *points, int64_t n, const REAL *centers, int64_t k, int d, double side,
                        int64_t max_ring, int64_t *index, REAL *dist) {
    HashLists table;
    if (hash_lists_init(&table, k, k)) return -1;
    int64_t cell[3];
    /* Highest index first into each list, so lists run in increasing index. */
    for (int64_t c = k - 1; c >= 0; c--) {
        FN(cell_of)(centers + c * d, d, side, cell);
        hash_lists_push(&table, cell_key(cell[0], cell[1], cell[2]), c);
    }
    for (int64_t i = 0; i < n; i++) {
        const REAL *x = points + i * d;
        FN(cell_of)(x, d, side, cell);
        int64_t best = -1;
        double best_d2 = INFINITY;
        int64_t ring = 0;
        for (; ring <= max_ring; ring++) {
            int64_t r1 = d >= 2 ? ring : 0, r2 = d >= 3 ? ring : 0;
            for (int64_t o0 = -ring; o0 <= ring; o0++)
                for (int64_t o1 = -r1; o1 <= r1; o1++)
                    for (int64_t o2 = -r2; o2 <= r2; o2++) {
                        int64_t chebyshev = llabs(o0) > llabs(o1) ? llabs(o0) : llabs(o1);
                        if (llabs(o2) > chebyshev) chebyshev = llabs(o2);
                        if (chebyshev != ring) continue; /* an inner ring, already searched */
                        int64_t c = hash_lists_head(&table, cell_key(cell[0] + o0, cell[1] + o1, cell[2] + o2));
                        for (; c >= 0; c = table.next[c]) {
                            REAL d2 = FN(squared_distance)(x, centers + c * d, d);
                            if (best < 0 || d2 < best_d2 || (d2 == best_d2 && c < best)) best = c, best_d2 = d2;
                        }
                    }
            /* Every center beyond this ring is more than ring * side away (a
             * margin for rounding; a tie there must still be seen). */
            if (best >= 0 && best_d2 < ((double)ring * side) * ((double)ring * side) * (1.0 - 1e-5)) break;
        }
        if (ring > max_ring) { /* far from every cell searched: every center */
            best = -1;
            for (int64_t c = 0; c < k; c++) {
                REAL d2 = FN(squared_distance)(x, centers + c * d, d);
                if (best < 0 || d2 < best_d2) best = c, best_d2 = d2;
            }
        }
        index[i] = best;
        dist[i] = (REAL)best_d2;
    }
    hash_lists_free(&table);
    return 0;
}

#undef FN
#undef CAT
#undef CAT2
