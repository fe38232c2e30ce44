/* immediate-after-disp: addl $100, stats(%rip) puts an immediate after the displacement; other sits right after stats. */
#include <stdio.h>
#include <unistd.h>
struct stats { int hits; int misses; int extra; long total; };
int other = 0;
struct stats stats = { 0, 0, 0, 0 };
void __attribute__((noinline)) record(int tick) { stats.misses++; stats.total += tick; }
void __attribute__((noinline)) bump_hits(void) { stats.hits += 100; }
void __attribute__((noinline)) bump_other(void) { other += 1000; }
void __attribute__((noinline)) report(int tick)
{
    printf("tick %d hits %d misses %d total %ld other %d V1\n", tick, stats.hits, stats.misses, stats.total, other);
}
int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        record(tick); bump_hits(); bump_other(); report(tick);
        usleep(20000);
    }
}
