/* x86_prefill.h: the parts the x86 prompt GEMMs (x86_avx2_prefill.c,
 * x86_avx512_prefill.c) share: block sizes and the packing of activations
 * into token groups. AVX2-level intrinsics only.
 *
 * Not a normal header: each of those files includes it after its own target
 * pragma, so these static inline functions are compiled for that file's ISA,
 * and defines before it AI (always-inline), the kinds K_Q4_0, K_Q4_1,
 * K_Q8_0, and TT (tokens per group).
 */
#ifndef PQ_X86_PREFILL_H
#define PQ_X86_PREFILL_H

AI size_t w_block_bytes(const int kind) { return kind == K_Q4_0 ? 18 : kind == K_Q4_1 ? 20 : 34; }
AI size_t x_block_bytes(const int kind) { return kind == K_Q4_1 ? 36 : 34; } /* Q8_1 : Q8_0 */
AI size_t x_qs_offset(const int kind) { return kind == K_Q4_1 ? 4 : 2; }

/* Activations of a group of TT tokens, block-major, so that the kernel reads
 * every operand of a block at fixed offsets from one pointer (TT*40 bytes):
 *   qs[TT][32]  int8 quants of token j
 *   d[TT]       f32 scales
 *   c[TT]       int32 start of the dot (the offset correction: -8*sum(qs)
 *               for Q4_0, -128*sum(qs) for Q8_0 weights stored as w + 128),
 *               or for Q8_1 the f32 s = d * sum(q) (Q4_1's m*s term). */
AI size_t xpack_block_bytes(void) { return (size_t)TT * 40; }

/* Tokens per pass over the weights: the packed activations of one pass
 * (streamed once per row tile) are kept to about PQ_PF_XBUDGET bytes, a
 * share of L3; a multiple of TT, at least TT. Each pass packs every weight
 * tile again. Measured on 2048x5632 Q4_0, n_tok 2048, 1 thread (Zen 4, 32 MiB
 * L3), GFLOP/s: no limit 147 (the activations fell out of L3), 256 KiB 209,
 * 1 MiB 250, 2 MiB 274, 4 MiB 290, 8 MiB 298 (avx2: 4 MiB best, 180). */
#ifndef PQ_PF_XBUDGET
#define PQ_PF_XBUDGET PQ_GEMM_XBUDGET /* kernels.h: the scratch forward.c sizes */
#endif
AI int64_t token_pass(int64_t nb, int64_t n_tok) {
    int64_t c = (int64_t)(PQ_PF_XBUDGET / ((size_t)nb * xpack_block_bytes())) / TT * TT;
    if (c < TT) c = TT;
    return c < n_tok ? c : n_tok;
}

/* Sum of 32 int8: bias to u8 so sad_epu8 can add them, then remove the bias. */
AI int32_t sum_i8x32(__m256i q) {
    const __m256i u = _mm256_xor_si256(q, _mm256_set1_epi8((char)0x80));
    const __m256i s = _mm256_sad_epu8(u, _mm256_setzero_si256()); /* 4 x u64 */
    __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s2 = _mm_add_epi64(s2, _mm_unpackhi_epi64(s2, s2));
    return _mm_cvtsi128_si32(s2) - 32 * 128;
}

/* Tokens [0, tn) of X (all nb blocks) into groups of TT at out; the last
 * group may be partial (its missing tokens are never read). */
AI void pack_x(const int kind, int64_t nb, const char *X, size_t xs, int64_t tn, char *out) {
    const size_t xbs = x_block_bytes(kind), xo = x_qs_offset(kind), pbx = xpack_block_bytes();
    const int32_t c = kind == K_Q4_0 ? -8 : -128;
    for (int64_t t = 0; t < tn; t++) {
        const int64_t j = t % TT;
        char *o = out + (t / TT) * nb * pbx;
        for (int64_t b = 0; b < nb; b++, o += pbx) {
            const char *xb = X + t * xs + b * xbs;
            const __m256i q = _mm256_loadu_si256((const __m256i *)(xb + xo));
            _mm256_storeu_si256((__m256i *)(o + 32 * j), q);
            uint16_t h;
            memcpy(&h, xb, 2);
            const float d = _cvtsh_ss(h);
            memcpy(o + 32 * TT + 4 * j, &d, 4);
            if (kind == K_Q4_1) {
                memcpy(&h, xb + 2, 2);
                const float sv = _cvtsh_ss(h);
                memcpy(o + 36 * TT + 4 * j, &sv, 4);
            } else {
                const int32_t cv = c * sum_i8x32(q);
                memcpy(o + 36 * TT + 4 * j, &cv, 4);
            }
        }
    }
}

#endif /* PQ_X86_PREFILL_H */
