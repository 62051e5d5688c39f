/* Batched datagram socket I/O for fastproxy._core (PacketBatch, _cy/batchio.pxi).
 *
 * A batch is N slots in one allocation, reused forever: slot i's bytes live at
 * base + i * stride (slot_size usable bytes), with a length, a peer address
 * (sockaddr_storage, addrlen 0 = none) and a TTL / hop limit (-1 = none).
 *
 *   fp_bio_init(b, slots, slot_size)   one allocation; 0 or -ENOMEM / -EINVAL
 *   fp_bio_free(b)
 *   fp_bio_recv(b, fd)                 fill slots from 0 without blocking; count (0 when
 *                                      nothing waits) or -errno
 *   fp_bio_recv_from(b, fd, start)     the same into slots [start, slots), leaving b->count
 *                                      alone (to fill one batch from several sockets)
 *   fp_bio_send(b, fd, start, count)   send slots [start, start+count); how many went
 *                                      (a would-block after some = partial count), or -errno
 *   fp_bio_set_addr4/6, fp_bio_clear_addr, fp_bio_get_addr   slot address access by raw bytes
 *
 * Platforms (chosen here, never in Python):
 *   Linux            recvmmsg/sendmmsg, one system call per 1024 slots; TTL in and out as cmsgs
 *                    (IP_TTL / IPV6_HOPLIMIT), so it is per packet on the wire.
 *   other POSIX      a loop of recvmsg/sendmsg over the same prepared headers. TTL in as a cmsg
 *   (macOS)          (IP_RECVTTL gives a one-byte IP_RECVTTL cmsg there); hop limit out as an
 *                    IPV6_HOPLIMIT cmsg (RFC 3542); IPv4 TTL out by setsockopt(IP_TTL) around
 *                    each packet whose TTL differs, since BSD sendmsg takes no IP_TTL cmsg; the
 *                    socket's own TTL is put back afterwards.
 *   Windows          a loop of recvfrom/sendto (winsock has no portable recvmsg). No TTL comes
 *                    in (ttl stays -1); TTL out by setsockopt(IP_TTL / IPV6_UNICAST_HOPS) per
 *                    packet, restored afterwards. Errors are -WSAGetLastError() values
 *                    (FP_BIO_WINSOCK_ERRORS is 1). recv checks readability with a zero-timeout
 *                    select() before each packet so it never blocks.
 * Define FP_BIO_NO_MMSG to build the POSIX loop on Linux (to test it there).
 */
#ifndef FP_BATCHIO_H
#define FP_BATCHIO_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#ifdef _WIN32
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  include <winsock2.h>
#  include <ws2tcpip.h>
typedef int fp_bio_socklen;
typedef SOCKET fp_bio_sock;
#  define FP_BIO_WINSOCK_ERRORS 1
#  define FP_BIO_TTL_BY_SETSOCKOPT_V4 1
#  define FP_BIO_TTL_BY_SETSOCKOPT_V6 1
#  define FP_BIO_V6_HOPS_OPTION IPV6_UNICAST_HOPS
#else
#  ifdef __APPLE__
#    define __APPLE_USE_RFC_3542 1 /* RFC 3542 IPV6_HOPLIMIT / IPV6_RECVHOPLIMIT values */
#  endif
#  include <sys/types.h>
#  include <sys/socket.h>
#  include <sys/uio.h>
#  include <netinet/in.h>
typedef socklen_t fp_bio_socklen;
typedef int fp_bio_sock;
#  define FP_BIO_WINSOCK_ERRORS 0
#  if defined(__linux__) && !defined(FP_BIO_NO_MMSG)
#    define FP_BIO_MMSG 1
#  endif
#  ifndef __linux__
#    define FP_BIO_TTL_BY_SETSOCKOPT_V4 1 /* BSD sendmsg accepts no IP_TTL cmsg */
#  endif
#  ifdef __APPLE__
/* The kernel labels hop-limit cmsgs with the RFC 3542 value even if <netinet/in.h> was
 * pulled in earlier without __APPLE_USE_RFC_3542 (which gives the RFC 2292 value). */
