/* UDP load for bench/profile_deployed.py: a paced sender and a counting sink.
 *   profile_udp send DST PORT PACKETS_PER_SECOND SECONDS SIZE [SOURCE_PORT]
 *   profile_udp sink PORT SECONDS          (stops SECONDS after start, or 1 s after the last packet)
 * IPv4. The sender paces in 100 us slots (a burst per slot); both print one JSON line. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(int argc, char **argv) {
    if (argc >= 7 && !strcmp(argv[1], "send")) {
        struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
        inet_pton(AF_INET, argv[2], &dst.sin_addr);
        double rate = atof(argv[4]), seconds = atof(argv[5]);
        int size = atoi(argv[6]);
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        int buf = 4 << 20; setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
        if (argc >= 8) {  /* a fixed source port: a warm-up run opens the tunnel's UDP session */
            int one = 1; setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            struct sockaddr_in me = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[7])) };
            if (bind(fd, (struct sockaddr *)&me, sizeof me)) { perror("bind"); return 1; }
        }
        static uint8_t msg[65536]; memset(msg, 0x5a, sizeof msg);
        long sent = 0, failed = 0; double start = now(), end = start + seconds;
        for (;;) {
            double t = now();
            if (t >= end) break;
            long due = (long)((t - start) * rate);
            while (sent + failed < due) {
                if (sendto(fd, msg, size, 0, (struct sockaddr *)&dst, sizeof dst) == size) sent++; else failed++;
            }
            struct timespec pause = { 0, 100000 }; nanosleep(&pause, NULL);
        }
        printf("{\"sent\": %ld, \"failed\": %ld, \"seconds\": %.3f}\n", sent, failed, now() - start);
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "sink")) {
        struct sockaddr_in me = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
        double seconds = atof(argv[3]);
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        int buf = 8 << 20; setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf);
        if (bind(fd, (struct sockaddr *)&me, sizeof me)) { perror("bind"); return 1; }
        printf("ready\n"); fflush(stdout);
        long got = 0, bytes = 0; double start = now(), first = 0, last = 0;
        static uint8_t b[65536];
        for (;;) {
            struct pollfd p = { fd, POLLIN, 0 };
            double t = now();
            if (t - start > seconds || (got && t - last > 1.0)) break;
            if (poll(&p, 1, 100) <= 0) continue;
            ssize_t n;
            while ((n = recv(fd, b, sizeof b, MSG_DONTWAIT)) > 0) { if (!got) first = now(); got++; bytes += n; last = now(); }
        }
        printf("{\"received\": %ld, \"bytes\": %ld, \"seconds\": %.3f}\n", got, bytes, last - first);
        return 0;
    }
    fprintf(stderr, "usage: profile_udp send DST PORT PPS SECONDS SIZE | sink PORT SECONDS\n");
    return 2;
}
