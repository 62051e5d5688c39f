/* Source-NAT flow table for ICMP echo (fastproxy._core, area "flowtable").
 *
 * Key   : (connection id u32, client source address, destination address, client echo id u16),
 *         family 4 or 6 (addresses stored as 16 bytes, v4 in the first 4, the rest zero).
 * Value : an echo id assigned by the table, unique per destination, so replies from one
 *         destination are demultiplexed by echo id alone.
 * Reverse: (destination, assigned id) -> (connection id, client source, client echo id).
 *
 * Layout (fixed at creation, no allocation afterwards), per flow of capacity C:
 *   entries : C x 48-byte fp_ft_entry slab ................................ 48 bytes
 *   fwd     : 1.5C u32 slots, open addressing, linear probing ............   6 bytes
 *   rev     : 1.5C u32 slots, same scheme, keyed by (dst, assigned id) ...   6 bytes
 *   conns   : C/2 u64 cells (conn id, live-flow count), writer only ......   4 bytes
 *                                                                      total 64 bytes
 * Index slots hold (hash tag | entry index + 1); 0 is empty. The home slot is a
 * multiply-shift range reduction of the hash (so 1.5C needs no power of two); the
 * tag (the low hash bits above the index bits) skips most non-matching entries
 * without touching them. Deletion is backward shift (no tombstones), so probe
 * lengths depend only on the live load (<= 2/3) however many insert/delete
 * cycles have run. The connection table holds at most 3/4 of its cells, i.e.
 * 3C/8 distinct connections with live flows (at least 48).
 *
 * Time: the caller passes float seconds (time.monotonic()). The table keeps
 * int64 milliseconds since the first time it saw ("epoch"), and stores in each
 * entry the u32 offset from a base. When the offset would reach 2^31 (24.8 days
 * after the base) the writer rebases: base moves forward by (offset - 2^30) and
 * every live entry's offset drops by the same amount, clamped at 0. A clamped
 * entry is at least 2^30 ms idle, which is more than the largest idle timeout
 * allowed (FP_FT_MAX_TIMEOUT_MS), so it still expires correctly: nothing wraps,
 * ever. The rebase walks the slab once per ~12 days (tens of ms at 1M flows).
 *
 * Concurrency: ONE writer (acquire, remove, expire, touch, rebase; the Python
 * API holds the GIL for these) and any number of lock-free readers (lookup,
 * reverse, lookup_batch; they may run without the GIL in other threads).
 *   1. Entries are protected by a per-entry sequence lock in `ctrl`:
 *      bit0 BUSY, bit1 LIVE, bit2 V6, bits 3..31 a generation counter.
 *      Writer: store ctrl|BUSY (relaxed); release fence; store the fields (relaxed
 *      atomics); store the new ctrl with generation+1 (release).
 *      Reader: c1 = load ctrl (acquire); require LIVE and not BUSY; load the fields
 *      (relaxed); acquire fence; c2 = load ctrl (relaxed); accept only if c1 == c2,
 *      then compare the copied key with the wanted key. A reader therefore only
 *      returns a value read together with a matching key in one stable version of
 *      the entry: never a value of another key. ABA needs 2^29 rewrites of one
 *      entry during a single read; the free list is FIFO, which spreads reuse.
 *   2. Index slots are published with a release store after the entry is fully
 *      written (insert never moves other slots); readers load slots with acquire.
 *      An entry is freed (step 1, LIVE cleared) only after both its index slots
 *      are gone, and a stale slot seen by a slow reader fails the check in step 1.
 *   3. Backward shift moves slots towards their home, so a concurrent reader
 *      could walk past a moving key and report a false miss. Each index has a
 *      version counter, odd while a shift runs (seqlock over the index): a reader
 *      that misses re-checks the version and retries (at most FP_FT_READ_RETRIES
 *      times; after that a miss is reported, which callers treat as a drop). Hits
 *      need no index check: step 1 validates them.
 * The table must outlive its readers (the Python object is referenced by them).
 */