#    define FP_BIO_IPV6_HOPLIMIT 47
#  else
#    define FP_BIO_IPV6_HOPLIMIT IPV6_HOPLIMIT
#  endif
#endif

#ifndef FP_BIO_TTL_BY_SETSOCKOPT_V4
#  define FP_BIO_TTL_BY_SETSOCKOPT_V4 0
#endif
#ifndef FP_BIO_TTL_BY_SETSOCKOPT_V6
#  define FP_BIO_TTL_BY_SETSOCKOPT_V6 0
#endif
#ifndef FP_BIO_V6_HOPS_OPTION
#  define FP_BIO_V6_HOPS_OPTION IPV6_UNICAST_HOPS
#endif
#ifdef FP_BIO_MMSG
#  define FP_BIO_USES_MMSG 1
#else
#  define FP_BIO_USES_MMSG 0
#endif

#define FP_BIO_MAX_SLOTS 65536
#define FP_BIO_MAX_SLOT_SIZE 262144
#define FP_BIO_TRUNCATED 0x01u
/* Control room per slot: the TTL cmsg plus whatever else the caller enabled on the socket
 * (IP_PKTINFO and the like); anything beyond is cut by the kernel (MSG_CTRUNC), not by us. */
#define FP_BIO_CONTROL_BYTES 128

#ifndef _WIN32
#  ifdef FP_BIO_MMSG
typedef struct mmsghdr fp_bio_msg;
#    define FP_BIO_MMSG_CHUNK 1024 /* UIO_MAXIOV: the kernel takes at most this many per call */
#  else
typedef struct fp_bio_msg {
    struct msghdr msg_hdr;
    unsigned int msg_len;
} fp_bio_msg;
#  endif
#endif

typedef struct fp_bio_batch {
    uint8_t *base;                    /* slot i's bytes: base + i * stride */
    size_t stride;                    /* slot_size rounded up to 16 */
    size_t slot_size;                 /* usable bytes per slot */
    int slots;
    int count;                        /* slots the last recv filled */
    int32_t *lengths;                 /* [slots] bytes in each slot, 0..slot_size */
    int32_t *ttls;                    /* [slots] TTL / hop limit, -1 = none */
    uint8_t *flags;                   /* [slots] FP_BIO_TRUNCATED */
    struct sockaddr_storage *addrs;   /* [slots] peer address */
    fp_bio_socklen *addrlens;         /* [slots] 0 = no address */
#ifndef _WIN32
    fp_bio_msg *msgs;                 /* [slots] prepared headers (private) */
    struct iovec *iov;                /* [slots] (private) */
    uint8_t *control;                 /* [slots * FP_BIO_CONTROL_BYTES] (private) */
#endif
    void *mem;                        /* the one allocation */
} fp_bio_batch;

static inline size_t fp_bio_align16(size_t n) { return (n + 15u) & ~(size_t)15u; }

static inline int fp_bio_last_error(void) {
#ifdef _WIN32
    return WSAGetLastError();
#else
    return errno;
#endif
}

static inline int fp_bio_would_block(int err) {
#ifdef _WIN32
    return err == WSAEWOULDBLOCK;
#else
    return err == EAGAIN || err == EWOULDBLOCK;
#endif
}

