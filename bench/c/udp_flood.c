/* UDP load generator and echo server for bench/e2e.
 *
 *   udp_flood send [-r RATE] [-s SIZE] [-t SECONDS] [-D DRAIN_MS] [-o RTT_FILE] [-p SOURCE_PORT] HOST PORT
 *   udp_flood echo [-q] [-t MAX_SECONDS] PORT
 *
 * send: paced at RATE datagrams/s (default 10000; above 20000/s in bursts every 50 us) of SIZE payload bytes (default 1200, at least
 *       16) for SECONDS (default 2, at most 600), from one connected IPv4 UDP socket. Each payload
 *       carries its index (u64) and send time (u64 ns, CLOCK_REALTIME, the clock of the kernel's
 *       receive timestamps, SO_TIMESTAMPNS, that end each round trip); echoes are matched by
 *       index (a bitmap), so duplicates and foreign datagrams are not counted. After the last
 *       send it waits DRAIN_MS (default 500) for echoes still on the way. A send the kernel
 *       refuses (ENOBUFS, EAGAIN) is counted in send_failed and as lost. RTT_FILE gets one
 *       little-endian uint32 per echo (ns). Prints one JSON line: offered, sent, send_failed,
 *       echoed, duplicates, foreign, loss (1 - echoed/offered), seconds, send_seconds (first to last
 *       send: above SECONDS when the sender could not keep the pace), offered_per_second,
 *       echoed_per_second, cpu_us_per_rt (user+sys of this process per echo). -p binds SOURCE_PORT
 *       (SO_REUSEADDR), so a short warm-up run opens a tunnel's UDP session for the run that follows.
 * echo: answers every datagram to PORT with the same bytes (-q: count only, answer nothing);
 *       prints "ready" once bound, then on SIGTERM/SIGINT or after MAX_SECONDS (default 600)
 *       one JSON line: received, bytes, replied.
 * Exit status 0 when it ran (whatever the loss), 1 on errors, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_SIZE 65000
#define QUANTUM_NS 50000ull

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* Send stamps are wall-clock time, the clock of the kernel's receive timestamps (SO_TIMESTAMPNS). */
static uint64_t real_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
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

static void usage(void) {
    fprintf(stderr,
            "usage: udp_flood send [-r RATE] [-s SIZE] [-t SECONDS] [-D DRAIN_MS] [-o RTT_FILE] [-p SOURCE_PORT] HOST PORT\n"
            "       udp_flood echo [-q] [-t MAX_SECONDS] PORT\n");
    exit(2);
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int echo_main(int argc, char **argv) {
    int quiet = 0, opt;
    double max_seconds = 600;
    while ((opt = getopt(argc, argv, "qt:")) != -1) {
        if (opt == 'q') quiet = 1;
        else if (opt == 't') max_seconds = atof(optarg);
        else usage();
    }
    if (optind != argc - 1 || max_seconds <= 0 || max_seconds > 3600) usage();
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[optind]));
    int buf = 8 << 20;
    big_buffers(fd, buf);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("udp_flood echo: bind");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    static uint8_t data[BATCH][2048];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in from[BATCH];
    uint64_t received = 0, bytes = 0, replied = 0, until = now_ns() + (uint64_t)(max_seconds * 1e9);
    while (!stop && now_ns() < until) {
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 100) <= 0) continue;
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = data[i];
            iov[i].iov_len = sizeof data[i];
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) continue;
        received += (uint64_t)n;
        for (int i = 0; i < n; i++) {
            bytes += msgs[i].msg_len;
            iov[i].iov_len = msgs[i].msg_len; /* answer exactly what came */
        }
        if (!quiet) {
            int done = 0;
            while (done < n) {
                int s = sendmmsg(fd, msgs + done, (unsigned)(n - done), MSG_DONTWAIT);
                if (s <= 0) break; /* a full queue drops the rest: the sender counts it as lost */
                done += s;
            }
            replied += (uint64_t)done;
        }
    }
    printf("{\"received\": %llu, \"bytes\": %llu, \"replied\": %llu}\n", (unsigned long long)received,
           (unsigned long long)bytes, (unsigned long long)replied);
    return 0;
}

