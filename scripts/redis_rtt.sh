#!/usr/bin/env bash
# End-to-end cost of keeping rate limits in Redis: requests per second and p50/p99 latency
# of the loadtest_server example behind ApiKeyLayer + RateLimitLayer, measured with wrk,
# with its rate-limit store in memory (MODE=auth) and in Redis (MODE=auth-redis) in exact
# and in batched mode (REDIS_MODE), Redis on loopback and behind a simulated round trip.
#
# Variants: memory, exact@loopback, batched@loopback, exact@1ms, batched@1ms. The delayed
# Redis runs in a network namespace of its own, reached over a veth pair; netem delays
# every packet by DELAY_US on each side, so the round trip is 2 × DELAY_US (1 ms by
# default). On a kernel without netem (CONFIG_NET_SCH_NETEM) a small TCP proxy, built
# with gcc, listens at the namespace's address and holds every chunk for DELAY_US in each
# direction instead. The round trip to both Redis servers (2000 sequential PINGs) is
# measured and printed before the load.
#
# Each server starts once, on core 0 (it runs on one thread); wrk runs on core 1. Every
# variant gets a WARMUP run, then ROUNDS rounds of DURATION each, each round starting
# with the next variant. The table gives, per variant, the medians over the rounds of
# req/s, p50 and p99, the medians of the per-round ratios to memory (req/s and p50), and
# the median number of EVALSHA + EVAL calls Redis received per request (its statistics
# are reset before each timed run).
#
# Needs root (network namespace, veth, tc), iproute2, redis-server, redis-tools (redis-cli,
# redis-benchmark), wrk, taskset and bc; gcc if the kernel has no netem.
#
#   scripts/redis_rtt.sh                      # 3 rounds of 10 s, 32 connections
#   ROUNDS=5 DURATION=20s scripts/redis_rtt.sh
#   NET_ONLY=1 scripts/redis_rtt.sh           # set up network and Redis, print RTTs, tear down
#   SKIP_BUILD=1 scripts/redis_rtt.sh         # use the loadtest_server already built
#   DELAY_WITH=proxy scripts/redis_rtt.sh     # proxy even where netem exists (auto|netem|proxy)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2s}
DELAY_US=${DELAY_US:-500}
DELAY_WITH=${DELAY_WITH:-auto}
NET_ONLY=${NET_ONLY:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tower-api-key/target}"

die() { echo "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespace, veth pair, tc)"
needed=(ip tc redis-server redis-cli redis-benchmark)
[ "$NET_ONLY" = 1 ] || needed+=(wrk taskset bc)
for cmd in "${needed[@]}"; do
    command -v "$cmd" >/dev/null ||
        die "$cmd is not installed: apt-get install iproute2 redis-server redis-tools wrk bc"
done
case $DELAY_WITH in auto | netem | proxy) ;; *) die "DELAY_WITH must be auto, netem or proxy" ;; esac

server_bin="$CARGO_TARGET_DIR/release/examples/loadtest_server"
if [ "$NET_ONLY" != 1 ]; then
    [ "$SKIP_BUILD" = 1 ] || cargo build --release --features full --example loadtest_server >&2
    [ -x "$server_bin" ] || die "$server_bin is missing: run without SKIP_BUILD=1"
fi

# Names and addresses derived from the PID, so that two runs do not collide.
net=$(($$ % 254 + 1))
ns=tak-rtt-$$
veth_host=tak$$h
veth_ns=tak$$n
host_ip=10.213.$net.1
ns_ip=10.213.$net.2
ns_port=6379
lo_port=$((20000 + $$ % 20000))
tmp=$(mktemp -d)
pids=()

cleanup() {
    set +e
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    ip link del "$veth_host" 2>/dev/null
    ip netns del "$ns" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # log name, command...: runs the command in the background and remembers its pid
    local log=$tmp/$1.log
    shift
    "$@" >"$log" 2>&1 &
    pids+=($!)
}