static inline int fp_bio_init(fp_bio_batch *b, int slots, size_t slot_size) {
    size_t n, stride, off_len, off_ttl, off_flags, off_addr, off_alen, total;
    uint8_t *mem;
    int i;
#ifndef _WIN32
    size_t off_msgs, off_iov, off_ctl;
#endif
    memset(b, 0, sizeof(*b));
    if (slots < 1 || slots > FP_BIO_MAX_SLOTS || slot_size < 1 || slot_size > FP_BIO_MAX_SLOT_SIZE)
        return -EINVAL;
    n = (size_t)slots;
    stride = fp_bio_align16(slot_size);
    /* The slot bytes alone may reach 2^34 (65536 x 256 KiB), past a 32-bit size_t: refuse
     * what cannot be addressed rather than wrap and allocate too little. With the slot bytes
     * at most SIZE_MAX / 2, the per-slot arrays below (a few hundred bytes a slot) cannot
     * wrap the total either. */
    if ((uint64_t)n * stride > (uint64_t)(SIZE_MAX / 2)) return -ENOMEM;
    off_len = fp_bio_align16(n * stride);
    off_ttl = off_len + fp_bio_align16(n * sizeof(int32_t));
    off_flags = off_ttl + fp_bio_align16(n * sizeof(int32_t));
    off_addr = off_flags + fp_bio_align16(n);
    off_alen = off_addr + fp_bio_align16(n * sizeof(struct sockaddr_storage));
    total = off_alen + fp_bio_align16(n * sizeof(fp_bio_socklen));
#ifndef _WIN32
    off_msgs = total;
    off_iov = off_msgs + fp_bio_align16(n * sizeof(fp_bio_msg));
    off_ctl = off_iov + fp_bio_align16(n * sizeof(struct iovec));
    total = off_ctl + n * FP_BIO_CONTROL_BYTES;
#endif
    mem = (uint8_t *)calloc(1, total);
    if (mem == NULL) return -ENOMEM;
    b->mem = mem;
    b->base = mem;
    b->stride = stride;
    b->slot_size = slot_size;
    b->slots = slots;
    b->lengths = (int32_t *)(mem + off_len);
    b->ttls = (int32_t *)(mem + off_ttl);
    b->flags = mem + off_flags;
    b->addrs = (struct sockaddr_storage *)(mem + off_addr);
    b->addrlens = (fp_bio_socklen *)(mem + off_alen);
    for (i = 0; i < slots; i++) b->ttls[i] = -1;
#ifndef _WIN32
    b->msgs = (fp_bio_msg *)(mem + off_msgs);
    b->iov = (struct iovec *)(mem + off_iov);
    b->control = mem + off_ctl;
    /* The pointers never change; each call only sets lengths. */
    for (i = 0; i < slots; i++) {
        b->iov[i].iov_base = b->base + (size_t)i * stride;
        b->msgs[i].msg_hdr.msg_iov = &b->iov[i];
        b->msgs[i].msg_hdr.msg_iovlen = 1;
    }
#endif
    return 0;
}

static inline void fp_bio_free(fp_bio_batch *b) {
    free(b->mem);
    memset(b, 0, sizeof(*b));
}

/* ---- slot addresses by raw bytes (the NAT engine has addresses as packet bytes) ---- */

static inline int fp_bio_slot_ok(const fp_bio_batch *b, int i) {
    return i >= 0 && i < b->slots;
}

/* ip: 4 bytes, network order; port: host order. 0, or -1 for a bad slot index. */
static inline int fp_bio_set_addr4(fp_bio_batch *b, int i, const uint8_t *ip, uint16_t port) {
    struct sockaddr_in *sin;
    uint8_t pb[2];
    if (!fp_bio_slot_ok(b, i)) return -1;
    memset(&b->addrs[i], 0, sizeof(b->addrs[i]));
    sin = (struct sockaddr_in *)&b->addrs[i];
    sin->sin_family = AF_INET;
    pb[0] = (uint8_t)(port >> 8);
    pb[1] = (uint8_t)port;
    memcpy(&sin->sin_port, pb, 2);
    memcpy(&sin->sin_addr, ip, 4);
    b->addrlens[i] = (fp_bio_socklen)sizeof(struct sockaddr_in);
    return 0;
}