static int send_main(int argc, char **argv) {
    double rate = 10000, seconds = 2;
    long size = 1200, drain_ms = 500;
    const char *rtt_path = NULL;
    long source_port = 0;
    int opt;
    while ((opt = getopt(argc, argv, "r:s:t:D:o:p:")) != -1) {
        switch (opt) {
        case 'r': rate = atof(optarg); break;
        case 's': size = atol(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'D': drain_ms = atol(optarg); break;
        case 'o': rtt_path = optarg; break;
        case 'p': source_port = atol(optarg); break;
        default: usage();
        }
    }
    if (optind != argc - 2 || rate <= 0 || rate > 5e6 || size < 16 || size > MAX_SIZE || seconds <= 0 ||
        seconds > 600 || drain_ms < 0 || drain_ms > 10000 || rate * seconds > 2e8 || source_port < 0 ||
        source_port > 65535)
        usage();
    struct sockaddr_in dst;
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)atoi(argv[optind + 1]));
    if (inet_pton(AF_INET, argv[optind], &dst.sin_addr) != 1) {
        fprintf(stderr, "udp_flood: %s is not an IPv4 address\n", argv[optind]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int buf = 8 << 20;
    big_buffers(fd, buf);
    if (fd >= 0 && source_port) {
        struct sockaddr_in me;
        memset(&me, 0, sizeof me);
        me.sin_family = AF_INET;
        me.sin_port = htons((uint16_t)source_port);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) {
            perror("udp_flood send: bind");
            return 1;
        }
    }
    if (fd < 0 || connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) {
        perror("udp_flood send: connect");
        return 1;
    }
    uint64_t offered = (uint64_t)(rate * seconds + 0.5);
    uint8_t *seen = calloc(offered / 8 + 1, 1);
    uint32_t *rtts = malloc((offered + 1) * sizeof *rtts);
    /* One buffer per datagram of a batch, each way; an echo one byte longer than ours is foreign. */
    size_t in_size = (size_t)size + 1;
    uint8_t *out = calloc(BATCH, (size_t)size), *in = malloc(BATCH * in_size);
    static struct mmsghdr out_msgs[BATCH], in_msgs[BATCH];
    static struct iovec out_iov[BATCH], in_iov[BATCH];
    static char control[BATCH][CMSG_SPACE(sizeof(struct timespec))];
    if (!seen || !rtts || !out || !in) return 1;
    uint64_t sent = 0, failed = 0, echoed = 0, duplicates = 0, foreign = 0, index = 0;
    double period_ns = 1e9 / rate;
    prctl(PR_SET_TIMERSLACK, 1UL); /* the default 50 us slack would stretch every pacing sleep */
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
    uint64_t t0 = now_ns(), real0 = real_ns(), end = 0, last_send = t0;
    double c0 = cpu_s();
    for (;;) {
        uint64_t now = now_ns();
        /* Every datagram due by now goes out, up to BATCH in one sendmmsg, the echoes read in between. */
        int burst = 0;
        uint64_t stamp_now = real_ns();
        while (index + (uint64_t)burst < offered && burst < BATCH &&
               t0 + (uint64_t)((double)(index + (uint64_t)burst) * period_ns) <= now) {
            uint8_t *m = out + (size_t)burst * (size_t)size;
            uint64_t ix = index + (uint64_t)burst;
            memcpy(m, &ix, 8);
            memcpy(m + 8, &stamp_now, 8);
            out_iov[burst].iov_base = m;
            out_iov[burst].iov_len = (size_t)size;
            memset(&out_msgs[burst].msg_hdr, 0, sizeof out_msgs[burst].msg_hdr);
            out_msgs[burst].msg_hdr.msg_iov = &out_iov[burst];
            out_msgs[burst].msg_hdr.msg_iovlen = 1;
            burst++;
        }
        for (int done = 0; done < burst;) {
            int n = sendmmsg(fd, out_msgs + done, (unsigned)(burst - done), MSG_DONTWAIT);
            if (n > 0) {
                sent += (uint64_t)n;
                done += n;
            } else if (errno == ENOBUFS || errno == EAGAIN || errno == ECONNREFUSED) {
                failed++; /* the kernel refused this one: lost, offered all the same */
                done++;
            } else {
                perror("udp_flood send: sendmmsg");
                return 1;
            }
        }
        index += (uint64_t)burst;
        if (index == offered && !end) {
            last_send = now_ns();
            end = last_send + (uint64_t)drain_ms * 1000000ull;
        }
        if (end && (now >= end || echoed + failed >= offered)) break;
        for (;;) {
            /* recvmmsg with the kernel's receive time of each echo (SO_TIMESTAMPNS), so how late this
             * loop wakes up does not count in the round trip. */
            for (int k = 0; k < BATCH; k++) {
                in_iov[k].iov_base = in + (size_t)k * in_size;
                in_iov[k].iov_len = in_size;
                memset(&in_msgs[k].msg_hdr, 0, sizeof in_msgs[k].msg_hdr);
                in_msgs[k].msg_hdr.msg_iov = &in_iov[k];
                in_msgs[k].msg_hdr.msg_iovlen = 1;
                in_msgs[k].msg_hdr.msg_control = control[k];
                in_msgs[k].msg_hdr.msg_controllen = sizeof control[k];
            }
            int got_n = recvmmsg(fd, in_msgs, BATCH, MSG_DONTWAIT, NULL);
            if (got_n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNREFUSED) break;
                perror("udp_flood send: recvmmsg");
                return 1;
            }
            for (int k = 0; k < got_n; k++) {
                struct msghdr *mh = &in_msgs[k].msg_hdr;
                const uint8_t *data = in + (size_t)k * in_size;
                uint64_t t = 0, i, stamp;
                for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
                    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                        struct timespec ts;
                        memcpy(&ts, CMSG_DATA(c), sizeof ts);
                        t = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
                    }
                }
                if (!t) t = real_ns();
                if (in_msgs[k].msg_len != (unsigned)size) { foreign++; continue; }
                memcpy(&i, data, 8);
                memcpy(&stamp, data + 8, 8);
                if (i >= index || stamp < real0 || stamp > t) { foreign++; continue; }
                if (seen[i / 8] & (1u << (i % 8))) { duplicates++; continue; }
                seen[i / 8] |= (uint8_t)(1u << (i % 8));
                rtts[echoed++] = (uint32_t)(t - stamp > UINT32_MAX ? UINT32_MAX : t - stamp);
            }
            if (got_n < BATCH) break;
        }
        if (index < offered) {
            /* Sleep to the next datagram's time, but at least QUANTUM_NS: above 1e9/QUANTUM_NS
             * datagrams/s they leave in small bursts, one wakeup per burst, not one per datagram. */
            uint64_t next = t0 + (uint64_t)((double)index * period_ns), floor_ns = now_ns() + QUANTUM_NS;
            if (next < floor_ns) next = floor_ns;
            struct timespec ts = {(time_t)(next / 1000000000ull), (long)(next % 1000000000ull)};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        } else {
            struct pollfd pfd = {fd, POLLIN, 0};
            poll(&pfd, 1, 10); /* draining: wake for echoes, or every 10 ms to check the time */
        }
    }
    double elapsed = (double)(now_ns() - t0) / 1e9, cpu = cpu_s() - c0;
    if (rtt_path) {
        FILE *f = fopen(rtt_path, "wb");
        if (!f || fwrite(rtts, sizeof *rtts, echoed, f) != echoed || fclose(f)) {
            perror("udp_flood: writing the RTT file");
            return 1;
        }
    }
    printf("{\"offered\": %llu, \"sent\": %llu, \"send_failed\": %llu, \"echoed\": %llu, \"duplicates\": %llu, "
           "\"foreign\": %llu, \"loss\": %.6f, \"seconds\": %.6f, \"send_seconds\": %.6f, \"offered_per_second\": %.1f, "
           "\"echoed_per_second\": %.1f, \"cpu_us_per_rt\": %.3f}\n",
           (unsigned long long)offered, (unsigned long long)sent, (unsigned long long)failed,
           (unsigned long long)echoed, (unsigned long long)duplicates, (unsigned long long)foreign,
           1.0 - (double)echoed / (double)offered, elapsed, (double)(last_send - t0) / 1e9, (double)offered / seconds,
           (double)echoed / seconds,
           echoed ? 1e6 * cpu / (double)echoed : 0.0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    if (strcmp(argv[1], "send") == 0) return send_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "echo") == 0) return echo_main(argc - 1, argv + 1);
    usage();
    return 2;
}
