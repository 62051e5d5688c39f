/* RFC 1071 Internet checksum helpers for fastproxy._core.
 *
 * Interface used by every part of the core (packet building, rewriting, NAT):
 *   fp_csum_add(p, n, acc)   add n bytes at p to a 64-bit one's-complement accumulator
 *   fp_csum_fold(acc)        fold the accumulator to 16 bits (NOT complemented)
 *   fp_csum_finish(acc)      the value to store in a checksum field (~fold), host order
 *   fp_csum_update16(c, old, new)  RFC 1624 eqn. 3 incremental update, host-order values
 *   fp_csum_update32(c, old, new)  the same for a 32-bit field (an IPv4 address)
 *   fp_csum_update_bytes(c, old, new, n)  the same for an n-byte field, n even (an IPv6 address)
 *   fp_csum_pseudo_header(src, dst, alen, len, nh)  accumulator of the IPv4 (alen 4) or IPv6
 *                            (alen 16) pseudo-header, to start fp_csum_add() with
 *
 * Values are host-order 16-bit numbers whose bytes are taken big-endian from the
 * packet, i.e. store a result with fp_store_be16().
 *
 * Speed: the one's-complement sum does not depend on byte order except for one
 * final byte swap (RFC 1071 section 2(B)), so fp_csum_add sums native-order
 * 32-bit words (memcpy loads: any alignment, no aliasing trouble) into four
 * independent 64-bit accumulators and swaps once at the end. A 64-bit
 * accumulator takes 2^32 such words before it can overflow, far beyond any
 * packet. Portable C: gcc/clang at -O3 vectorize the inner loop with the
 * baseline SIMD of the target (SSE2 on x86-64, NEON on arm64); MSVC runs it as
 * scalar code, still ~4 bytes per add.
 */
#ifndef FP_CHECKSUM_H
#define FP_CHECKSUM_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

/* Byte order of the host, decided at compile time where the compiler tells us;
 * otherwise at run time (the test folds to a constant anyway). */
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define FP_CSUM_HOST_IS_BIG_ENDIAN() 1
#elif defined(__BYTE_ORDER__) || defined(_MSC_VER)
#define FP_CSUM_HOST_IS_BIG_ENDIAN() 0  /* every MSVC target is little-endian */
#else
static inline int fp_csum_host_is_big_endian(void) {
    const uint16_t one = 1;
    uint8_t first;
    memcpy(&first, &one, 1);
    return first == 0;
}
#define FP_CSUM_HOST_IS_BIG_ENDIAN() fp_csum_host_is_big_endian()
#endif

static inline uint16_t fp_csum_fold(uint64_t acc) {
    /* End-around carry: each step keeps the value congruent mod 0xffff and
     * never turns a non-zero sum into 0 (so 0xffff, "negative zero", survives). */
    acc = (acc & 0xffffffffu) + (acc >> 32);   /* < 2^33 */
    acc = (acc & 0xffffu) + (acc >> 16);       /* < 2^17 + 2^16 */
    acc = (acc & 0xffffu) + (acc >> 16);       /* <= 0x10001 */
    acc = (acc & 0xffffu) + (acc >> 16);       /* <= 0xffff */
    return (uint16_t)acc;
}

static inline uint32_t fp_csum_load_native32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Add the n bytes at p (p[0] is the high byte of the first 16-bit word; a
 * trailing odd byte is padded with a zero low byte) to acc. Any alignment. */
static inline uint64_t fp_csum_add(const uint8_t *p, size_t n, uint64_t acc) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    uint16_t native;
    for (; i + 16 <= n; i += 16) {
        s0 += fp_csum_load_native32(p + i);
        s1 += fp_csum_load_native32(p + i + 4);
        s2 += fp_csum_load_native32(p + i + 8);
        s3 += fp_csum_load_native32(p + i + 12);
    }
    for (; i + 4 <= n; i += 4) s0 += fp_csum_load_native32(p + i);
    s0 += s1 + s2 + s3;
    /* The last 0-3 bytes, placed as they would sit in a native 32-bit word
     * (zero padded), so one swap below fixes every byte alike. */
    if (i < n) {
        uint8_t tail[4] = {0, 0, 0, 0};
        memcpy(tail, p + i, n - i);
        s0 += fp_csum_load_native32(tail);
    }
    native = fp_csum_fold(s0);
    if (!FP_CSUM_HOST_IS_BIG_ENDIAN()) native = (uint16_t)((native >> 8) | (native << 8));
    return acc + native;
}

/* The IPv4 pseudo-header (src, dst, zero, protocol, 16-bit length) and the IPv6
 * one (src, dst, 32-bit length, three zeros, next header) sum alike: the length
 * as two 16-bit halves (the high half is 0 for IPv4) plus the protocol. */
static inline uint64_t fp_csum_pseudo_header(const uint8_t *src, const uint8_t *dst, size_t addr_len,
                                             uint32_t length, uint8_t next_header) {
    uint64_t acc = fp_csum_add(src, addr_len, 0);
    acc = fp_csum_add(dst, addr_len, acc);
    return acc + (length >> 16) + (length & 0xffffu) + next_header;
}

static inline uint16_t fp_csum_finish(uint64_t acc) { return (uint16_t)~fp_csum_fold(acc); }

static inline uint16_t fp_csum_update16(uint16_t csum, uint16_t old_value, uint16_t new_value) {
    /* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') */
    uint32_t acc = (uint16_t)~csum + (uint32_t)(uint16_t)~old_value + new_value;
    return (uint16_t)~fp_csum_fold(acc);
}

static inline uint16_t fp_csum_update32(uint16_t csum, uint32_t old_value, uint32_t new_value) {
    /* eqn. 3 with both 16-bit halves of the field in one sum */
    uint64_t acc = (uint16_t)~csum;
    acc += (uint16_t)~(old_value >> 16) + (uint64_t)(uint16_t)~old_value;
    acc += (new_value >> 16) + (uint64_t)(new_value & 0xffffu);
    return (uint16_t)~fp_csum_fold(acc);
}

/* eqn. 3 over an n-byte field (n even), old and new taken big-endian. */
static inline uint16_t fp_csum_update_bytes(uint16_t csum, const uint8_t *old_value,
                                            const uint8_t *new_value, size_t n) {
    uint64_t acc = (uint16_t)~csum;
    size_t i;
    for (i = 0; i + 1 < n; i += 2) {
        acc += (uint16_t)~(((unsigned)old_value[i] << 8) | old_value[i + 1]);
        acc += ((unsigned)new_value[i] << 8) | new_value[i + 1];
    }
    return (uint16_t)~fp_csum_fold(acc);
}

static inline uint16_t fp_load_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline void fp_store_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline uint32_t fp_load_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void fp_store_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

#endif
