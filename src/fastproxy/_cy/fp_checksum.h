/* RFC 1071 Internet checksum helpers for fastproxy._core.
 *
 * Interface used by every part of the core (packet building, rewriting, NAT):
 *   fp_csum_add(p, n, acc)   add n bytes at p to a 64-bit one's-complement accumulator
 *   fp_csum_fold(acc)        fold the accumulator to 16 bits (NOT complemented)
 *   fp_csum_finish(acc)      the value to store in a checksum field (~fold), host order
 *   fp_csum_update16(c, old, new)  RFC 1624 eqn. 3 incremental update, host-order values
 *
 * Values are host-order 16-bit numbers whose bytes are taken big-endian from the
 * packet, i.e. store a result with fp_store_be16().
 * (Simple reference version; the checksum owner replaces the loop with a fast one.)
 */
#ifndef FP_CHECKSUM_H
#define FP_CHECKSUM_H

#include <stdint.h>
#include <stddef.h>

static inline uint64_t fp_csum_add(const uint8_t *p, size_t n, uint64_t acc) {
    size_t i = 0;
    for (; i + 1 < n; i += 2) acc += ((uint32_t)p[i] << 8) | p[i + 1];
    if (i < n) acc += (uint32_t)p[i] << 8;
    return acc;
}

static inline uint16_t fp_csum_fold(uint64_t acc) {
    while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
    return (uint16_t)acc;
}

static inline uint16_t fp_csum_finish(uint64_t acc) { return (uint16_t)~fp_csum_fold(acc); }

static inline uint16_t fp_csum_update16(uint16_t csum, uint16_t old_value, uint16_t new_value) {
    /* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') */
    uint32_t acc = (uint16_t)~csum + (uint32_t)(uint16_t)~old_value + new_value;
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