/* ip: 16 bytes, network order; port, flowinfo, scope_id: host order. 0, or -1. */
static inline int fp_bio_set_addr6(fp_bio_batch *b, int i, const uint8_t *ip, uint16_t port,
                                   uint32_t flowinfo, uint32_t scope_id) {
    struct sockaddr_in6 *sin6;
    uint8_t pb[2], fb[4];
    if (!fp_bio_slot_ok(b, i)) return -1;
    memset(&b->addrs[i], 0, sizeof(b->addrs[i]));
    sin6 = (struct sockaddr_in6 *)&b->addrs[i];
    sin6->sin6_family = AF_INET6;
    pb[0] = (uint8_t)(port >> 8);
    pb[1] = (uint8_t)port;
    memcpy(&sin6->sin6_port, pb, 2);
    fb[0] = (uint8_t)(flowinfo >> 24);
    fb[1] = (uint8_t)(flowinfo >> 16);
    fb[2] = (uint8_t)(flowinfo >> 8);
    fb[3] = (uint8_t)flowinfo;
    memcpy(&sin6->sin6_flowinfo, fb, 4);
    memcpy(&sin6->sin6_addr, ip, 16);
    sin6->sin6_scope_id = scope_id;
    b->addrlens[i] = (fp_bio_socklen)sizeof(struct sockaddr_in6);
    return 0;
}

static inline int fp_bio_clear_addr(fp_bio_batch *b, int i) {
    if (!fp_bio_slot_ok(b, i)) return -1;
    b->addrlens[i] = 0;
    return 0;
}

/* Copy slot i's address out: ip (16 bytes of room; 4 used for v4), port/flowinfo host order.
 * Returns 4, 6, or 0 when the slot has no (known) address or the index is bad. */
static inline int fp_bio_get_addr(const fp_bio_batch *b, int i, uint8_t *ip, uint16_t *port,
                                  uint32_t *flowinfo, uint32_t *scope_id) {
    const uint8_t *pb;
    if (!fp_bio_slot_ok(b, i) || b->addrlens[i] <= 0) return 0;
    if (b->addrs[i].ss_family == AF_INET && b->addrlens[i] >= (fp_bio_socklen)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&b->addrs[i];
        pb = (const uint8_t *)&sin->sin_port;
        *port = (uint16_t)((pb[0] << 8) | pb[1]);
        memcpy(ip, &sin->sin_addr, 4);
        *flowinfo = 0;
        *scope_id = 0;
        return 4;
    }
    if (b->addrs[i].ss_family == AF_INET6 && b->addrlens[i] >= (fp_bio_socklen)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&b->addrs[i];
        pb = (const uint8_t *)&sin6->sin6_port;
        *port = (uint16_t)((pb[0] << 8) | pb[1]);
        pb = (const uint8_t *)&sin6->sin6_flowinfo;
        *flowinfo = ((uint32_t)pb[0] << 24) | ((uint32_t)pb[1] << 16) | ((uint32_t)pb[2] << 8) | pb[3];
        memcpy(ip, &sin6->sin6_addr, 16);
        *scope_id = sin6->sin6_scope_id;
        return 6;
    }
    return 0;
}

/* The address family of the socket itself (for slots sent without an address), or -errno. */
static inline int fp_bio_sock_family(fp_bio_sock fd) {
    struct sockaddr_storage ss;
    fp_bio_socklen len = (fp_bio_socklen)sizeof(ss);
    memset(&ss, 0, sizeof(ss));
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -fp_bio_last_error();
    return (int)ss.ss_family;
}

/* Family that decides the TTL option of slot i: its address's, else the socket's. */
static inline int fp_bio_slot_family(const fp_bio_batch *b, int i, fp_bio_sock fd, int *sock_family) {
    if (b->addrlens[i] > 0) return (int)b->addrs[i].ss_family;
    if (*sock_family == 0) *sock_family = fp_bio_sock_family(fd);
    return *sock_family;
}

#if FP_BIO_TTL_BY_SETSOCKOPT_V4 || FP_BIO_TTL_BY_SETSOCKOPT_V6
/* TTL by socket option for platforms without a per-message TTL: remembers the socket's own
 * value the first time it changes it, so slots with ttl -1 and fp_bio_ttl_restore get it back. */
typedef struct fp_bio_ttl_state {
    int level, option;   /* 0 until the first change */
    int original, current;
} fp_bio_ttl_state;

