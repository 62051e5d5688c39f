/* ICMP echo load generator for bench/e2e: keeps WINDOW requests in flight to one IPv4 host and
 * records the round-trip time of every reply, in nanoseconds.
 *
 *   icmp_flood [-m raw|ping] [-w WINDOW] [-n COUNT] [-t SECONDS] [-s PAYLOAD] [-T TIMEOUT_MS]
 *              [-o RTT_FILE] HOST
 *
 * raw:  SOCK_RAW IPPROTO_ICMP (root), ICMP_FILTER passing echo replies only, echo id = our pid.
 * ping: SOCK_DGRAM IPPROTO_ICMP (Linux ping socket); the kernel picks the id and demuxes replies.
 * Each request carries in its payload its index (u64) and its send time (u64 ns, CLOCK_MONOTONIC);
 * a reply is matched by that index and checked against the stored send time, so a reordered,
 * duplicated or foreign reply is never counted as a round trip. A request unanswered after
 * TIMEOUT_MS (default 1000) is counted lost and frees its place in the window; a reply that comes
 * after that is counted late, not as a round trip.
 * Bounded: sends for at most SECONDS (default 5, at most 600) or COUNT requests (default no
 * limit), then waits at most TIMEOUT_MS for the replies in flight.
 * RTT_FILE gets one little-endian uint32 per round trip (ns, in the order replies came).
 * Prints one JSON line: sent, received, lost, late, duplicates, foreign, seconds, per_second,
 * cpu_us_per_rt (user+sys of this process, getrusage), window.
 * Exit status 0 when it ran (whatever the loss), 1 on errors, 2 on bad usage.
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
#include <unistd.h>

#define RING 65536 /* indexes in flight or answered but not yet passed by the oldest pointer */
#define MAX_WINDOW 4096
#define MIN_PAYLOAD 16

enum { FREE = 0, PENDING, DONE };

struct slot {
    uint64_t index;
    uint64_t sent_ns;
    uint8_t state;
};

static struct slot ring[RING];

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* Socket buffers of `size` bytes: beyond net.core.[rw]mem_max when root (the *FORCE options), so a
 * burst is queued rather than dropped by the generator itself. */
