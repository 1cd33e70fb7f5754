/* A workload built the way Debian builds its C libraries and programs: -O2 -fomit-frame-pointer,
 * no debug information. Its frames are described only by .eh_frame, so a frame pointer walk
 * cannot follow them; bar's integration tests check that its stacks come out whole.
 *
 * Every function of the chains is kept out of line (noipa: no inlining, no clones, no tail
 * calls) and does work after the call it makes, so each keeps a frame of its own:
 *
 *   frameless cpu SECONDS       main > frameless_far > burn_for > frameless_run
 *                               > frameless_stage_one > _two > _three > frameless_burn_leaf,
 *                               the burn 16 KB of stack below frameless_far's return address
 *   frameless faults PAGES [DEPTH]   ... > frameless_stage_three > frameless_descend (DEPTH
 *                               times more frames, 0 by default) > frameless_touch_pages
 *   frameless sleep COUNT US    ... > frameless_stage_three > frameless_napper > nanosleep
 *   frameless dlopen LIB SECONDS   ... > frameless_stage_three > (LIB) dl_entry > dl_stage
 *                               > dl_burn_leaf, the library opened once the work starts
 *   frameless exec SECONDS      execs itself as `frameless cpu SECONDS` once the work starts
 *   frameless mixed SECONDS PAGES COUNT US   cpu, then faults, then sleep, in one run
 *   frameless jit SECONDS       ... > frameless_stage_three > frameless_jit_call > code copied
 *                               into anonymous memory (no table), called with a frame pointer
 *                               that leads to a return address in no mapping
 *   frameless pingpong COUNT    two threads, each on a CPU of its own where it may, pass a byte
 *                               back and forth over pipes COUNT times (frameless_pinger and
 *                               frameless_ponger under the chain)
 *
 * With --wait it waits for a line on stdin before the work, so that a tracer can attach first.
 * It prints one JSON line with what it did.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define KEEP __attribute__((noipa))

volatile unsigned long frameless_sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

KEEP unsigned long frameless_burn_leaf(unsigned long n) {
    unsigned long x = 0x9e3779b97f4a7c15ul;
    for (unsigned long i = 0; i < n; i++) {
        x = (x << 5 | x >> 59) ^ i;
        x *= 0x2545f4914f6cdd1dul;
        frameless_sink = x;
    }
    return x;
}

KEEP unsigned long frameless_touch_pages(unsigned long pages) {
    size_t len = pages * 4096;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        return 0;
    }
    madvise(p, len, MADV_NOHUGEPAGE);
    for (unsigned long i = 0; i < pages; i++) {
        ((volatile char *)p)[i * 4096] = 1;
    }
    munmap(p, len);
    return pages;
}

/* Adds `depth` frames between the chain and the leaf, for the cost of a frame in benchmarks. */
static unsigned long descend_depth;

KEEP unsigned long frameless_descend(unsigned long pages, unsigned long depth) {
    if (depth == 0) {
        return frameless_touch_pages(pages);
    }
    unsigned long r = frameless_descend(pages, depth - 1);
    frameless_sink ^= r + depth;
    return r;
}

KEEP unsigned long frameless_touch_deep(unsigned long pages) {
    unsigned long r = frameless_descend(pages, descend_depth);
    frameless_sink ^= r;
    return r;
}

/* Pipes of the ping-pong: ping[1] -> ping[0], pong[1] -> pong[0]. */
static int ping[2], pong[2];

KEEP unsigned long frameless_pinger(unsigned long rounds) {
    char b = 0;
    for (unsigned long i = 0; i < rounds; i++) {
        if (write(ping[1], &b, 1) != 1 || read(pong[0], &b, 1) != 1) {
            return i;
        }
    }
    return rounds;
}

KEEP unsigned long frameless_ponger(unsigned long rounds) {
    char b;
    for (unsigned long i = 0; i < rounds; i++) {
        if (read(ping[0], &b, 1) != 1 || write(pong[1], &b, 1) != 1) {
            return i;
        }
    }
    return rounds;
}

KEEP unsigned long frameless_napper(unsigned long micros) {
    struct timespec ts = {micros / 1000000, (micros % 1000000) * 1000};
    nanosleep(&ts, NULL);
    frameless_sink += micros;
    return micros;
}