#ifndef FP_FLOWTABLE_H
#define FP_FLOWTABLE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#if defined(_M_ARM64)
#define fp_ft_load_acq(p) ((uint32_t)__ldar32((unsigned __int32 volatile *)(p)))
#define fp_ft_store_rel(p, v) __stlr32((unsigned __int32 volatile *)(p), (unsigned __int32)(v))
#define fp_ft_fence() __dmb(_ARM64_BARRIER_ISH)
#define fp_ft_prefetch(p) __prefetch((const void *)(p))
#else /* x86/x64 are TSO: loads are acquire and stores release in hardware */
static __forceinline uint32_t fp_ft_load_acq(const uint32_t *p) {
    uint32_t v = *(volatile const uint32_t *)p;
    _ReadWriteBarrier();
    return v;
}
static __forceinline void fp_ft_store_rel(uint32_t *p, uint32_t v) {
    _ReadWriteBarrier();
    *(volatile uint32_t *)p = v;
}
#define fp_ft_fence() _ReadWriteBarrier()
#define fp_ft_prefetch(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
#endif
#define fp_ft_load_rlx(p) (*(volatile const uint32_t *)(p))
#define fp_ft_store_rlx(p, v) (*(volatile uint32_t *)(p) = (uint32_t)(v))
#define fp_ft_fence_acq() fp_ft_fence()
#define fp_ft_fence_rel() fp_ft_fence()
#else
#define fp_ft_load_acq(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define fp_ft_load_rlx(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define fp_ft_store_rel(p, v) __atomic_store_n((p), (uint32_t)(v), __ATOMIC_RELEASE)
#define fp_ft_store_rlx(p, v) __atomic_store_n((p), (uint32_t)(v), __ATOMIC_RELAXED)
#define fp_ft_fence_acq() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define fp_ft_fence_rel() __atomic_thread_fence(__ATOMIC_RELEASE)
#define fp_ft_prefetch(p) __builtin_prefetch((const void *)(p), 0, 3)
#endif

#define FP_FT_BUSY 1u
#define FP_FT_LIVE 2u
#define FP_FT_V6 4u
#define FP_FT_GEN_ONE 8u
#define FP_FT_NONE 0xFFFFFFFFu
#define FP_FT_MISS 0xFFFFFFFFu
#define FP_FT_READ_RETRIES 8
#define FP_FT_MAX_CAPACITY (1u << 30)
#define FP_FT_MAX_TIMEOUT_MS ((int64_t)1 << 30) /* exclusive bound, see "Time" */
#define FP_FT_REBASE_AT ((int64_t)1 << 31)
#define FP_FT_KEY_SIZE 40
#define FP_FT_BATCH_CHUNK 32

/* error codes of fp_ft_acquire */
#define FP_FT_OK 0
#define FP_FT_ERR_FULL_GLOBAL 1
#define FP_FT_ERR_FULL_CONNECTION 2
#define FP_FT_ERR_EXHAUSTED 3
#define FP_FT_ERR_BAD_ARGUMENT 4

typedef struct {
    uint32_t ctrl;      /* sequence lock word, see "Concurrency" */
    uint32_t conn;
    uint32_t src[4];
    uint32_t dst[4];
    uint32_t ids;       /* client echo id | assigned id << 16 */
    uint32_t last_used; /* ms since base while live; FIFO free-list link while free */
} fp_ft_entry;

/* What a reverse lookup returns. */
typedef struct {
    uint32_t entry; /* slab index: pass to fp_ft_touch (writer) */
    uint32_t conn;
    uint8_t src[16];
    uint16_t echo_id;
    uint8_t family;
} fp_ft_flow;

typedef struct {
    uint32_t conn;
    uint32_t src[4];
    uint32_t dst[4];
    uint16_t echo_id;
    uint8_t family;
} fp_ft_key;

typedef struct {
    fp_ft_entry *entries;
    uint32_t *fwd;
    uint32_t *rev;
    uint64_t *conns;
    uint32_t capacity, nslots, idx_bits, idx_mask;
    uint32_t fwd_ver, rev_ver;
    uint32_t conn_mask, nconns, max_conns, max_per_conn;
    uint32_t live, watermark, free_head, free_tail, sweep_cursor;
    int64_t timeout_ms, base_ms;
    double epoch;
    int have_epoch;
    uint64_t seed[4];
    uint64_t rng;
    uint64_t removals;
    /* remembers the last destination found with all 65536 ids taken, so a client
       hammering it costs one lookup per packet until a flow is removed */
    uint32_t memo_dst[4];
    uint32_t memo_family;
    uint64_t memo_removals;
} fp_ft_table;

