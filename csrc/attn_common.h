/* attn_common.h: the ISA-neutral part of the SIMD attention kernels of
 * x86_avx2.c, x86_avx512.c and arm_neon.c: the blocked causal attention
 * driver (prompts), the decode driver over tokens and head tiles, and the
 * decode tile with lanes over head_dim (AVX2 and NEON; AVX-512 has its own).
 * What it is not: the scalar twins (quants.c), or any vector code: that
 * stays in the ISA files as the primitives listed below.
 *
 * Not a normal header: each of those files includes it after its own target
 * pragma, so these static inline functions are compiled for that file's ISA
 * (as x86_prefill.h is). Before including it, a file defines:
 *   AI                      always-inline
 *   f16_load(p)             one f16 as f32
 *   AW                      query rows per register (lanes of the blocked kernel)
 *   VT                      the widest value tile, in columns (attn_value_tile's D)
 *   attn_row_f16(x, hd, out)                 one f16 cache row -> hd f32
 *   attn_score_tile(P, hd, qt, k, kld, s)    scores of P keys (P = 8 or 1)
 *   attn_value_tile(D, kn, w, v, vld, ot)    D = VT, 4 or 1 value columns
 *   attn_softmax_lanes(s, nk, diag, last, scale, sum)   one lane chunk's softmax
 *   attn_div_lanes(o, hd, sum)               O^T (hd, AW) divided by the lane sums
 * and for the decode kernel either (ATTN_OWN_DEC_TILE defined) its own
 *   dec_hmax(hd)            heads per tile, 0: no decode kernel for hd (blocked)
 *   dec_heads(f16, H, hd, n_keys, q, K, V, kv_ld, scale, o, s)   one tile of H heads
 * or the primitives of the shared decode tile:
 *   DW                      f32 lanes per register
 *   DEC_CHAINS              FMA chains the value pass keeps running side by side
 *   dec_dots(f16, H, hdv, hd, k, q, t)       t[h] = q_h . k over [0, hdv), hdv = hd & -DW
 *   dec_softmax(s, n_keys)  s = exp(s - max s) in place; returns the sum
 *   dec_values(f16, H, CC, d, hd, n_keys, V, kv_ld, s, sum, o)   columns [d, d + DW*CC)
 * It defines NC, attn_rows_f32, attn_group, attn_blocked, attn_dec and the table
 * entries attn_f32, attn_f16, attn_dec_f32, attn_dec_f16.
 */
#ifndef PQ_ATTN_COMMON_H
#define PQ_ATTN_COMMON_H

/* The arguments of a pq_attn_fn (kernels.h), and passing them on. */
#define ATTN_ARGS int64_t hd, const float *Q, int64_t q_ld, int g, int64_t n_tok, int64_t n_past, \
                  const void *K, const void *V, int64_t kv_ld, float scale, float *O, int64_t o_ld, \
                  float *scratch
#define ATTN_PASS hd, Q, q_ld, g, n_tok, n_past, K, V, kv_ld, scale, O, o_ld, scratch

/* ---- blocked causal attention (prefill) -------------------------------------------- */

/* One register lane per query row: scores, softmax and the weighted sum of
 * values run across AW queries at once with no horizontal sums. f16 cache
 * rows are converted PQ_ATTN_KEY_CHUNK rows at a time into scratch, once for
 * all the lane chunks (of AW) of a call, up to PQ_ATTN_LANES_MAX lanes.
 * Scratch layout (floats), NC = PQ_ATTN_LANES_MAX / AW chunks:
 * S (NC, n_keys, AW), Q^T and O^T (NC, hd, AW), sum (NC, AW) and a spare
 * (NC, AW), rows (PQ_ATTN_KEY_CHUNK, hd). */
enum { NC = PQ_ATTN_LANES_MAX / AW };

/* Keys of chunk [c0, c0 + PQ_ATTN_KEY_CHUNK) below n. */
AI int64_t attn_chunk_keys(int64_t n, int64_t c0) {
    return n - c0 < PQ_ATTN_KEY_CHUNK ? n - c0 : PQ_ATTN_KEY_CHUNK;
}

/* Rows [p0, p0 + kn) of one cache head as f32 rows, stride in *ld. */
AI const float *attn_rows_f32(const int f16, const void *X, int64_t x_ld, int64_t p0, int64_t kn,
                              int64_t hd, float *buf, int64_t *ld) {
    if (!f16) {
        *ld = x_ld;
        return (const float *)X + p0 * x_ld;
    }
    for (int64_t p = 0; p < kn; p++) attn_row_f16((const uint16_t *)X + (p0 + p) * x_ld, hd, buf + p * hd);
    *ld = hd;
    return buf;
}

