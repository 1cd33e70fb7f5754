/* The library `frameless dlopen` opens once its work has started: frameless as the program
 * (-O2 -fomit-frame-pointer, no debug information), so its frames too are known only from its
 * .eh_frame, which bar must load after the recording started. */
#define KEEP __attribute__((noipa))

volatile unsigned long dl_sink;

KEEP unsigned long dl_burn_leaf(unsigned long n) {
    unsigned long x = 0x2545f4914f6cdd1dul;
    for (unsigned long i = 0; i < n; i++) {
        x = (x << 7 | x >> 57) + i;
        x *= 0x9e3779b97f4a7c15ul;
        dl_sink = x;
    }
    return x;
}

KEEP unsigned long dl_stage(unsigned long n) {
    unsigned long r = dl_burn_leaf(n);
    dl_sink ^= r * 11;
    return r + 1;
}

KEEP unsigned long dl_entry(unsigned long n) {
    unsigned long r = dl_stage(n);
    dl_sink ^= r * 13;
    return r + 2;
}

/* Called by nothing: the test of a table with one bad entry damages this function's FDE, and
 * the others must still serve. It keeps a frame of its own so that its FDE has rules. */
KEEP unsigned long dl_spare(unsigned long n) {
    volatile unsigned long pad[4] = {n, n + 1, n + 2, n + 3};
    return dl_stage(pad[0] + pad[3]) + pad[1];
}