build_proxy() { # -> $tmp/delayproxy
    command -v gcc >/dev/null || die "the kernel has no netem and gcc is missing for the proxy"
    gcc -O2 -Wall -o "$tmp/delayproxy" -x c - <<'EOF'
/* delayproxy LISTEN_IP PORT TARGET_IP PORT DELAY_US: forwards TCP connections, holding
 * every chunk read from either side for DELAY_US before writing it to the other side.
 * Reading never waits for writing, so pipelined traffic stays pipelined. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

struct chunk { struct chunk *next; uint64_t due; size_t len; char data[]; }; /* len 0: EOF */
struct end { struct conn *conn; int side; };
struct conn {
    struct conn *next;
    int fd[2], eof[2], dead;
    struct chunk *head[2], *tail[2]; /* read from fd[side], to be written to fd[!side] */
    struct end ends[2];
};

static struct conn *conns;
static struct end listen_end, timer_end;
static uint64_t delay_ns;
static int ep;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void fail(const char *what) { perror(what); exit(1); }

static struct sockaddr_in address(const char *ip, const char *port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port))};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", ip); exit(2); }
    return a;
}

static void watch(int fd, uint32_t events, struct end *end, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = end};
    if (epoll_ctl(ep, op, fd, &ev) < 0) fail("epoll_ctl");
}

static void accept_one(int lfd, struct sockaddr_in target) {
    int one = 1, a = accept(lfd, NULL, NULL), b;
    if (a < 0) return;
    b = socket(AF_INET, SOCK_STREAM, 0);
    if (b < 0 || connect(b, (struct sockaddr *)&target, sizeof target) < 0) {
        perror("connect");
        close(a);
        if (b >= 0) close(b);
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    c->fd[0] = a;
    c->fd[1] = b;
    for (int s = 0; s < 2; s++) {
        setsockopt(c->fd[s], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->ends[s] = (struct end){c, s};
        watch(c->fd[s], EPOLLIN, &c->ends[s], EPOLL_CTL_ADD);
    }
    c->next = conns;
    conns = c;
}

static void read_side(struct conn *c, int s) {
    static char buf[65536];
    ssize_t n = recv(c->fd[s], buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) c->dead = 1;
        return;
    }
    struct chunk *k = malloc(sizeof *k + (size_t)n);
    k->next = NULL;
    k->due = now_ns() + delay_ns;
    k->len = (size_t)n;
    memcpy(k->data, buf, (size_t)n);
    if (c->tail[s]) c->tail[s]->next = k; else c->head[s] = k;
    c->tail[s] = k;
    if (n == 0) {
        c->eof[s] = 1;
        watch(c->fd[s], 0, &c->ends[s], EPOLL_CTL_MOD);
    }
}

/* Writes the chunks that are due; returns when the next one is due, or 0. */
static uint64_t flush(struct conn *c, uint64_t now) {
    uint64_t next = 0;
    for (int s = 0; s < 2 && !c->dead; s++) {
        struct chunk *k;
        while (!c->dead && (k = c->head[s]) && k->due <= now) {
            if (k->len == 0) shutdown(c->fd[!s], SHUT_WR);
            for (size_t off = 0; off < k->len;) {
                ssize_t w = send(c->fd[!s], k->data + off, k->len - off, MSG_NOSIGNAL);
                if (w < 0 && errno == EINTR) continue;
                if (w < 0) { c->dead = 1; break; }
                off += (size_t)w;
            }
            c->head[s] = k->next;
            if (!c->head[s]) c->tail[s] = NULL;
            free(k);
        }
        if (c->head[s] && (!next || c->head[s]->due < next)) next = c->head[s]->due;
    }
    return next;
}

static void drop(struct conn *c) {
    for (int s = 0; s < 2; s++) {
        close(c->fd[s]);
        while (c->head[s]) { struct chunk *k = c->head[s]; c->head[s] = k->next; free(k); }
    }
    free(c);
}

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: %s LISTEN_IP PORT TARGET_IP PORT DELAY_US\n", argv[0]); return 2; }
    struct sockaddr_in listen_at = address(argv[1], argv[2]), target = address(argv[3], argv[4]);
    delay_ns = strtoull(argv[5], NULL, 10) * 1000u;
    prctl(PR_SET_TIMERSLACK, 1UL);

    int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&listen_at, sizeof listen_at) < 0) fail("bind");
    if (listen(lfd, 128) < 0) fail("listen");
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if ((ep = epoll_create1(0)) < 0 || tfd < 0) fail("epoll/timerfd");
    watch(lfd, EPOLLIN, &listen_end, EPOLL_CTL_ADD);
    watch(tfd, EPOLLIN, &timer_end, EPOLL_CTL_ADD);

    for (;;) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, -1);
        if (n < 0 && errno != EINTR) fail("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct end *e = evs[i].data.ptr;
            if (e == &listen_end) accept_one(lfd, target);
            else if (e == &timer_end) { uint64_t x; (void)!read(tfd, &x, sizeof x); }
            else read_side(e->conn, e->side);
        }
        uint64_t now = now_ns(), next = 0;
        for (struct conn **p = &conns; *p;) {
            struct conn *c = *p;
            uint64_t due = flush(c, now);
            if (c->dead || (c->eof[0] && c->eof[1] && !c->head[0] && !c->head[1])) {
                *p = c->next;
                drop(c);
                continue;
            }
            if (due && (!next || due < next)) next = due;
            p = &c->next;
        }
        struct itimerspec at = {.it_value = {(time_t)(next / 1000000000u), (long)(next % 1000000000u)}};
        timerfd_settime(tfd, TFD_TIMER_ABSTIME, &at, NULL);
    }
}
EOF
}