typedef unsigned long (*work_fn)(unsigned long);

/* Code written at run time, as a JIT writes it: `dec %rdi; jnz .-3; ret`, a loop of its argument's
 * length, in anonymous memory that no table describes. */
static work_fn jit_code;

static int jit_init(void) {
    static const unsigned char loop[] = {0x48, 0xff, 0xcf, 0x75, 0xfb, 0xc3};
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        return -1;
    }
    memcpy(p, loop, sizeof loop);
    if (mprotect(p, 4096, PROT_READ | PROT_EXEC)) {
        return -1;
    }
    jit_code = (work_fn)p;
    return 0;
}

/* Calls the JIT code with rbp pointing at a frame on the stack whose saved frame pointer ends
 * the chain and whose return address lies in no mapping: what a frame pointer walk meets where
 * code uses rbp for data. The red zone is stepped over, as the compiler may keep values there. */
KEEP unsigned long frameless_jit_call(unsigned long n) {
    __asm__ volatile("sub $128, %%rsp\n\t"
                     "push %%rbp\n\t"
                     "push $0x10\n\t"
                     "push $0\n\t"
                     "mov %%rsp, %%rbp\n\t"
                     "call *%%rax\n\t"
                     "add $16, %%rsp\n\t"
                     "pop %%rbp\n\t"
                     "add $128, %%rsp"
                     : "+D"(n)
                     : "a"(jit_code)
                     : "memory", "cc");
    frameless_sink += n;
    return n + 1;
}

struct work {
    work_fn fn;
    unsigned long arg;
};

KEEP unsigned long frameless_stage_three(const struct work *w) {
    unsigned long r = w->fn(w->arg);
    frameless_sink ^= r * 3;
    return r + 1;
}

KEEP unsigned long frameless_stage_two(const struct work *w) {
    unsigned long r = frameless_stage_three(w);
    frameless_sink ^= r * 5;
    return r + 2;
}

KEEP unsigned long frameless_stage_one(const struct work *w) {
    unsigned long r = frameless_stage_two(w);
    frameless_sink ^= r * 7;
    return r + 3;
}