/* Lanes [j0, j0 + nl) of a pq_attn_fn call, nl <= PQ_ATTN_LANES_MAX. */
AI void attn_group(const int f16, int64_t hd, const float *Q, int64_t q_ld, int g, int64_t j0,
                   int nl, int64_t n_past, const void *K, const void *V, int64_t kv_ld,
                   float scale, float *O, int64_t o_ld, float *scratch) {
    const int nc = (nl + AW - 1) / AW;
    const int64_t n_keys = n_past + (j0 + nl - 1) / g + 1; /* of the last lane */
    float *S = scratch, *qt = S + NC * n_keys * AW, *ot = qt + NC * hd * AW;
    float *sums = ot + NC * hd * AW, *buf = sums + 2 * NC * AW;
    int64_t nk[NC], diag[NC]; /* keys of chunk c, and the first one masked in some lane */
    int32_t last[NC][AW];     /* the last key each lane sees (pad lanes: all) */
    for (int c = 0; c < nc; c++) {
        const int64_t jc = j0 + c * AW, t_last = (jc + (nl - c * AW < AW ? nl - c * AW : AW) - 1) / g;
        nk[c] = n_past + t_last + 1;
        diag[c] = n_past + jc / g + 1;
        for (int j = 0; j < AW; j++) {
            const int live = c * AW + j < nl;
            const int64_t t = live ? (jc + j) / g : t_last;
            last[c][j] = (int32_t)(n_past + t);
            const float *q = Q + t * q_ld + ((jc + j) % g) * hd;
            for (int64_t d = 0; d < hd; d++) qt[(c * hd + d) * AW + j] = live ? q[d] : 0.0f;
        }
    }

    /* Scores S_c (nk[c], AW): each chunk of keys converted once for all lane chunks. */
    for (int64_t c0 = 0; c0 < n_keys; c0 += PQ_ATTN_KEY_CHUNK) {
        int64_t kld;
        const float *k = attn_rows_f32(f16, K, kv_ld, c0, attn_chunk_keys(n_keys, c0), hd, buf, &kld);
        for (int c = 0; c < nc; c++) {
            const int64_t kc = attn_chunk_keys(nk[c], c0); /* nk[c] <= n_keys */
            float *s = S + (c * n_keys + c0) * AW;
            int64_t p = 0;
            for (; p + 8 <= kc; p += 8) attn_score_tile(8, hd, qt + c * hd * AW, k + p * kld, kld, s + p * AW);
            for (; p < kc; p++) attn_score_tile(1, hd, qt + c * hd * AW, k + p * kld, kld, s + p * AW);
        }
    }

    /* Scale, mask the keys after each lane's own position, softmax in f32
     * (max subtracted); the division by the sum waits for O. */
    for (int c = 0; c < nc; c++)
        attn_softmax_lanes(S + c * n_keys * AW, nk[c], diag[c], last[c], scale, sums + c * AW);

    /* O^T_c (hd, AW) = sum_p e_p V_p, each chunk of values converted once. */
    memset(ot, 0, sizeof(float) * (size_t)(nc * hd * AW));
    for (int64_t c0 = 0; c0 < n_keys; c0 += PQ_ATTN_KEY_CHUNK) {
        int64_t vld;
        const float *v = attn_rows_f32(f16, V, kv_ld, c0, attn_chunk_keys(n_keys, c0), hd, buf, &vld);
        for (int c = 0; c < nc; c++) {
            const int64_t kc = attn_chunk_keys(nk[c], c0);
            if (kc <= 0) continue;
            const float *w = S + (c * n_keys + c0) * AW;
            float *o = ot + c * hd * AW;
            int64_t d = 0;
            for (; d + VT <= hd; d += VT) attn_value_tile(VT, kc, w, v + d, vld, o + d * AW);
            for (; d + 4 <= hd; d += 4) attn_value_tile(4, kc, w, v + d, vld, o + d * AW);
            for (; d < hd; d++) attn_value_tile(1, kc, w, v + d, vld, o + d * AW);
        }
    }

    /* O = O^T / sum, back to rows. */
    for (int c = 0; c < nc; c++) {
        float *o = ot + c * hd * AW;
        attn_div_lanes(o, hd, sums + c * AW);
        for (int j = 0; j < AW && c * AW + j < nl; j++) {
            const int64_t jj = j0 + c * AW + j;
            float *out = O + jj / g * o_ld + (jj % g) * hd;
            for (int64_t d = 0; d < hd; d++) out[d] = o[d * AW + j];
        }
    }
}

AI void attn_blocked(const int f16, ATTN_ARGS) {
    const int64_t n = n_tok * g;
    for (int64_t j0 = 0; j0 < n; j0 += PQ_ATTN_LANES_MAX)
        attn_group(f16, hd, Q, q_ld, g, j0, (int)(n - j0 < PQ_ATTN_LANES_MAX ? n - j0 : PQ_ATTN_LANES_MAX),
                   n_past, K, V, kv_ld, scale, O, o_ld, scratch);
}