add_netem() {
    tc qdisc add dev "$veth_host" root netem delay "${DELAY_US}us" &&
        tc -n "$ns" qdisc add dev "$veth_ns" root netem delay "${DELAY_US}us"
}

wait_redis() { # host port log name
    for _ in $(seq 1 100); do
        [ "$(redis-cli -h "$1" -p "$2" ping 2>/dev/null)" = PONG ] && return
        sleep 0.05
    done
    die "no Redis at $1:$2: $(cat "$tmp/$3.log")"
}

rtt() { # host port -> round trip of 2000 sequential PINGs, in µs
    redis-benchmark -h "$1" -p "$2" -c 1 -n 2000 -t ping_mbulk --csv |
        awk -F'"' '$2 == "PING_MBULK" {
            printf "p50 %4.0f µs, p99 %4.0f µs, mean %4.0f µs\n", $10 * 1000, $14 * 1000, $6 * 1000 }'
}

# Network: the namespace with its end of the veth pair, and the delay on both ends.
if grep -q " 10\.213\.$net\." <<<"$(ip -o addr show)"; then die "10.213.$net.0/30 is in use"; fi
ip netns add "$ns"
ip link add "$veth_host" type veth peer name "$veth_ns" netns "$ns"
ip addr add "$host_ip/30" dev "$veth_host"
ip link set "$veth_host" up
ip -n "$ns" addr add "$ns_ip/30" dev "$veth_ns"
ip -n "$ns" link set "$veth_ns" up
ip -n "$ns" link set lo up
if [ "$DELAY_WITH" = netem ]; then
    add_netem || die "no netem qdisc (CONFIG_NET_SCH_NETEM) in this kernel: use DELAY_WITH=auto"
elif [ "$DELAY_WITH" = auto ]; then
    if add_netem 2>/dev/null; then
        DELAY_WITH=netem
    else
        tc qdisc del dev "$veth_host" root 2>/dev/null || true
        echo "this kernel has no netem qdisc: a proxy in the namespace adds the delay" >&2
        DELAY_WITH=proxy
    fi
fi