/* ---- hashing ---------------------------------------------------------------- */

static inline uint64_t fp_ft_mum(uint64_t a, uint64_t b) {
#if defined(__SIZEOF_INT128__)
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
#elif defined(_MSC_VER) && defined(_M_X64)
    uint64_t hi, lo = _umul128(a, b, &hi);
    return lo ^ hi;
#elif defined(_MSC_VER) && defined(_M_ARM64)
    return (a * b) ^ __umulh(a, b);
#else
    uint64_t al = (uint32_t)a, ah = a >> 32, bl = (uint32_t)b, bh = b >> 32;
    uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    uint64_t mid = (ll >> 32) + (uint32_t)lh + (uint32_t)hl;
    uint64_t lo = (mid << 32) | (uint32_t)ll;
    uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
    return lo ^ hi;
#endif
}

static inline uint64_t fp_ft_load64(const uint32_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t fp_ft_hash_fwd(const fp_ft_table *t, const fp_ft_key *k) {
    uint64_t w = (uint64_t)k->conn | ((uint64_t)k->echo_id << 32) | ((uint64_t)k->family << 48);
    uint64_t a = fp_ft_mum(fp_ft_load64(k->src) ^ t->seed[0], fp_ft_load64(k->src + 2) ^ t->seed[1]);
    uint64_t b = fp_ft_mum(fp_ft_load64(k->dst) ^ t->seed[2], fp_ft_load64(k->dst + 2) ^ t->seed[3]);
    return fp_ft_mum(a ^ w ^ t->seed[1], b ^ t->seed[2] ^ 0x9E3779B97F4A7C15ull);
}

static inline uint64_t fp_ft_hash_rev(const fp_ft_table *t, const uint32_t dst[4], unsigned family,
                                      uint16_t assigned) {
    uint64_t w = (uint64_t)assigned | ((uint64_t)family << 16);
    uint64_t a = fp_ft_mum(fp_ft_load64(dst) ^ t->seed[3], fp_ft_load64(dst + 2) ^ t->seed[0]);
    return fp_ft_mum(a ^ t->seed[2], w ^ t->seed[1] ^ 0xA0761D6478BD642Full);
}

static inline uint32_t fp_ft_home(const fp_ft_table *t, uint64_t h) {
    return (uint32_t)(((h >> 32) * (uint64_t)t->nslots) >> 32);
}

static inline uint32_t fp_ft_tag(const fp_ft_table *t, uint64_t h) { return (uint32_t)h & ~t->idx_mask; }

static inline uint32_t fp_ft_conn_home(const fp_ft_table *t, uint32_t conn) {
    return (uint32_t)fp_ft_mum((uint64_t)conn ^ t->seed[0], t->seed[3] | 1) & t->conn_mask;
}

/* ---- keys ---------------------------------------------------------------------- */

/* Builds a key from raw addresses of `family` (4 or 6); 0 on a bad family. */
static inline int fp_ft_make_key(fp_ft_key *k, uint32_t conn, const uint8_t *src, const uint8_t *dst,
                                 int family, uint16_t echo_id) {
    size_t n = family == 4 ? 4 : 16;
    if (family != 4 && family != 6) return 0;
    memset(k, 0, sizeof(*k));
    k->conn = conn;
    memcpy(k->src, src, n);
    memcpy(k->dst, dst, n);
    k->echo_id = echo_id;
    k->family = (uint8_t)family;
    return 1;
}

static inline void fp_ft_entry_key(const fp_ft_entry *e, fp_ft_key *k) {
    k->conn = e->conn;
    memcpy(k->src, e->src, 16);
    memcpy(k->dst, e->dst, 16);
    k->echo_id = (uint16_t)e->ids;
    k->family = (e->ctrl & FP_FT_V6) ? 6 : 4;
}

/* ---- lock-free readers ------------------------------------------------------------ */

/* Step 1 of "Concurrency", the one seqlock read: a stable copy of entry e, live and of
 * `family`. 0 when it is not live, is of the other family, or changed while being read. */
typedef struct { uint32_t conn, ids, src[4], dst[4]; } fp_ft_snapshot;

static inline int fp_ft_read(const fp_ft_entry *e, unsigned family, fp_ft_snapshot *out) {
    uint32_t c1 = fp_ft_load_acq(&e->ctrl);
    int i;
    if ((c1 & (FP_FT_BUSY | FP_FT_LIVE)) != FP_FT_LIVE) return 0;
    if (((c1 & FP_FT_V6) != 0) != (family == 6)) return 0;
    out->conn = fp_ft_load_rlx(&e->conn);
    out->ids = fp_ft_load_rlx(&e->ids);
    for (i = 0; i < 4; i++) {
        out->src[i] = fp_ft_load_rlx(&e->src[i]);
        out->dst[i] = fp_ft_load_rlx(&e->dst[i]);
    }
    fp_ft_fence_acq();
    return fp_ft_load_rlx(&e->ctrl) == c1;
}

/* Entry e holds key k (stable, live copy): its assigned id goes to *assigned. */
static inline int fp_ft_read_fwd(const fp_ft_entry *e, const fp_ft_key *k, uint16_t *assigned) {
    fp_ft_snapshot v;
    if (!fp_ft_read(e, k->family, &v)) return 0;
    if (v.conn != k->conn || (uint16_t)v.ids != k->echo_id) return 0;
    if (memcmp(v.src, k->src, 16) != 0 || memcmp(v.dst, k->dst, 16) != 0) return 0;
    *assigned = (uint16_t)(v.ids >> 16);
    return 1;
}

/* Entry e is the flow to dst with this assigned id (stable, live copy): its owner to *out. */
static inline int fp_ft_read_rev(const fp_ft_entry *e, const uint32_t dst[4], unsigned family,
                                 uint16_t assigned, fp_ft_flow *out) {
    fp_ft_snapshot v;
    if (!fp_ft_read(e, family, &v)) return 0;
    if ((uint16_t)(v.ids >> 16) != assigned || memcmp(v.dst, dst, 16) != 0) return 0;
    if (out) {
        out->conn = v.conn;
        memcpy(out->src, v.src, 16);
        out->echo_id = (uint16_t)v.ids;
        out->family = (uint8_t)family;
    }
    return 1;
}

/* Slab index of the live entry with key k (hash h), or FP_FT_NONE. */
static inline uint32_t fp_ft_find_fwd(const fp_ft_table *t, const fp_ft_key *k, uint64_t h,
                                      uint16_t *assigned) {
    uint32_t tag = fp_ft_tag(t, h), home = fp_ft_home(t, h);
    int attempt;
    for (attempt = 0; attempt < FP_FT_READ_RETRIES; attempt++) {
        uint32_t v1 = fp_ft_load_acq(&t->fwd_ver), pos = home, n;
        for (n = 0; n < t->nslots; n++) {
            uint32_t s = fp_ft_load_acq(&t->fwd[pos]);
            if (s == 0) break;
            if ((s & ~t->idx_mask) == tag) {
                uint32_t e = (s & t->idx_mask) - 1;
                if (e < t->capacity && fp_ft_read_fwd(&t->entries[e], k, assigned)) return e;
            }
            if (++pos == t->nslots) pos = 0;
        }
        fp_ft_fence_acq();
        if (!(v1 & 1) && fp_ft_load_rlx(&t->fwd_ver) == v1) break;
    }
    return FP_FT_NONE;
}

static inline uint32_t fp_ft_find_rev(const fp_ft_table *t, const uint32_t dst[4], unsigned family,
                                      uint16_t assigned, fp_ft_flow *out) {
    uint64_t h = fp_ft_hash_rev(t, dst, family, assigned);
    uint32_t tag = fp_ft_tag(t, h), home = fp_ft_home(t, h);
    int attempt;
    for (attempt = 0; attempt < FP_FT_READ_RETRIES; attempt++) {
        uint32_t v1 = fp_ft_load_acq(&t->rev_ver), pos = home, n;
        for (n = 0; n < t->nslots; n++) {
            uint32_t s = fp_ft_load_acq(&t->rev[pos]);
            if (s == 0) break;
            if ((s & ~t->idx_mask) == tag) {
                uint32_t e = (s & t->idx_mask) - 1;
                if (e < t->capacity && fp_ft_read_rev(&t->entries[e], dst, family, assigned, out)) {
                    if (out) out->entry = e;
                    return e;
                }
            }
            if (++pos == t->nslots) pos = 0;
        }
        fp_ft_fence_acq();
        if (!(v1 & 1) && fp_ft_load_rlx(&t->rev_ver) == v1) break;
    }
    return FP_FT_NONE;
}

/* Assigned id of key k, or -1. Reader. */
static inline int32_t fp_ft_lookup(const fp_ft_table *t, const fp_ft_key *k) {
    uint16_t assigned;
    if (fp_ft_find_fwd(t, k, fp_ft_hash_fwd(t, k), &assigned) == FP_FT_NONE) return -1;
    return assigned;
}

/* Reads one 40-byte batch record (layout: see FLOW_KEY_SIZE in flowtable.pxi). */
static inline int fp_ft_parse_record(const uint8_t *r, fp_ft_key *k) {
    uint32_t conn;
    uint16_t echo_id;
    memcpy(&conn, r, 4);
    memcpy(&echo_id, r + 4, 2);
    return fp_ft_make_key(k, conn, r + 8, r + 24, r[6], echo_id);
}

/* Batched reader: for each record writes the assigned id (or FP_FT_MISS) as a
   native u32 to out (no alignment required); returns the number of hits.
   Per chunk: hash every key and prefetch its home slot, then prefetch the entry
   the home slot names when its tag matches, then probe: the memory latency of
   the chunk overlaps instead of adding up. */
static inline size_t fp_ft_lookup_batch(const fp_ft_table *t, const uint8_t *keys, size_t n, uint8_t *out) {
    fp_ft_key k[FP_FT_BATCH_CHUNK];
    uint64_t h[FP_FT_BATCH_CHUNK];
    uint32_t home[FP_FT_BATCH_CHUNK];
    unsigned char ok[FP_FT_BATCH_CHUNK];
    size_t base, i, hits = 0;
    for (base = 0; base < n; base += FP_FT_BATCH_CHUNK) {
        size_t m = n - base < FP_FT_BATCH_CHUNK ? n - base : FP_FT_BATCH_CHUNK;
        for (i = 0; i < m; i++) {
            ok[i] = (unsigned char)fp_ft_parse_record(keys + (base + i) * FP_FT_KEY_SIZE, &k[i]);
            if (!ok[i]) continue;
            h[i] = fp_ft_hash_fwd(t, &k[i]);
            home[i] = fp_ft_home(t, h[i]);
            fp_ft_prefetch(&t->fwd[home[i]]);
        }
        for (i = 0; i < m; i++) {
            uint32_t s;
            if (!ok[i]) continue;
            s = fp_ft_load_rlx(&t->fwd[home[i]]);
            if (s != 0 && (s & ~t->idx_mask) == fp_ft_tag(t, h[i])) {
                const char *e = (const char *)&t->entries[((s & t->idx_mask) - 1) & (t->capacity - 1)];
                fp_ft_prefetch(e);
                fp_ft_prefetch(e + sizeof(fp_ft_entry) - 4);
            }
        }
        for (i = 0; i < m; i++) {
            uint16_t assigned;
            uint32_t v = FP_FT_MISS;
            if (ok[i] && fp_ft_find_fwd(t, &k[i], h[i], &assigned) != FP_FT_NONE) {
                v = assigned;
                hits++;
            }
            memcpy(out + (base + i) * 4, &v, 4);
        }
    }
    return hits;
}

/* ---- writer ------------------------------------------------------------------------ */

static inline void fp_ft_entry_begin(fp_ft_entry *e) {
    fp_ft_store_rlx(&e->ctrl, e->ctrl | FP_FT_BUSY);
    fp_ft_fence_rel();
}

static inline void fp_ft_entry_end(fp_ft_entry *e, uint32_t flags) {
    fp_ft_store_rel(&e->ctrl, ((e->ctrl & ~7u) + FP_FT_GEN_ONE) | flags);
}

/* Milliseconds since the base for time `now` (float seconds); may rebase. */
static inline int64_t fp_ft_now(fp_ft_table *t, double now) {
    double d;
    int64_t ms, rel;
    if (!t->have_epoch) {
        t->epoch = now;
        t->have_epoch = 1;
    }
    d = floor((now - t->epoch) * 1000.0);
    ms = d > 0 ? (d < 9.0e15 ? (int64_t)d : (int64_t)9.0e15) : 0;
    rel = ms - t->base_ms;
    if (rel >= FP_FT_REBASE_AT) {
        int64_t shift = rel - (FP_FT_REBASE_AT >> 1);
        uint32_t e;
        for (e = 0; e < t->watermark; e++) {
            fp_ft_entry *en = &t->entries[e];
            if (en->ctrl & FP_FT_LIVE)
                en->last_used = (int64_t)en->last_used > shift ? (uint32_t)(en->last_used - shift) : 0;
        }
        t->base_ms += shift;
        rel -= shift;
    }
    return rel < 0 ? 0 : rel;
}

static inline uint32_t fp_ft_rand16(fp_ft_table *t) {
    uint64_t x = t->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    t->rng = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 48);
}