/* ---- attention for a few query rows (decode) ---------------------------------------- */

#ifndef ATTN_OWN_DEC_TILE
/* Lanes over head_dim, DW elements a register: each key row is loaded and
 * converted once for the H (<= 4) query heads of a tile (queries read from
 * L1 as FMA operands), each score costs one horizontal sum; values go one
 * column chunk at a time over all keys, DEC_CHAINS/H chunks per pass so that
 * DEC_CHAINS FMA chains run side by side. Scratch: scores (H, n_keys). */
AI float dec_elem(const int f16, const void *X, int64_t i) {
    return f16 ? f16_load((const uint16_t *)X + i) : ((const float *)X)[i];
}

/* Heads q + h*hd (h < H) of one token against keys/values 0..n_keys-1. */
AI void dec_tile(const int f16, const int H, int64_t hd, int64_t n_keys, const float *q,
                 const void *K, const void *V, int64_t kv_ld, float scale, float *o, float *s) {
    const size_t es = f16 ? 2 : 4;
    const int64_t hdv = hd & ~(int64_t)(DW - 1);
    for (int64_t p = 0; p < n_keys; p++) {
        const char *k = (const char *)K + p * kv_ld * es;
        float t[4];
        dec_dots(f16, H, hdv, hd, k, q, t);
        for (int h = 0; h < H; h++) {
            float th = t[h];
            for (int64_t d = hdv; d < hd; d++) th += dec_elem(f16, k, d) * q[h * hd + d];
            s[h * n_keys + p] = th * scale;
        }
    }
    float sum[4];
    for (int h = 0; h < H; h++) sum[h] = dec_softmax(s + h * n_keys, n_keys);
    const int CC = DEC_CHAINS / H; /* column chunks per pass */
    int64_t d = 0;
    for (; d + DW * CC <= hd; d += DW * CC) dec_values(f16, H, CC, d, hd, n_keys, V, kv_ld, s, sum, o);
    for (; d + DW <= hd; d += DW) dec_values(f16, H, 1, d, hd, n_keys, V, kv_ld, s, sum, o);
    for (; d < hd; d++) /* the last hd % DW columns */
        for (int h = 0; h < H; h++) {
            float t = 0.0f;
            for (int64_t p = 0; p < n_keys; p++)
                t += s[h * n_keys + p] * dec_elem(f16, (const char *)V + p * kv_ld * es, d);
            o[h * hd + d] = t / sum[h];
        }
}

/* Heads per tile: up to 4 whatever hd. */
AI int dec_hmax(int64_t hd) {
    (void)hd;
    return 4;
}

/* H <= 4 heads of one token, with H a constant in each dec_tile. */
AI void dec_heads(const int f16, int H, int64_t hd, int64_t n_keys, const float *q, const void *K,
                  const void *V, int64_t kv_ld, float scale, float *o, float *s) {
    switch (H) {
    case 1: dec_tile(f16, 1, hd, n_keys, q, K, V, kv_ld, scale, o, s); break;
    case 2: dec_tile(f16, 2, hd, n_keys, q, K, V, kv_ld, scale, o, s); break;
    case 3: dec_tile(f16, 3, hd, n_keys, q, K, V, kv_ld, scale, o, s); break;
    default: dec_tile(f16, 4, hd, n_keys, q, K, V, kv_ld, scale, o, s); break;
    }
}
#endif /* ATTN_OWN_DEC_TILE */

/* Each token's g heads in tiles of dec_hmax(hd), or the blocked kernel where
 * the file has no decode tile for hd. */
AI void attn_dec(const int f16, ATTN_ARGS) {
    const int hmax = dec_hmax(hd);
    if (!hmax) {
        attn_blocked(f16, ATTN_PASS);
        return;
    }
    for (int64_t t = 0; t < n_tok; t++)
        for (int i = 0; i < g; i += hmax)
            dec_heads(f16, g - i < hmax ? g - i : hmax, hd, n_past + t + 1, Q + t * q_ld + i * hd, K, V,
                      kv_ld, scale, O + t * o_ld + i * hd, scratch);
}

/* The table entries. */
static void attn_f32(ATTN_ARGS) { attn_blocked(0, ATTN_PASS); }
static void attn_f16(ATTN_ARGS) { attn_blocked(1, ATTN_PASS); }
static void attn_dec_f32(ATTN_ARGS) { attn_dec(0, ATTN_PASS); }
static void attn_dec_f16(ATTN_ARGS) { attn_dec(1, ATTN_PASS); }
#undef ATTN_ARGS
#undef ATTN_PASS

#endif /* PQ_ATTN_COMMON_H */
