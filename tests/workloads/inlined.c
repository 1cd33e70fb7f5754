/* A chain that passes through a function the compiler inlines, built with debug information
 * (-O2 -g, unlike the frameless workloads), so that only DWARF says where it is:
 *
 *   main > inlined_outer > inlined_middle (inlined into inlined_outer: no call, no symbol)
 *        > inlined_leaf (burns CPU)
 *
 *   inlined [--wait] SECONDS
 *
 * With --wait it waits for a line on stdin before the work, so that a tracer can attach first.
 * It prints one JSON line with what it did.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEEP __attribute__((noipa))

volatile unsigned long inlined_sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

KEEP unsigned long inlined_leaf(unsigned long n) {
    unsigned long x = 0x2545f4914f6cdd1dul;
    for (unsigned long i = 0; i < n; i++) {
        x = (x << 7 | x >> 57) + i;
        x *= 0x9e3779b97f4a7c15ul;
        inlined_sink = x;
    }
    return x;
}

/* Work after the call, so that the return address lies within the inlined code. */
static inline __attribute__((always_inline)) unsigned long inlined_middle(unsigned long n) {
    unsigned long r = inlined_leaf(n);
    inlined_sink ^= r * 7;
    return r + 3;
}

KEEP unsigned long inlined_outer(unsigned long n) {
    unsigned long r = inlined_middle(n);
    inlined_sink ^= r * 5;
    return r + 1;
}

int main(int argc, char **argv) {
    int wait = argc > 1 && strcmp(argv[1], "--wait") == 0;
    if (argc != 2 + wait) {
        fprintf(stderr, "usage: inlined [--wait] SECONDS\n");
        return 2;
    }
    double seconds = atof(argv[1 + wait]);
    char line[16];
    if (wait && !fgets(line, sizeof line, stdin)) {
        return 1;
    }
    double end = now() + seconds;
    unsigned long rounds = 0;
    while (now() < end) {
        inlined_outer(200000);
        rounds++;
    }
    printf("{\"rounds\":%lu}\n", rounds);
    return 0;
}
