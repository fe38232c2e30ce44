/* prog: links libkv.so and prints what it computes, one line per tick */
#include <stdio.h>
#include <unistd.h>
#include "kv.h"

#ifdef DIRECT_STATS
/* the program reads the library's global itself: the linker gives it a copy (a copy
   relocation), which the library's code then uses too */
extern struct { long hits; } kv_stats;
#define DIRECT_HITS kv_stats.hits
#else
#define DIRECT_HITS kv_hits()
#endif

__attribute__((noinline)) void report(long tick, long value)
{
    printf("tick %ld value %ld calls %ld tls %ld total %ld hits %ld misses %ld direct %ld "
           "tag v1\n", tick, value, kv_calls(), kv_thread_calls(), kv_total(), kv_hits(),
           kv_misses(), DIRECT_HITS);
    fflush(stdout);
}

int main(void)
{
    for (long tick = 1;; tick++) {
        report(tick, kv_compute(tick));
        usleep(20000);
    }
}
