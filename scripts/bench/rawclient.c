/*
 * rawclient: the baseline for scripts/bench/hold.sh. A minimal single-threaded epoll TCP
 * client: opens N non-blocking connections to one IPv4 target from a round-robin list of
 * source IPs (IP_BIND_ADDRESS_NO_PORT, so the port is chosen at connect() by 4-tuple), then
 * holds them for H seconds with a P-byte heartbeat per connection every second, and prints one
 * JSON line on stdout.
 *
 * It is what stampede's hot path would cost with nothing on top: no runtime, no tasks, no
 * histograms beyond one array. It must not send anywhere but loopback, so the target must be
 * in 127.0.0.0/8. Every phase is bounded: connecting by the connect timeout, holding by H.
 *
 * Build: cc -O2 -o rawclient rawclient.c
 * Usage: rawclient -t 127.0.0.1:7100 -s 127.0.50.1-127.0.50.4[,IP...] -n 19000 -H 20 -p 16
 *                  [-c CONNECT_TIMEOUT_S] [-T HEARTBEAT_TIMEOUT_S] [-v]
 *
 * stderr gets one line `holding N` when every attempt has ended (established or failed), so a
 * script can start measuring the hold; with -v, one line a second of heartbeat RTT and RSS
 * follows. stdout gets the JSON line at the end. Exit 0 if every connection was established
 * and held with no heartbeat timed out, 1 otherwise, 2 on usage errors.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_SOURCES 4096
#define WHEEL_MS 1000 /* heartbeat interval: 1 s, on a 1 ms grid */
#define BATCH 256     /* connects issued between two looks at the completions */

enum state { CONNECTING = 0, HELD = 1, DEAD = 2 };

/* 16 bytes per connection; the heartbeat schedule lives in the wheel order, not here. */
struct conn {
    int fd;
    uint8_t state;
    uint8_t pending; /* a heartbeat is out and its echo not complete */
    uint16_t got;    /* echo bytes received for the pending heartbeat */
    uint32_t sent_ms; /* tick (ms since the hold began) the pending heartbeat was due */
    uint32_t lag_us;  /* how late after its tick it went out, up to the 1 ms grid */
};

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void die_usage(const char *why) {
    fprintf(stderr,
            "rawclient: %s\nusage: rawclient -t IP:PORT -s IP[-IP][,IP...] -n N -H SECONDS -p BYTES "
            "[-c CONNECT_TIMEOUT_S] [-T HEARTBEAT_TIMEOUT_S] [-v]\n",
            why);
    exit(2);
}

/* Parses "a.b.c.d" or "a.b.c.d-a.b.c.e", comma-separated, into host-order addresses. */
static int parse_sources(const char *spec, uint32_t *out, int max) {
    char *copy = strdup(spec), *save = NULL, *item;
    int n = 0;
    for (item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *dash = strchr(item, '-');
        struct in_addr a, b;
        if (dash) *dash = '\0';
        if (inet_pton(AF_INET, item, &a) != 1) die_usage("bad source address");
        b = a;
        if (dash && inet_pton(AF_INET, dash + 1, &b) != 1) die_usage("bad source range end");
        for (uint32_t ip = ntohl(a.s_addr); ip <= ntohl(b.s_addr); ip++) {
            if (n == max) die_usage("too many source addresses");
            out[n++] = ip;
            if (ip == UINT32_MAX) break;
        }
    }
    free(copy);
    return n;
}

/* VmRSS of this process in KiB, or -1. */
static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
    fclose(f);
    return kib;
}

/* RTT histogram: exact below 1024 us, then 64 sub-buckets per power of two (< 1.6 % error). */
#define HIST_EXACT 1024
#define HIST_SUB 64
#define HIST_BUCKETS (HIST_EXACT + 54 * HIST_SUB)
struct hist {
    uint64_t bucket[HIST_BUCKETS];
    uint64_t count, max;
};
static struct hist rtt_all, rtt_second;