static void big_buffers(int fd, int size) {
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

static double cpu_s(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static uint16_t checksum(const uint8_t *p, size_t n) {
    uint32_t sum = 0;
    size_t i;
    for (i = 0; i + 1 < n; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1) sum += (uint32_t)(p[n - 1] << 8);
    while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint64_t get64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [-m raw|ping] [-w WINDOW] [-n COUNT] [-t SECONDS] [-s PAYLOAD] [-T TIMEOUT_MS] [-o RTT_FILE] HOST\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv) {
    int raw = 1, opt;
    long window = 1, payload = 56, timeout_ms = 1000;
    uint64_t count = UINT64_MAX;
    double seconds = 5.0;
    const char *rtt_path = NULL;
    while ((opt = getopt(argc, argv, "m:w:n:t:s:T:o:")) != -1) {
        switch (opt) {
        case 'm': raw = strcmp(optarg, "raw") == 0; if (!raw && strcmp(optarg, "ping")) usage(argv[0]); break;
        case 'w': window = atol(optarg); break;
        case 'n': count = strtoull(optarg, NULL, 10); break;
        case 't': seconds = atof(optarg); break;
        case 's': payload = atol(optarg); break;
        case 'T': timeout_ms = atol(optarg); break;
        case 'o': rtt_path = optarg; break;
        default: usage(argv[0]);
        }
    }
    if (optind != argc - 1 || window < 1 || window > MAX_WINDOW || payload < MIN_PAYLOAD || payload > 1400 ||
        timeout_ms < 1 || timeout_ms > 4000 || seconds <= 0 || seconds > 600 || count == 0)
        usage(argv[0]);
    struct sockaddr_in dst;
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    if (inet_pton(AF_INET, argv[optind], &dst.sin_addr) != 1) {
        fprintf(stderr, "icmp_flood: %s is not an IPv4 address\n", argv[optind]);
        return 2;
    }
    int fd = socket(AF_INET, raw ? SOCK_RAW : SOCK_DGRAM, IPPROTO_ICMP);
    if (fd < 0) {
        perror(raw ? "icmp_flood: raw socket (needs root)" : "icmp_flood: ping socket (needs net.ipv4.ping_group_range)");
        return 1;
    }
    if (raw) {
        struct icmp_filter filter = {~(1U << ICMP_ECHOREPLY)};
        if (setsockopt(fd, SOL_RAW, ICMP_FILTER, &filter, sizeof filter) < 0) {
            perror("icmp_flood: ICMP_FILTER");
            return 1;
        }
    }
    big_buffers(fd, 4 << 20);
    uint16_t echo_id = (uint16_t)getpid();
    uint64_t timeout_ns = (uint64_t)timeout_ms * 1000000ull;

    size_t rtt_cap = 1 << 16, rtt_n = 0;
    uint32_t *rtts = malloc(rtt_cap * sizeof *rtts);
    if (!rtts) return 1;

    uint64_t sent = 0, received = 0, lost = 0, late = 0, duplicates = 0, foreign = 0, oldest = 0, in_flight = 0;
    uint8_t msg[8 + 1400], buf[2048];
    uint64_t t0 = now_ns(), send_until = t0 + (uint64_t)(seconds * 1e9);
    double c0 = cpu_s();
    for (;;) {
        uint64_t now = now_ns();
        /* Requests past their time are lost; the oldest pointer passes answered ones. */
        while (oldest < sent) {
            struct slot *s = &ring[oldest % RING];
            if (s->state == PENDING) {
                if (now - s->sent_ns < timeout_ns) break;
                lost++;
                in_flight--;
            }
            s->state = FREE;
            oldest++;
        }
        int sending = now < send_until && sent < count;
        if (!sending && in_flight == 0) break;
        while (sending && in_flight < (uint64_t)window && sent - oldest < RING) {
            size_t n = 8 + (size_t)payload;
            memset(msg, 0, n);
            msg[0] = 8; /* echo request */
            msg[4] = (uint8_t)(echo_id >> 8);
            msg[5] = (uint8_t)echo_id;
            msg[6] = (uint8_t)(sent >> 8);
            msg[7] = (uint8_t)sent;
            uint64_t t = now_ns();
            put64(msg + 8, sent);
            put64(msg + 16, t);
            uint16_t sum = checksum(msg, n);
            msg[2] = (uint8_t)(sum >> 8);
            msg[3] = (uint8_t)sum;
            if (sendto(fd, msg, n, 0, (const struct sockaddr *)&dst, sizeof dst) != (ssize_t)n) {
                if (errno == EAGAIN || errno == ENOBUFS) break; /* the queue is full: wait for replies */
                perror("icmp_flood: sendto");
                return 1;
            }
            struct slot *s = &ring[sent % RING];
            s->index = sent;
            s->sent_ns = t;
            s->state = PENDING;
            sent++;
            in_flight++;
            if (sent >= count) break;
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 10) < 0 && errno != EINTR) {
            perror("icmp_flood: poll");
            return 1;
        }
        for (;;) {
            ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (got < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
                perror("icmp_flood: recv");
                return 1;
            }
            uint64_t t = now_ns();
            const uint8_t *icmp = buf;
            if (raw) {
                size_t ihl = (size_t)(buf[0] & 0x0F) * 4;
                if ((size_t)got < ihl + 8) { foreign++; continue; }
                icmp = buf + ihl;
                got -= (ssize_t)ihl;
                if ((uint16_t)(icmp[4] << 8 | icmp[5]) != echo_id) { foreign++; continue; }
            }
            if (got != 8 + payload || icmp[0] != 0) { foreign++; continue; }
            uint64_t index = get64(icmp + 8), stamp = get64(icmp + 16);
            if (index >= sent) { foreign++; continue; }
            struct slot *s = &ring[index % RING];
            if (index < oldest || s->index != index || s->state == FREE) {
                late++; /* counted lost already */
                continue;
            }
            if (s->sent_ns != stamp) { foreign++; continue; }
            if (s->state == DONE) { duplicates++; continue; }
            s->state = DONE;
            in_flight--;
            received++;
            if (rtt_n == rtt_cap) {
                rtt_cap *= 2;
                uint32_t *bigger = realloc(rtts, rtt_cap * sizeof *rtts);
                if (!bigger) return 1;
                rtts = bigger;
            }
            rtts[rtt_n++] = (uint32_t)(t - s->sent_ns);
        }
    }
    double elapsed = (double)(now_ns() - t0) / 1e9, cpu = cpu_s() - c0;
    if (rtt_path) {
        FILE *f = fopen(rtt_path, "wb");
        if (!f || fwrite(rtts, sizeof *rtts, rtt_n, f) != rtt_n || fclose(f)) {
            perror("icmp_flood: writing the RTT file");
            return 1;
        }
    }
    printf("{\"sent\": %llu, \"received\": %llu, \"lost\": %llu, \"late\": %llu, \"duplicates\": %llu, "
           "\"foreign\": %llu, \"seconds\": %.6f, \"per_second\": %.1f, \"cpu_us_per_rt\": %.3f, \"window\": %ld}\n",
           (unsigned long long)sent, (unsigned long long)received, (unsigned long long)lost,
           (unsigned long long)late, (unsigned long long)duplicates, (unsigned long long)foreign, elapsed,
           (double)received / elapsed, received ? 1e6 * cpu / (double)received : 0.0, window);
    return 0;
}
