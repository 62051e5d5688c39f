/* Physical-limit baseline for bench/bench_icmp_proxy.py: ICMP echo round trips to 127.0.0.1
 * from plain C, on the socket kind the proxy's backend uses.
 *
 *   echo_loop raw|ping flood|wait REQUESTS
 *
 * raw:   SOCK_RAW IPPROTO_ICMP with ICMP_FILTER passing echo replies only (the proxy's raw
 *        backend filters the same way with BPF); replies carry the IP header.
 * ping:  SOCK_DGRAM IPPROTO_ICMP (Linux ping socket); the kernel sets the echo id.
 * flood: keep 64 requests outstanding (send one for each reply received).
 * wait:  send one request, wait for its reply, repeat.
 * Each request: 8-byte ICMP header + 56-byte payload, its reply checked (type, id, seq).
 * Bounded: stops after REQUESTS replies or 60 s, and after 1 s without any reply.
 * Prints one JSON line: received, seconds, per_second, cpu_us_per_rt (user+sys, getrusage).
 */
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#define WINDOW 64
#define PAYLOAD 56

static uint16_t checksum(const uint8_t *p, size_t n) {
    uint32_t sum = 0;
    size_t i;
    for (i = 0; i + 1 < n; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1) sum += (uint32_t)(p[n - 1] << 8);
    while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

static int raw_mode;
static uint16_t echo_id = 0x4242;

static int send_request(int fd, const struct sockaddr_in *dst, uint16_t seq) {
    uint8_t msg[8 + PAYLOAD];
    uint16_t sum;
    memset(msg, 0, sizeof msg);
    msg[0] = 8;
    msg[4] = (uint8_t)(echo_id >> 8);
    msg[5] = (uint8_t)echo_id;
    msg[6] = (uint8_t)(seq >> 8);
    msg[7] = (uint8_t)seq;
    for (int i = 0; i < PAYLOAD; i++) msg[8 + i] = (uint8_t)i;
    sum = checksum(msg, sizeof msg);
    msg[2] = (uint8_t)(sum >> 8);
    msg[3] = (uint8_t)sum;
    return sendto(fd, msg, sizeof msg, 0, (const struct sockaddr *)dst, sizeof *dst) == (ssize_t)sizeof msg ? 0 : -1;
}

/* One reply: 1 if it is an echo reply of ours (type 0, our id on raw sockets), 0 if not, -1 on none. */
static int receive_reply(int fd, int timeout_ms) {
    uint8_t buf[2048];
    struct pollfd pfd = {fd, POLLIN, 0};
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (poll(&pfd, 1, timeout_ms) <= 0) return -1;
        n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    }
    if (n < 0) return -1;
    const uint8_t *icmp = buf;
    if (raw_mode) {
        size_t ihl = (size_t)(buf[0] & 0x0F) * 4;
        if ((size_t)n < ihl + 8) return 0;
        icmp = buf + ihl;
        n -= (ssize_t)ihl;
        if ((uint16_t)(icmp[4] << 8 | icmp[5]) != echo_id) return 0;
    }
    return n == 8 + PAYLOAD && icmp[0] == 0;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv) {
    struct sockaddr_in dst;
    long requests, sent = 0, received = 0;
    int fd, flood, r;
    if (argc != 4) {
        fprintf(stderr, "usage: %s raw|ping flood|wait REQUESTS\n", argv[0]);
        return 2;
    }
    raw_mode = strcmp(argv[1], "raw") == 0;
    flood = strcmp(argv[2], "flood") == 0;
    requests = atol(argv[3]);
    fd = socket(AF_INET, raw_mode ? SOCK_RAW : SOCK_DGRAM, IPPROTO_ICMP);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    if (raw_mode) {
        struct icmp_filter filter = {~(1U << ICMP_ECHOREPLY)};
        if (setsockopt(fd, SOL_RAW, ICMP_FILTER, &filter, sizeof filter) < 0) {
            perror("ICMP_FILTER");
            return 1;
        }
    }
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    double t0 = now_s(), c0 = cpu_s();
    while (received < requests && now_s() - t0 < 60.0) {
        long window = flood ? WINDOW : 1;
        while (sent - received < window && sent < requests) {
            if (send_request(fd, &dst, (uint16_t)sent) < 0) {
                perror("sendto");
                return 1;
            }
            sent++;
        }
        r = receive_reply(fd, 1000);
        if (r < 0) break; /* nothing for a second: give up rather than hang */
        received += r;
    }
    double seconds = now_s() - t0, cpu = cpu_s() - c0;
    printf("{\"received\": %ld, \"seconds\": %.6f, \"per_second\": %.1f, \"cpu_us_per_rt\": %.3f}\n", received,
           seconds, (double)received / seconds, received ? 1e6 * cpu / (double)received : 0.0);
    return received == requests ? 0 : 1;
}
