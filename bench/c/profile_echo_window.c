/* ICMP echo load with a window: W requests in flight, N replies, RTT percentiles.
 *   profile_echo_window DST W N [MAX_SECONDS]
 * Raw socket (root), IPv4. Prints one JSON line. Bounded: N replies or MAX_SECONDS;
 * outstanding requests older than 200 ms are counted lost and replaced. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/icmp.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 56
static uint64_t now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec; }
static uint16_t csum(const uint8_t *p, size_t n) { uint32_t s = 0; for (size_t i = 0; i + 1 < n; i += 2) s += (uint32_t)(p[i] << 8 | p[i + 1]); while (s >> 16) s = (s & 0xFFFF) + (s >> 16); return (uint16_t)~s; }
static int cmp(const void *a, const void *b) { uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b; return x < y ? -1 : x > y; }
static uint64_t sent_at[65536];
static uint16_t id;
static int fd; static struct sockaddr_in dst;
static int send_req(uint16_t seq) {
    uint8_t m[8 + PAYLOAD]; memset(m, 0, sizeof m); m[0] = 8;
    m[4] = id >> 8; m[5] = id; m[6] = seq >> 8; m[7] = seq;
    uint16_t s = csum(m, sizeof m); m[2] = s >> 8; m[3] = s;
    sent_at[seq] = now_ns();
    return sendto(fd, m, sizeof m, 0, (struct sockaddr *)&dst, sizeof dst) == sizeof m ? 0 : -1;
}
int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: echo_window DST W N [MAX_SECONDS]\n"); return 2; }
    int window = atoi(argv[2]); long n = atol(argv[3]); double max_s = argc > 4 ? atof(argv[4]) : 20;
    id = (uint16_t)(getpid() ^ 0x5a5a);
    memset(&dst, 0, sizeof dst); dst.sin_family = AF_INET; inet_pton(AF_INET, argv[1], &dst.sin_addr);
    fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP); if (fd < 0) { perror("socket"); return 1; }
    struct icmp_filter f = { ~(1u << ICMP_ECHOREPLY) }; setsockopt(fd, SOL_RAW, ICMP_FILTER, &f, sizeof f);
    int rcvbuf = 1 << 20; setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    uint32_t *rtt = malloc(sizeof(uint32_t) * n);
    long got = 0, lost = 0, sent = 0; uint16_t next = 0; int outstanding = 0;
    uint64_t start = now_ns(), deadline = start + (uint64_t)(max_s * 1e9), last_rx = start;
    for (; outstanding < window; outstanding++) { send_req(next++); sent++; }
    uint8_t buf[2048];
    while (got < n && now_ns() < deadline) {
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r < 0) {
            struct pollfd p = { fd, POLLIN, 0 };
            if (poll(&p, 1, 200) <= 0) {  /* everything outstanding is lost: refill */
                lost += outstanding; outstanding = 0;
                for (; outstanding < window; outstanding++) { send_req(next++); sent++; }
                if (now_ns() - last_rx > 2000000000ull) break;
            }
            continue;
        }
        uint64_t t = now_ns();
        size_t ihl = (size_t)(buf[0] & 15) * 4;
        if ((size_t)r < ihl + 8) continue;
        uint8_t *ic = buf + ihl;
        if (ic[0] != 0 || (uint16_t)(ic[4] << 8 | ic[5]) != id) continue;
        uint16_t seq = (uint16_t)(ic[6] << 8 | ic[7]);
        if (!sent_at[seq]) continue;
        rtt[got++] = (uint32_t)((t - sent_at[seq]) / 1000); sent_at[seq] = 0; last_rx = t;
        outstanding--;
        if (got + outstanding < n) { send_req(next++); sent++; outstanding++; }
    }
    double secs = (now_ns() - start) / 1e9;
    qsort(rtt, got, sizeof *rtt, cmp);
#define P(q) (got ? rtt[(long)((got - 1) * (q))] : 0)
    printf("{\"window\": %d, \"received\": %ld, \"sent\": %ld, \"lost\": %ld, \"seconds\": %.4f, \"per_second\": %.1f, \"p50_us\": %u, \"p99_us\": %u, \"p999_us\": %u, \"max_us\": %u}\n",
           window, got, sent, lost, secs, got / secs, P(0.5), P(0.99), P(0.999), got ? rtt[got - 1] : 0);
    return 0;
}
