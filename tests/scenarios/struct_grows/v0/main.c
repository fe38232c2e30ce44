/* struct-grows: struct stats gains a field in the middle in v1. record() and report() change;
 * hits_of() reads a field whose offset stays, so its bytes do not change: after the patch it
 * must read the new storage too. Invariants: hits == tick, misses == tick / 3,
 * total == tick * (tick + 1) / 2. */
#include <stdio.h>
#include <unistd.h>

struct stats {
    int hits;
    int misses;
    long total;
};

struct stats stats = { 0, 0, 0 };

void __attribute__((noinline)) record(int tick)
{
    stats.hits++;
    if (tick % 3 == 0)
        stats.misses++;
    stats.total += tick;
}

int __attribute__((noinline)) hits_of(void)
{
    return stats.hits;
}

void __attribute__((noinline)) report(int tick)
{
    printf("tick %d hits %d misses %d total %ld v0\n", tick, stats.hits, stats.misses,
           stats.total);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        record(tick);
        report(tick);
        printf("tick %d hits_of %d\n", tick, hits_of());
        usleep(20000);
    }
}