# Redis: one on loopback, one in the namespace behind the delay.
redis_args=(--save '' --appendonly no --daemonize no)
start redis-loopback redis-server --bind 127.0.0.1 --port "$lo_port" "${redis_args[@]}"
if [ "$DELAY_WITH" = netem ]; then
    start redis-delayed ip netns exec "$ns" redis-server --bind "$ns_ip" --port "$ns_port" \
        "${redis_args[@]}"
else
    build_proxy
    start redis-delayed ip netns exec "$ns" redis-server --bind 127.0.0.1 --port "$ns_port" \
        "${redis_args[@]}"
    start delayproxy ip netns exec "$ns" "$tmp/delayproxy" "$ns_ip" "$ns_port" \
        127.0.0.1 "$ns_port" "$DELAY_US"
fi
wait_redis 127.0.0.1 "$lo_port" redis-loopback
wait_redis "$ns_ip" "$ns_port" redis-delayed

rtt_us=$((2 * DELAY_US))
if ((rtt_us % 1000 == 0)); then delayed=$((rtt_us / 1000))ms; else delayed=${rtt_us}us; fi
echo "Redis round trip, 2000 sequential PINGs:"
printf '  %-16s %-20s %s\n' loopback "127.0.0.1:$lo_port" "$(rtt 127.0.0.1 "$lo_port")" \
    "$delayed via $DELAY_WITH" "$ns_ip:$ns_port" "$(rtt "$ns_ip" "$ns_port")"
if [ "$NET_ONLY" = 1 ]; then exit 0; fi

# Servers: each variant's server starts once and serves all its runs.
VARIANTS=(memory exact@loopback batched@loopback "exact@$delayed" "batched@$delayed")
declare -A url key redis_of
start_server() { # variant, environment...
    local variant=$1 log=$tmp/server-$1.log pid
    shift
    env BIND=127.0.0.1:0 "$@" taskset -c 0 "$server_bin" >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 1 200); do
        grep -q '^listening on' "$log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    url[$variant]=$(sed -n 's/^listening on //p' "$log")
    key[$variant]=$(sed -n 's/^key: //p' "$log")
    [ -n "${url[$variant]}" ] || die "the $variant server did not start: $(cat "$log")"
}
start_server memory MODE=auth
for mode in exact batched; do
    start_server "$mode@loopback" MODE=auth-redis REDIS_MODE=$mode \
        REDIS_URL="redis://127.0.0.1:$lo_port/"
    redis_of[$mode@loopback]="127.0.0.1 $lo_port"
    start_server "$mode@$delayed" MODE=auth-redis REDIS_MODE=$mode \
        REDIS_URL="redis://$ns_ip:$ns_port/"
    redis_of[$mode@$delayed]="$ns_ip $ns_port"
done

