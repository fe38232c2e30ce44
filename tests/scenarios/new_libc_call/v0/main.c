/* new-libc-call: v1's measure() calls snprintf and strlen (an IFUNC), which v0 never calls. */
#include <stdio.h>
#include <unistd.h>

long __attribute__((noinline)) measure(int tick)
{
    return (long)tick * 3;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d measure %ld\n", tick, measure(tick));
        usleep(20000);
    }
}
