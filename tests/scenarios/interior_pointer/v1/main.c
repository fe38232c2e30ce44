/* interior-pointer: pmisses points at a field of stats, which moves when stats gains a field before it. */
#include <stdio.h>
#include <unistd.h>
struct stats { int hits; int extra; int misses; long total; };
struct stats stats = { 0, 0, 0, 0 };
int *pmisses = &stats.misses;
void __attribute__((noinline)) record(int tick) { stats.hits++; stats.total += tick; }
void __attribute__((noinline)) miss(void) { (*pmisses)++; }
void __attribute__((noinline)) report(int tick)
{
    printf("tick %d hits %d misses %d total %ld V1 extra %d\n", tick, stats.hits, stats.misses, stats.total, stats.extra);
}
int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        record(tick); miss(); report(tick);
        usleep(20000);
    }
}