/* Slot position in `slots` that holds entry e (which must be indexed there). */
static inline uint32_t fp_ft_slot_of(const fp_ft_table *t, const uint32_t *slots, uint64_t h, uint32_t e) {
    uint32_t pos = fp_ft_home(t, h), want = e + 1;
    while ((slots[pos] & t->idx_mask) != want)
        if (++pos == t->nslots) pos = 0;
    return pos;
}

static inline void fp_ft_index_insert(const fp_ft_table *t, uint32_t *slots, uint64_t h, uint32_t e) {
    uint32_t pos = fp_ft_home(t, h);
    while (slots[pos] != 0)
        if (++pos == t->nslots) pos = 0;
    fp_ft_store_rel(&slots[pos], fp_ft_tag(t, h) | (e + 1));
}

static inline uint64_t fp_ft_entry_hash(const fp_ft_table *t, const fp_ft_entry *e, int reverse) {
    fp_ft_key k;
    fp_ft_entry_key(e, &k);
    return reverse ? fp_ft_hash_rev(t, k.dst, k.family, (uint16_t)(e->ids >> 16)) : fp_ft_hash_fwd(t, &k);
}

/* Backward-shift deletion of slot `pos` (step 3 of "Concurrency"). */
static inline void fp_ft_index_delete(const fp_ft_table *t, uint32_t *slots, uint32_t *ver, uint32_t pos,
                                      int reverse) {
    uint32_t v = *ver, i = pos, j = pos;
    fp_ft_store_rlx(ver, v + 1);
    fp_ft_fence_rel();
    for (;;) {
        uint32_t s, home;
        int stays;
        if (++j == t->nslots) j = 0;
        s = slots[j];
        if (s == 0) break;
        home = fp_ft_home(t, fp_ft_entry_hash(t, &t->entries[(s & t->idx_mask) - 1], reverse));
        stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            fp_ft_store_rel(&slots[i], s);
            i = j;
        }
    }
    fp_ft_store_rel(&slots[i], 0);
    fp_ft_store_rel(ver, v + 2);
}