static void hist_record(struct hist *h, uint64_t us) {
    int idx;
    if (us < HIST_EXACT) {
        idx = (int)us;
    } else {
        int msb = 63 - __builtin_clzll(us); /* >= 10 */
        int sub = (int)((us >> (msb - 6)) & (HIST_SUB - 1));
        idx = HIST_EXACT + (msb - 10) * HIST_SUB + sub;
        if (idx >= HIST_BUCKETS) idx = HIST_BUCKETS - 1;
    }
    h->bucket[idx]++;
    h->count++;
    if (us > h->max) h->max = us;
}

/* Upper edge of the bucket holding quantile q. */
static uint64_t hist_quantile(const struct hist *h, double q) {
    uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999), seen = 0;
    if (h->count == 0) return 0;
    if (rank == 0) rank = 1;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->bucket[i];
        if (seen >= rank) {
            if (i < HIST_EXACT) return (uint64_t)i;
            int msb = 10 + (i - HIST_EXACT) / HIST_SUB, sub = (i - HIST_EXACT) % HIST_SUB;
            uint64_t edge = ((uint64_t)(HIST_SUB + sub + 1) << (msb - 6)) - 1;
            return edge < h->max ? edge : h->max;
        }
    }
    return h->max;
}

int main(int argc, char **argv) {
    const char *target_spec = NULL, *source_spec = NULL;
    long n = 0, hold_s = 0, payload = 16, connect_timeout_s = 10, hb_timeout_s = 5;
    int opt, verbose = 0;
    while ((opt = getopt(argc, argv, "t:s:n:H:p:c:T:v")) != -1) {
        switch (opt) {
        case 't': target_spec = optarg; break;
        case 's': source_spec = optarg; break;
        case 'n': n = atol(optarg); break;
        case 'H': hold_s = atol(optarg); break;
        case 'p': payload = atol(optarg); break;
        case 'c': connect_timeout_s = atol(optarg); break;
        case 'T': hb_timeout_s = atol(optarg); break;
        case 'v': verbose = 1; break;
        default: die_usage("unknown option");
        }
    }
    if (!target_spec || !source_spec) die_usage("-t and -s are required");
    if (n <= 0 || n > 10000000) die_usage("-n must be 1..10000000");
    if (hold_s < 0 || hold_s > 3600) die_usage("-H must be 0..3600");
    if (payload < 1 || payload > 1024) die_usage("-p must be 1..1024");
    if (connect_timeout_s < 1 || connect_timeout_s > 600) die_usage("-c must be 1..600");
    if (hb_timeout_s < 1 || hb_timeout_s > 600) die_usage("-T must be 1..600");

    struct sockaddr_in target = {.sin_family = AF_INET};
    {
        char host[64];
        const char *colon = strrchr(target_spec, ':');
        if (!colon || (size_t)(colon - target_spec) >= sizeof host) die_usage("-t must be IP:PORT");
        memcpy(host, target_spec, (size_t)(colon - target_spec));
        host[colon - target_spec] = '\0';
        if (inet_pton(AF_INET, host, &target.sin_addr) != 1) die_usage("bad target address");
        target.sin_port = htons((uint16_t)atoi(colon + 1));
        if ((ntohl(target.sin_addr.s_addr) >> 24) != 127) die_usage("target must be in 127.0.0.0/8");
    }
    static uint32_t sources[MAX_SOURCES];
    int nsources = parse_sources(source_spec, sources, MAX_SOURCES);
    if (nsources == 0) die_usage("no source addresses");

    /* A peer that goes away must count as a hold error, not kill the baseline. */
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    struct conn *conns = calloc((size_t)n, sizeof *conns);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event events[1024];
    char payload_buf[1024], readbuf[4096];
    memset(payload_buf, 'h', sizeof payload_buf);
    if (!conns || ep < 0) {
        perror("rawclient: setup");
        return 2;
    }

    long established = 0, failed = 0, done = 0;
    uint64_t t_first = 0, t_last = 0;
    uint64_t deadline = 0; /* set after the last connect() is issued */

    /* Takes the connect completions epoll has for us, waiting up to timeout_ms. */
#define HARVEST(timeout_ms)                                                                        \
    do {                                                                                           \
        int ready = epoll_wait(ep, events, 1024, (timeout_ms));                                    \
        for (int e = 0; e < ready; e++) {                                                          \
            struct conn *c = &conns[events[e].data.u64];                                           \
            int err = 0;                                                                           \
            socklen_t len = sizeof err;                                                            \
            if (c->state != CONNECTING) continue;                                                  \
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);                                   \
            if (err == 0 && !(events[e].events & (EPOLLERR | EPOLLHUP))) {                         \
                struct epoll_event in = {.events = EPOLLIN, .data.u64 = events[e].data.u64};       \
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &in);                                          \
                c->state = HELD;                                                                   \
                established++;                                                                     \
                t_last = now_us();                                                                 \
            } else {                                                                               \
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);                                         \
                close(c->fd);                                                                      \
                c->state = DEAD;                                                                   \
                failed++;                                                                          \
            }                                                                                      \
            done++;                                                                                \
        }                                                                                          \
    } while (0)

    t_first = now_us();
    for (long i = 0; i < n; i++) {
        struct conn *c = &conns[i];
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(sources[i % nsources])};
        int one = 1;
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            c->state = DEAD;
            failed++;
            done++;
            continue;
        }
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) != 0 ||
            (connect(c->fd, (struct sockaddr *)&target, sizeof target) != 0 && errno != EINPROGRESS)) {
            close(c->fd);
            c->state = DEAD;
            failed++;
            done++;
            continue;
        }
        struct epoll_event out = {.events = EPOLLOUT, .data.u64 = (uint64_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &out);
        if ((i + 1) % BATCH == 0) HARVEST(0);
    }
    deadline = now_us() + (uint64_t)connect_timeout_s * 1000000u;
    while (done < n) {
        uint64_t t = now_us();
        if (t >= deadline) break;
        HARVEST((int)((deadline - t) / 1000 + 1));
    }
    for (long i = 0; i < n; i++) {
        if (conns[i].state == CONNECTING) { /* timed out */
            epoll_ctl(ep, EPOLL_CTL_DEL, conns[i].fd, NULL);
            close(conns[i].fd);
            conns[i].state = DEAD;
            failed++;
        }
    }
    double connect_seconds = established ? (double)(t_last - t_first) / 1e6 : 0.0;
    fprintf(stderr, "holding %ld\n", established);
    fflush(stderr);

    /* Heartbeats on a 1 ms wheel: connection i is due at offset frac(i * phi) of each second
     * (the spread stampede uses), so the load is even across the interval. */
    uint32_t *order = malloc((size_t)n * sizeof *order);
    uint32_t *start = calloc(WHEEL_MS + 1, sizeof *start);
    if (!order || !start) {
        perror("rawclient: wheel");
        return 2;
    }
    for (long i = 0; i < n; i++) {
        double frac = (double)i * 0.6180339887498949;
        start[(int)((frac - (double)(long)frac) * WHEEL_MS) + 1]++;
    }
    for (int b = 0; b < WHEEL_MS; b++) start[b + 1] += start[b];
    {
        uint32_t *fill = calloc(WHEEL_MS, sizeof *fill);
        for (long i = 0; i < n; i++) {
            double frac = (double)i * 0.6180339887498949;
            int b = (int)((frac - (double)(long)frac) * WHEEL_MS);
            order[start[b] + fill[b]++] = (uint32_t)i;
        }
        free(fill);
    }

    uint64_t hb_sent = 0, hb_answered = 0, hb_timeouts = 0, hb_skipped = 0, hold_errors = 0;
    long rss_max = -1;
    uint64_t t0 = now_us();
    uint64_t hold_end = t0 + (uint64_t)hold_s * 1000000u;
    uint64_t next_rss = t0 + 1000000u;
    long tick = -1; /* last wheel tick processed, in ms since t0 */
    while (1) {
        uint64_t t = now_us();
        if (t >= hold_end) break;
        long due = (long)((t - t0) / 1000);
        for (long k = tick + 1; k <= due; k++) {
            int b = (int)(k % WHEEL_MS);
            for (uint32_t j = start[b]; j < start[b + 1]; j++) {
                struct conn *c = &conns[order[j]];
                if (c->state != HELD) continue;
                if (c->pending) {
                    /* The last echo is still missing: time it out or skip this beat. */
                    if ((uint64_t)(k - (long)c->sent_ms) >= (uint64_t)hb_timeout_s * 1000u) {
                        hb_timeouts++;
                        c->pending = 0;
                    } else {
                        hb_skipped++;
                        continue;
                    }
                }
                ssize_t w = send(c->fd, payload_buf, (size_t)payload, MSG_NOSIGNAL);
                if (w != payload) {
                    hold_errors++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    c->state = DEAD;
                    continue;
                }
                uint64_t late = t - t0 - (uint64_t)k * 1000u;
                c->pending = 1;
                c->got = 0;
                c->sent_ms = (uint32_t)k;
                c->lag_us = (uint32_t)(late < 1000 ? late : 1000);
                hb_sent++;
            }
        }
        tick = due;
        if (t >= next_rss) {
            long kib = rss_kib();
            if (kib > rss_max) rss_max = kib;
            if (verbose) {
                fprintf(stderr, "second %llu: rss_kib %ld rtt_us count %llu p50 %llu p99 %llu max %llu\n",
                        (unsigned long long)((next_rss - t0) / 1000000u), kib,
                        (unsigned long long)rtt_second.count,
                        (unsigned long long)hist_quantile(&rtt_second, 0.5),
                        (unsigned long long)hist_quantile(&rtt_second, 0.99),
                        (unsigned long long)rtt_second.max);
                memset(&rtt_second, 0, sizeof rtt_second);
            }
            next_rss += 1000000u;
        }
        /* Sleep until the next millisecond tick at most. */
        uint64_t next_tick = t0 + (uint64_t)(tick + 1) * 1000u;
        t = now_us();
        int wait_ms = t >= next_tick ? 0 : (int)((next_tick - t + 999) / 1000);
        int ready = epoll_wait(ep, events, 1024, wait_ms);
        if (ready <= 0) continue;
        t = now_us();
        for (int e = 0; e < ready; e++) {
            struct conn *c = &conns[events[e].data.u64];
            if (c->state != HELD) continue;
            ssize_t r = read(c->fd, readbuf, sizeof readbuf);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                hold_errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->state = DEAD;
                continue;
            }
            if (!c->pending) continue;
            c->got = (uint16_t)(c->got + r);
            if (c->got >= payload) {
                /* From the scheduled send, less the lag the 1 ms grid explains (as stampede). */
                uint64_t scheduled = t0 + (uint64_t)c->sent_ms * 1000u;
                uint64_t rtt = t > scheduled ? t - scheduled : 0;
                rtt = rtt > c->lag_us ? rtt - c->lag_us : 0;
                hist_record(&rtt_all, rtt);
                if (verbose) hist_record(&rtt_second, rtt);
                c->pending = 0;
                hb_answered++;
            }
        }
    }
    if (rss_max < 0) rss_max = rss_kib();
    long held_at_end = 0;
    for (long i = 0; i < n; i++)
        if (conns[i].state == HELD) held_at_end++;

    printf("{\"established\":%ld,\"failed\":%ld,\"connect_seconds\":%.6f,\"connects_per_s\":%.0f,"
           "\"rss_kib_holding\":%ld,\"held_at_end\":%ld,\"hold_errors\":%llu,"
           "\"heartbeats\":{\"sent\":%llu,\"answered\":%llu,\"timeouts\":%llu,\"skipped\":%llu},"
           "\"heartbeat_rtt_us\":{\"count\":%llu,\"p50\":%llu,\"p99\":%llu,\"p999\":%llu,\"max\":%llu}}\n",
           established, failed, connect_seconds,
           connect_seconds > 0 ? (double)established / connect_seconds : 0.0, rss_max, held_at_end,
           (unsigned long long)hold_errors, (unsigned long long)hb_sent,
           (unsigned long long)hb_answered, (unsigned long long)hb_timeouts,
           (unsigned long long)hb_skipped, (unsigned long long)rtt_all.count,
           (unsigned long long)hist_quantile(&rtt_all, 0.5),
           (unsigned long long)hist_quantile(&rtt_all, 0.99),
           (unsigned long long)hist_quantile(&rtt_all, 0.999), (unsigned long long)rtt_all.max);
    fflush(stdout);
    /* Exit closes every socket; the kernel sends the FINs. */
    return (established == n && held_at_end == n && hb_timeouts == 0 && hold_errors == 0) ? 0 : 1;
}