static inline int fp_bio_ttl_apply(fp_bio_ttl_state *st, fp_bio_sock fd, int family, int ttl) {
    int level, option;
    fp_bio_socklen len = (fp_bio_socklen)sizeof(int);
    if (family == AF_INET) { level = IPPROTO_IP; option = IP_TTL; }
    else if (family == AF_INET6) { level = IPPROTO_IPV6; option = FP_BIO_V6_HOPS_OPTION; }
    else return 0;
    if (ttl < 0) { /* a slot without a TTL goes with the socket's own */
        if (st->option == 0) return 0;
        ttl = st->original;
    }
    if (st->option == 0) {
        if (getsockopt(fd, level, option, (char *)&st->original, &len) != 0) return -fp_bio_last_error();
        st->level = level;
        st->option = option;
        st->current = st->original;
    } else if (st->option != option || st->level != level) {
        return 0; /* mixed families on one socket cannot happen; leave the TTL alone */
    }
    if (ttl == st->current) return 0;
    if (setsockopt(fd, level, option, (const char *)&ttl, (fp_bio_socklen)sizeof(int)) != 0)
        return -fp_bio_last_error();
    st->current = ttl;
    return 0;
}

static inline void fp_bio_ttl_restore(fp_bio_ttl_state *st, fp_bio_sock fd) {
    if (st->option != 0 && st->current != st->original)
        setsockopt(fd, st->level, st->option, (const char *)&st->original, (fp_bio_socklen)sizeof(int));
}
#endif

#ifndef _WIN32
/* ---- POSIX: prepared msghdrs, recvmmsg/sendmmsg on Linux, a loop elsewhere ---- */

static inline int32_t fp_bio_parse_ttl(struct msghdr *mh) {
    struct cmsghdr *c;
    for (c = CMSG_FIRSTHDR(mh); c != NULL; c = CMSG_NXTHDR(mh, c)) {
        size_t dlen = c->cmsg_len - CMSG_LEN(0);
        int v = -1;
        int is_ttl = 0;
        if (c->cmsg_level == IPPROTO_IP) {
            is_ttl = c->cmsg_type == IP_TTL;
#if defined(IP_RECVTTL) && !defined(__linux__)
            is_ttl = is_ttl || c->cmsg_type == IP_RECVTTL; /* BSD: one byte, labelled IP_RECVTTL */
#endif
        } else if (c->cmsg_level == IPPROTO_IPV6) {
            is_ttl = c->cmsg_type == FP_BIO_IPV6_HOPLIMIT;
        }
        if (!is_ttl) continue;
        if (dlen >= sizeof(int)) memcpy(&v, CMSG_DATA(c), sizeof(int));
        else if (dlen >= 1) v = *(const uint8_t *)CMSG_DATA(c);
        return (v >= 0 && v <= 255) ? v : -1;
    }
    return -1;
}

static inline void fp_bio_prepare_recv(fp_bio_batch *b, int i) {
    struct msghdr *mh = &b->msgs[i].msg_hdr;
    mh->msg_name = &b->addrs[i];
    mh->msg_namelen = (socklen_t)sizeof(struct sockaddr_storage);
    b->iov[i].iov_len = b->slot_size;
    mh->msg_control = b->control + (size_t)i * FP_BIO_CONTROL_BYTES;
    mh->msg_controllen = FP_BIO_CONTROL_BYTES;
    mh->msg_flags = 0;
}

static inline void fp_bio_finish_recv(fp_bio_batch *b, int i) {
    struct msghdr *mh = &b->msgs[i].msg_hdr;
    size_t len = b->msgs[i].msg_len;
    b->lengths[i] = (int32_t)(len < b->slot_size ? len : b->slot_size);
    b->addrlens[i] = mh->msg_namelen <= sizeof(struct sockaddr_storage) ? mh->msg_namelen : 0;
    b->flags[i] = (mh->msg_flags & MSG_TRUNC) ? FP_BIO_TRUNCATED : 0;
    b->ttls[i] = fp_bio_parse_ttl(mh);
}