/* Connection table (writer only): cell = conn | count << 32, count 0 = empty. */
static inline uint32_t fp_ft_conn_pos(const fp_ft_table *t, uint32_t conn) {
    uint32_t pos = fp_ft_conn_home(t, conn);
    for (;;) {
        uint64_t c = t->conns[pos];
        if ((c >> 32) == 0 || (uint32_t)c == conn) return pos;
        pos = (pos + 1) & t->conn_mask;
    }
}

static inline uint32_t fp_ft_count_for_connection(const fp_ft_table *t, uint32_t conn) {
    return (uint32_t)(t->conns[fp_ft_conn_pos(t, conn)] >> 32);
}

static inline void fp_ft_conn_release(fp_ft_table *t, uint32_t conn) {
    uint32_t i = fp_ft_conn_pos(t, conn), j = i;
    t->conns[i] -= (uint64_t)1 << 32;
    if (t->conns[i] >> 32) return;
    t->nconns--;
    for (;;) {
        uint64_t c;
        uint32_t home;
        j = (j + 1) & t->conn_mask;
        c = t->conns[j];
        if ((c >> 32) == 0) break;
        home = fp_ft_conn_home(t, (uint32_t)c);
        if (((j - home) & t->conn_mask) >= ((j - i) & t->conn_mask)) {
            t->conns[i] = c;
            i = j;
        }
    }
    t->conns[i] = 0;
}

