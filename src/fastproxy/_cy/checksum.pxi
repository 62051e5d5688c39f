# fastproxy._core: checksum (included by _core.pyx; see the module docstring there).

cdef extern from "fp_checksum.h" nogil:
    uint64_t fp_csum_add(const uint8_t *p, size_t n, uint64_t acc)
    uint16_t fp_csum_fold(uint64_t acc)
    uint16_t fp_csum_finish(uint64_t acc)
    uint16_t fp_csum_update16(uint16_t csum, uint16_t old_value, uint16_t new_value)
    uint16_t fp_load_be16(const uint8_t *p)
    void fp_store_be16(uint8_t *p, uint16_t v)
    uint32_t fp_load_be32(const uint8_t *p)
    void fp_store_be32(uint8_t *p, uint32_t v)