static inline int fp_bio_recv_from(fp_bio_batch *b, fp_bio_sock fd, int start) {
    int i, n;
    if (start < 0 || start > b->slots) return -EINVAL;
    for (i = start; i < b->slots; i++) fp_bio_prepare_recv(b, i);
#ifdef FP_BIO_MMSG
    for (n = start; n < b->slots;) {
        int want = b->slots - n < FP_BIO_MMSG_CHUNK ? b->slots - n : FP_BIO_MMSG_CHUNK;
        int r = recvmmsg(fd, b->msgs + n, (unsigned int)want, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (fp_bio_would_block(errno) || n > start) break;
            return -errno;
        }
        n += r;
        if (r < want) break;
    }
#else
    for (n = start; n < b->slots; n++) {
        ssize_t r = recvmsg(fd, &b->msgs[n].msg_hdr, MSG_DONTWAIT);
        if (r < 0) {
            if (fp_bio_would_block(errno) || n > start) break; /* like recvmmsg: report what arrived */
            return -errno;
        }
        b->msgs[n].msg_len = (unsigned int)r;
    }
#endif
    for (i = start; i < n; i++) fp_bio_finish_recv(b, i);
    return n - start;
}

static inline int fp_bio_recv(fp_bio_batch *b, fp_bio_sock fd) {
    int n = fp_bio_recv_from(b, fd, 0);
    b->count = n > 0 ? n : 0;
    return n;
}

/* Fill slot i's header for sending; *family_cache holds the socket's family once looked up. */
static inline int fp_bio_prepare_send(fp_bio_batch *b, int i, fp_bio_sock fd, int *sock_family) {
    struct msghdr *mh = &b->msgs[i].msg_hdr;
    int ttl = b->ttls[i];
    mh->msg_name = b->addrlens[i] > 0 ? (void *)&b->addrs[i] : NULL;
    mh->msg_namelen = b->addrlens[i] > 0 ? b->addrlens[i] : 0;
    b->iov[i].iov_len = (size_t)b->lengths[i];
    mh->msg_control = NULL;
    mh->msg_controllen = 0;
    mh->msg_flags = 0;
    if (ttl >= 0) {
        int family = fp_bio_slot_family(b, i, fd, sock_family);
        int level, type;
        struct cmsghdr *c;
        if (family < 0) return family;
        if (family == AF_INET && !FP_BIO_TTL_BY_SETSOCKOPT_V4) { level = IPPROTO_IP; type = IP_TTL; }
        else if (family == AF_INET6) { level = IPPROTO_IPV6; type = FP_BIO_IPV6_HOPLIMIT; }
        else return 0; /* set by socket option in fp_bio_send's loop */
        mh->msg_control = b->control + (size_t)i * FP_BIO_CONTROL_BYTES;
        mh->msg_controllen = CMSG_SPACE(sizeof(int));
        memset(mh->msg_control, 0, CMSG_SPACE(sizeof(int)));
        c = CMSG_FIRSTHDR(mh);
        c->cmsg_level = level;
        c->cmsg_type = type;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &ttl, sizeof(int));
    }
    return 0;
}

static inline int fp_bio_send(fp_bio_batch *b, fp_bio_sock fd, int start, int count) {
    int i, r, sent, sock_family = 0;
    if (start < 0 || count < 0 || start > b->slots || count > b->slots - start) return -EINVAL;
    if (count == 0) return 0;
    for (i = start; i < start + count; i++) {
        r = fp_bio_prepare_send(b, i, fd, &sock_family);
        if (r < 0) return r;
    }
#ifdef FP_BIO_MMSG
    for (sent = 0; sent < count;) {
        int want = count - sent < FP_BIO_MMSG_CHUNK ? count - sent : FP_BIO_MMSG_CHUNK;
        r = sendmmsg(fd, b->msgs + start + sent, (unsigned int)want, MSG_DONTWAIT);
        if (r < 0) {
            if (fp_bio_would_block(errno) || sent > 0) break;
            return -errno;
        }
        sent += r;
        if (r < want) break;
    }
    return sent;
#else
    {
#  if FP_BIO_TTL_BY_SETSOCKOPT_V4
        fp_bio_ttl_state st = {0, 0, 0, 0};
#  endif
        int err = 0;
        for (sent = 0; sent < count; sent++) {
            i = start + sent;
#  if FP_BIO_TTL_BY_SETSOCKOPT_V4
            if ((b->ttls[i] >= 0 || st.option != 0) && fp_bio_slot_family(b, i, fd, &sock_family) == AF_INET) {
                r = fp_bio_ttl_apply(&st, fd, AF_INET, b->ttls[i]);
                if (r < 0) { err = -r; break; }
            }
#  endif
            if (sendmsg(fd, &b->msgs[i].msg_hdr, MSG_DONTWAIT) < 0) { err = errno; break; }
        }
#  if FP_BIO_TTL_BY_SETSOCKOPT_V4
        fp_bio_ttl_restore(&st, fd);
#  endif
        /* like sendmmsg: an error after some packets went reports the partial count */
        if (err != 0 && sent == 0 && !fp_bio_would_block(err)) return -err;
        return sent;
    }
#endif
}