/* Removes live entry e from both indexes, the connection count and the slab. */
static inline void fp_ft_remove_entry(fp_ft_table *t, uint32_t e) {
    fp_ft_entry *en = &t->entries[e];
    fp_ft_index_delete(t, t->fwd, &t->fwd_ver, fp_ft_slot_of(t, t->fwd, fp_ft_entry_hash(t, en, 0), e), 0);
    fp_ft_index_delete(t, t->rev, &t->rev_ver, fp_ft_slot_of(t, t->rev, fp_ft_entry_hash(t, en, 1), e), 1);
    fp_ft_conn_release(t, en->conn);
    fp_ft_entry_begin(en);
    en->last_used = FP_FT_NONE; /* FIFO link: end of list */
    fp_ft_entry_end(en, 0);
    if (t->free_tail == FP_FT_NONE)
        t->free_head = e;
    else
        t->entries[t->free_tail].last_used = e;
    t->free_tail = e;
    t->live--;
    t->removals++;
}

/* Writer: refresh the last-used time of live entry e (from fp_ft_flow.entry). */
static inline void fp_ft_touch(fp_ft_table *t, uint32_t e, double now) {
    int64_t ms = fp_ft_now(t, now);
    if (e < t->capacity && (t->entries[e].ctrl & FP_FT_LIVE)) t->entries[e].last_used = (uint32_t)ms;
}

