/* prog: links libkv.so and prints what it computes, one line per tick */
#include <stdio.h>
#include <unistd.h>
#include "kv.h"

__attribute__((noinline)) void report(long tick, long value)
{
    printf("tick %ld value %ld calls %ld tls %ld total %ld hits %ld misses %ld tag v1\n", tick,
           value, kv_calls(), kv_thread_calls(), kv_total(), kv_hits(), kv_misses());
    fflush(stdout);
}

int main(void)
{
    for (long tick = 1;; tick++) {
        report(tick, kv_compute(tick));
        usleep(20000);
    }
}