#else /* _WIN32 */
/* ---- Windows: recvfrom/sendto loop ---- */

static inline int fp_bio_readable(fp_bio_sock fd) {
    fd_set rd;
    struct timeval tv = {0, 0};
    FD_ZERO(&rd);
    FD_SET(fd, &rd);
    return select(0, &rd, NULL, NULL, &tv); /* 1 readable, 0 not, SOCKET_ERROR */
}

static inline int fp_bio_recv_from(fp_bio_batch *b, fp_bio_sock fd, int start) {
    int n;
    if (start < 0 || start > b->slots) return -WSAEINVAL;
    for (n = start; n < b->slots; n++) {
        int r, err = 0, ready;
        fp_bio_socklen alen = (fp_bio_socklen)sizeof(struct sockaddr_storage);
        ready = fp_bio_readable(fd);
        if (ready == 0) break;
        if (ready == SOCKET_ERROR) {
            err = WSAGetLastError();
            if (n > start) break;
            return -err;
        }
        r = recvfrom(fd, (char *)(b->base + (size_t)n * b->stride), (int)b->slot_size, 0,
                     (struct sockaddr *)&b->addrs[n], &alen);
        b->flags[n] = 0;
        if (r == SOCKET_ERROR) {
            err = WSAGetLastError();
            if (err == WSAEMSGSIZE) { /* the slot holds the first slot_size bytes */
                r = (int)b->slot_size;
                b->flags[n] = FP_BIO_TRUNCATED;
            } else {
                if (fp_bio_would_block(err) || n > start) break;
                return -err;
            }
        }
        b->lengths[n] = r;
        b->addrlens[n] = alen;
        b->ttls[n] = -1; /* recvfrom carries no ancillary data */
    }
    return n - start;
}

static inline int fp_bio_recv(fp_bio_batch *b, fp_bio_sock fd) {
    int n = fp_bio_recv_from(b, fd, 0);
    b->count = n > 0 ? n : 0;
    return n;
}

static inline int fp_bio_send(fp_bio_batch *b, fp_bio_sock fd, int start, int count) {
    int i, r, sent, err = 0, sock_family = 0;
    fp_bio_ttl_state st = {0, 0, 0, 0};
    if (start < 0 || count < 0 || start > b->slots || count > b->slots - start) return -WSAEINVAL;
    for (sent = 0; sent < count; sent++) {
        i = start + sent;
        if (b->ttls[i] >= 0 || st.option != 0) {
            int family = fp_bio_slot_family(b, i, fd, &sock_family);
            if (family < 0) { err = -family; break; }
            r = fp_bio_ttl_apply(&st, fd, family, b->ttls[i]);
            if (r < 0) { err = -r; break; }
        }
        r = sendto(fd, (const char *)(b->base + (size_t)i * b->stride), b->lengths[i], 0,
                   b->addrlens[i] > 0 ? (const struct sockaddr *)&b->addrs[i] : NULL, b->addrlens[i]);
        if (r == SOCKET_ERROR) { err = WSAGetLastError(); break; }
    }
    fp_bio_ttl_restore(&st, fd);
    if (err != 0 && sent == 0 && !fp_bio_would_block(err)) return -err;
    return sent;
}
#endif /* _WIN32 */

#endif /* FP_BATCHIO_H */