/* Writer: assigned id of key k (existing flow refreshed, new flow inserted), or
   -1 with *err set to an FP_FT_ERR_* code; the table is unchanged on error. */
static inline int32_t fp_ft_acquire(fp_ft_table *t, const fp_ft_key *k, double now, int *err) {
    uint64_t h = fp_ft_hash_fwd(t, k);
    int64_t ms = fp_ft_now(t, now);
    uint16_t assigned;
    uint32_t e = fp_ft_find_fwd(t, k, h, &assigned), cpos, count;
    fp_ft_entry *en;
    *err = FP_FT_OK;
    if (e != FP_FT_NONE) {
        t->entries[e].last_used = (uint32_t)ms;
        return assigned;
    }
    if (t->live >= t->capacity) {
        *err = FP_FT_ERR_FULL_GLOBAL;
        return -1;
    }
    cpos = fp_ft_conn_pos(t, k->conn);
    count = (uint32_t)(t->conns[cpos] >> 32);
    if (count == 0 && t->nconns >= t->max_conns) {
        *err = FP_FT_ERR_FULL_GLOBAL;
        return -1;
    }
    if (t->max_per_conn && count >= t->max_per_conn) {
        *err = FP_FT_ERR_FULL_CONNECTION;
        return -1;
    }
    assigned = k->echo_id;
    if (fp_ft_find_rev(t, k->dst, k->family, assigned, NULL) != FP_FT_NONE) {
        uint32_t start, i;
        if (t->memo_family == k->family && t->memo_removals == t->removals &&
            memcmp(t->memo_dst, k->dst, 16) == 0) {
            *err = FP_FT_ERR_EXHAUSTED;
            return -1;
        }
        start = fp_ft_rand16(t);
        for (i = 0; i < 65536; i++) {
            assigned = (uint16_t)(start + i);
            if (fp_ft_find_rev(t, k->dst, k->family, assigned, NULL) == FP_FT_NONE) break;
        }
        if (i == 65536) {
            memcpy(t->memo_dst, k->dst, 16);
            t->memo_family = k->family;
            t->memo_removals = t->removals;
            *err = FP_FT_ERR_EXHAUSTED;
            return -1;
        }
    }
    if (t->free_head != FP_FT_NONE) {
        e = t->free_head;
        t->free_head = t->entries[e].last_used;
        if (t->free_head == FP_FT_NONE) t->free_tail = FP_FT_NONE;
    } else {
        e = t->watermark++;
    }
    en = &t->entries[e];
    fp_ft_entry_begin(en);
    fp_ft_store_rlx(&en->conn, k->conn);
    {
        int i;
        for (i = 0; i < 4; i++) {
            fp_ft_store_rlx(&en->src[i], k->src[i]);
            fp_ft_store_rlx(&en->dst[i], k->dst[i]);
        }
    }
    fp_ft_store_rlx(&en->ids, (uint32_t)k->echo_id | ((uint32_t)assigned << 16));
    en->last_used = (uint32_t)ms;
    fp_ft_entry_end(en, FP_FT_LIVE | (k->family == 6 ? FP_FT_V6 : 0));
    fp_ft_index_insert(t, t->fwd, h, e);
    fp_ft_index_insert(t, t->rev, fp_ft_hash_rev(t, k->dst, k->family, assigned), e);
    if (count == 0) {
        t->conns[cpos] = k->conn;
        t->nconns++;
    }
    t->conns[cpos] += (uint64_t)1 << 32;
    t->live++;
    return assigned;
}

