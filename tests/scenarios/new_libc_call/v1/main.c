/* new-libc-call: v1's measure() calls snprintf and strlen (an IFUNC), which v0 never calls. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

long __attribute__((noinline)) measure(int tick)
{
    char buf[64];

    snprintf(buf, sizeof buf, "%d-%d", tick, tick * 7);
    /* strlen of a runtime string: GCC cannot fold it, the call must reach libc */
    return (long)strlen(buf) * 1000000 + tick;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d measure %ld\n", tick, measure(tick));
        usleep(20000);
    }
}