KEEP unsigned long frameless_run(const struct work *w, unsigned long times) {
    unsigned long r = 0;
    for (unsigned long i = 0; i < times; i++) {
        r += frameless_stage_one(w);
    }
    frameless_sink ^= r;
    return r;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static void *pong_thread(void *arg) {
    struct work w = {frameless_ponger, (unsigned long)arg};
    pin(1 % (int)sysconf(_SC_NPROCESSORS_ONLN));
    frameless_run(&w, 1);
    return NULL;
}

static int usage(void) {
    fprintf(stderr, "usage: frameless [--wait] cpu SECONDS | faults PAGES | sleep COUNT MICROS"
                    " | dlopen LIB SECONDS | exec SECONDS | mixed SECONDS PAGES COUNT MICROS"
                    " | faults PAGES DEPTH | pingpong COUNT | jit SECONDS\n");
    return 2;
}

/* Burns CPU in the chain until `seconds` have passed. */
KEEP static unsigned long burn_for(work_fn fn, double seconds) {
    struct work w = {fn, 200000};
    double end = now() + seconds;
    unsigned long rounds = 0;
    while (now() < end) {
        frameless_run(&w, 10);
        rounds++;
    }
    return rounds;
}

/* Burns as burn_for does, 16 KB of stack further down: as in real programs, the outer frames
 * (main, the setup of an event loop) lie on stack pages the work below does not touch, which
 * NUMA balancing takes away from the page tables until something touches them again. */
KEEP unsigned long frameless_far(work_fn fn, double seconds) {
    volatile char pad[16384];
    pad[0] = 1;
    pad[sizeof pad - 1] = 1;
    return burn_for(fn, seconds) + pad[0];
}

int main(int argc, char **argv) {
    int wait = argc > 1 && strcmp(argv[1], "--wait") == 0;
    char **args = argv + 1 + wait;
    int n = argc - 1 - wait;
    if (n < 1) {
        return usage();
    }
    if (wait) {
        char line[64];
        if (!fgets(line, sizeof line, stdin)) {
            return 1;
        }
    }
    double start = now();
    if (strcmp(args[0], "cpu") == 0 && n == 2) {
        unsigned long rounds = frameless_far(frameless_burn_leaf, atof(args[1]));
        printf("{\"mode\":\"cpu\",\"rounds\":%lu,\"elapsed_us\":%.0f}\n", rounds,
               (now() - start) * 1e6);
    } else if (strcmp(args[0], "faults") == 0 && (n == 2 || n == 3)) {
        unsigned long pages = strtoul(args[1], NULL, 10);
        descend_depth = n == 3 ? strtoul(args[2], NULL, 10) : 0;
        struct work w = {frameless_touch_deep, 64};
        unsigned long touched = frameless_run(&w, pages / 64);
        (void)touched;
        printf("{\"mode\":\"faults\",\"pages\":%lu,\"elapsed_us\":%.0f}\n", pages / 64 * 64,
               (now() - start) * 1e6);
    } else if (strcmp(args[0], "sleep") == 0 && n == 3) {
        unsigned long count = strtoul(args[1], NULL, 10);
        struct work w = {frameless_napper, strtoul(args[2], NULL, 10)};
        frameless_run(&w, count);
        printf("{\"mode\":\"sleep\",\"sleeps\":%lu,\"total_us\":%lu,\"elapsed_us\":%.0f}\n", count,
               count * w.arg, (now() - start) * 1e6);
    } else if (strcmp(args[0], "dlopen") == 0 && n == 3) {
        void *lib = dlopen(args[1], RTLD_NOW);
        work_fn entry = lib ? (work_fn)dlsym(lib, "dl_entry") : NULL;
        if (!entry) {
            fprintf(stderr, "frameless: %s\n", dlerror());
            return 1;
        }
        unsigned long rounds = burn_for(entry, atof(args[2]));
        printf("{\"mode\":\"dlopen\",\"rounds\":%lu,\"elapsed_us\":%.0f}\n", rounds,
               (now() - start) * 1e6);
    } else if (strcmp(args[0], "mixed") == 0 && n == 5) {
        unsigned long rounds = burn_for(frameless_burn_leaf, atof(args[1]));
        struct work faults = {frameless_touch_pages, 64};
        unsigned long pages = strtoul(args[2], NULL, 10) / 64;
        frameless_run(&faults, pages);
        unsigned long count = strtoul(args[3], NULL, 10);
        struct work naps = {frameless_napper, strtoul(args[4], NULL, 10)};
        frameless_run(&naps, count);
        printf("{\"mode\":\"mixed\",\"rounds\":%lu,\"pages\":%lu,\"sleeps\":%lu,"
               "\"total_us\":%lu,\"elapsed_us\":%.0f}\n",
               rounds, pages * 64, count, count * naps.arg, (now() - start) * 1e6);
    } else if (strcmp(args[0], "jit") == 0 && n == 2) {
        if (jit_init()) {
            perror("frameless: jit");
            return 1;
        }
        unsigned long rounds = burn_for(frameless_jit_call, atof(args[1]));
        printf("{\"mode\":\"jit\",\"rounds\":%lu,\"elapsed_us\":%.0f}\n", rounds,
               (now() - start) * 1e6);
    } else if (strcmp(args[0], "pingpong") == 0 && n == 2) {
        unsigned long count = strtoul(args[1], NULL, 10);
        pthread_t t;
        if (pipe(ping) || pipe(pong) || pthread_create(&t, NULL, pong_thread, (void *)count)) {
            perror("frameless: pingpong");
            return 1;
        }
        pin(0);
        struct work w = {frameless_pinger, count};
        frameless_run(&w, 1);
        pthread_join(t, NULL);
        printf("{\"mode\":\"pingpong\",\"round_trips\":%lu,\"elapsed_us\":%.0f}\n", count,
               (now() - start) * 1e6);
    } else if (strcmp(args[0], "exec") == 0 && n == 2) {
        fflush(stdout);
        char *again[] = {"/proc/self/exe", "cpu", args[1], NULL};
        execv(again[0], again);
        perror("frameless: exec");
        return 1;
    } else {
        return usage();
    }
    return 0;
}