/* Writer: removes the flow with key k; 1 if it existed. */
static inline int fp_ft_remove(fp_ft_table *t, const fp_ft_key *k) {
    uint16_t assigned;
    uint32_t e = fp_ft_find_fwd(t, k, fp_ft_hash_fwd(t, k), &assigned);
    if (e == FP_FT_NONE) return 0;
    fp_ft_remove_entry(t, e);
    return 1;
}

/* Writer: removes every flow of connection conn, walking the slab only until
   the connection's count is reached; returns how many were removed. */
static inline uint32_t fp_ft_remove_connection(fp_ft_table *t, uint32_t conn) {
    uint32_t left = fp_ft_count_for_connection(t, conn), total = left, e;
    for (e = 0; left && e < t->watermark; e++) {
        if ((t->entries[e].ctrl & FP_FT_LIVE) && t->entries[e].conn == conn) {
            fp_ft_remove_entry(t, e);
            left--;
        }
    }
    return total;
}

/* Writer: is live entry e idle for longer than the timeout at time `ms`? */
static inline int fp_ft_expired(const fp_ft_table *t, uint32_t e, int64_t ms) {
    const fp_ft_entry *en = &t->entries[e];
    return (en->ctrl & FP_FT_LIVE) && ms - (int64_t)en->last_used > t->timeout_ms;
}

static inline void fp_ft_destroy(fp_ft_table *t) {
    if (!t) return;
    free(t->entries);
    free(t->fwd);
    free(t->rev);
    free(t->conns);
    free(t);
}

static inline size_t fp_ft_memory_bytes(const fp_ft_table *t) {
    return sizeof(*t) + (size_t)t->capacity * sizeof(fp_ft_entry) + (size_t)t->nslots * 8 +
           ((size_t)t->conn_mask + 1) * 8;
}

/* capacity: power of two <= FP_FT_MAX_CAPACITY (checked by the caller);
   timeout_ms in [0, FP_FT_MAX_TIMEOUT_MS); seed: 32 random bytes. NULL if out of memory. */
static inline fp_ft_table *fp_ft_create(uint32_t capacity, uint32_t max_per_conn, int64_t timeout_ms,
                                        const uint8_t *seed) {
    fp_ft_table *t = (fp_ft_table *)calloc(1, sizeof(fp_ft_table));
    uint32_t ncells = capacity / 2 > 64 ? capacity / 2 : 64;
    uint32_t bits = 0;
    if (!t) return NULL;
    while ((1u << bits) < capacity) bits++;
    t->capacity = capacity;
    t->nslots = capacity + capacity / 2 > 2 ? capacity + capacity / 2 : 2;
    t->idx_bits = bits + 1;
    t->idx_mask = (1u << t->idx_bits) - 1;
    t->conn_mask = ncells - 1;
    t->max_conns = ncells / 4 * 3;
    t->max_per_conn = max_per_conn;
    t->timeout_ms = timeout_ms;
    t->free_head = t->free_tail = FP_FT_NONE;
    memcpy(t->seed, seed, 32);
    t->rng = t->seed[0] ^ t->seed[2] ^ 0x853C49E6748FEA9Bull;
    if (t->rng == 0) t->rng = 1;
    t->memo_family = 0;
    t->entries = (fp_ft_entry *)calloc(capacity, sizeof(fp_ft_entry));
    t->fwd = (uint32_t *)calloc(t->nslots, 4);
    t->rev = (uint32_t *)calloc(t->nslots, 4);
    t->conns = (uint64_t *)calloc(ncells, 8);
    if (!t->entries || !t->fwd || !t->rev || !t->conns) {
        fp_ft_destroy(t);
        return NULL;
    }
    return t;
}

#endif /* FP_FLOWTABLE_H */