# Prints "req/s requests p50_µs p99_µs non-2xx socket-errors" of one wrk run.
parse_wrk() {
    awk 'function us(t) {
             if (t ~ /us$/) return t + 0
             if (t ~ /ms$/) return t * 1000
             if (t ~ /[0-9]m$/) return t * 60000000
             if (t ~ /s$/) return t * 1000000
             return -1
         }
         $1 == "50%" { p50 = us($2) }
         $1 == "99%" { p99 = us($2) }
         / requests in / { requests = $1 }
         /^Requests\/sec:/ { rps = $2 }
         /^ *Non-2xx or 3xx responses:/ { bad = $NF }
         /^ *Socket errors:/ { errors = $4 + $6 + $8 + $10 }
         END {
             if (rps == "" || p99 == "") exit 1
             printf "%s %d %.0f %.0f %d %d\n", rps, requests, p50, p99, bad, errors
         }'
}
run_wrk() { # variant duration
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$2" --latency \
        -H "Authorization: Bearer ${key[$1]}" "${url[$1]}/"
}
redis_cli() { # variant, command...
    local at=${redis_of[$1]}
    shift
    redis-cli -h "${at% *}" -p "${at#* }" "$@" | tr -d '\r'
}
script_calls() { # variant -> EVALSHA + EVAL calls since the last reset
    redis_cli "$1" info commandstats |
        awk -F'[:=,]' '$1 == "cmdstat_evalsha" || $1 == "cmdstat_eval" { n += $3 } END { print n + 0 }'
}
command_counts() { # variant -> "command=calls ..." since the last reset
    redis_cli "$1" info commandstats | awk -F'[:=,]' '
        /^cmdstat_/ && $1 != "cmdstat_config|resetstat" && $1 != "cmdstat_info" {
            printf "%s%s=%s", sep, substr($1, 9), $3; sep = " " }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ratio() { echo "$1 / $2" | bc -l; }

echo "$ROUNDS rounds of $DURATION, $CONNECTIONS connections, after a $WARMUP warm-up per variant"
for variant in "${VARIANTS[@]}"; do run_wrk "$variant" "$WARMUP" >/dev/null; done

declare -A all_rps all_p50 all_p99 rps_ratios p50_ratios per_request commands
for round in $(seq 1 "$ROUNDS"); do
    declare -A rps=() p50=()
    for i in "${!VARIANTS[@]}"; do
        variant=${VARIANTS[$(((round - 1 + i) % ${#VARIANTS[@]}))]}
        [ -z "${redis_of[$variant]:-}" ] || redis_cli "$variant" config resetstat >/dev/null
        result=$(run_wrk "$variant" "$DURATION" | parse_wrk) || die "wrk failed on $variant"
        read -r r requests p50_us p99_us bad errors <<<"$result"
        rps[$variant]=$r
        p50[$variant]=$p50_us
        all_rps[$variant]+="$r "
        all_p50[$variant]+="$p50_us "
        all_p99[$variant]+="$p99_us "
        line=$(printf 'round %d  %-18s %9.0f req/s  p50 %6d µs  p99 %6d µs' \
            "$round" "$variant" "$r" "$p50_us" "$p99_us")
        if [ -n "${redis_of[$variant]:-}" ]; then
            calls=$(script_calls "$variant")
            per_request[$variant]+="$(ratio "$calls" "$requests") "
            commands[$variant]=$(command_counts "$variant")
            line+=$(printf '  %d EVALSHA+EVAL' "$calls")
        fi
        echo "$line"
        ((bad + errors == 0)) ||
            echo "  warning: $variant: $bad non-2xx responses, $errors socket errors" >&2
    done
    for variant in "${VARIANTS[@]}"; do
        rps_ratios[$variant]+="$(ratio "${rps[$variant]}" "${rps[memory]}") "
        p50_ratios[$variant]+="$(ratio "${p50[$variant]}" "${p50[memory]}") "
    done
done

# shellcheck disable=SC2086 # the lists are space-separated numbers
{
    echo
    echo "Medians of $ROUNDS rounds (ratios: median of the per-round ratios to memory):"
    printf '%-18s %9s %10s %10s %12s %10s %12s\n' variant req/s 'p50 µs' 'p99 µs' \
        'req/s ratio' 'p50 ratio' 'Redis calls'
    printf '%-18s %9s %9s %9s %12s %10s %12s\n' '' '' '' '' '' '' 'per request'
    for variant in "${VARIANTS[@]}"; do
        calls=-
        [ -z "${per_request[$variant]:-}" ] || calls=$(printf '%.5f' "$(median ${per_request[$variant]})")
        printf '%-18s %9.0f %9.0f %9.0f %12.3f %10.3f %12s\n' "$variant" \
            "$(median ${all_rps[$variant]})" "$(median ${all_p50[$variant]})" \
            "$(median ${all_p99[$variant]})" "$(median ${rps_ratios[$variant]})" \
            "$(median ${p50_ratios[$variant]})" "$calls"
    done
    echo
    echo "Redis commands during the last timed run of each variant:"
    for variant in "${VARIANTS[@]:1}"; do
        printf '  %-18s %-20s %s\n' "$variant" "${redis_of[$variant]/ /:}" "${commands[$variant]}"
    done
}
