/* Baseline for bench/bench_batchio.py: drain an already-filled datagram socket with plain
 * recvmmsg, 64 messages of 2048 bytes (with source addresses) per call, like PacketBatch(64).
 *
 *   recvmmsg_loop FD    FD is inherited from the caller; prints "<packets> <nanoseconds>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define VLEN 64
#define SLOT 2048

static unsigned char bufs[VLEN][SLOT];
static struct sockaddr_storage names[VLEN];

int main(int argc, char **argv) {
    struct mmsghdr msgs[VLEN];
    struct iovec iov[VLEN];
    struct timespec t0, t1;
    long long packets = 0, ns;
    int fd, i, n;

    if (argc != 2) {
        fprintf(stderr, "usage: %s FD\n", argv[0]);
        return 2;
    }
    fd = atoi(argv[1]);
    memset(msgs, 0, sizeof(msgs));
    memset(bufs, 0, sizeof(bufs)); /* fault the pages in before the clock starts */
    memset(names, 0, sizeof(names));
    for (i = 0; i < VLEN; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = SLOT;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &names[i];
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        for (i = 0; i < VLEN; i++) msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
        n = recvmmsg(fd, msgs, VLEN, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            perror("recvmmsg");
            return 1;
        }
        packets += n;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    printf("%lld %lld\n", packets, ns);
    return 0;
}
