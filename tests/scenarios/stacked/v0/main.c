/* stacked: v0 -> v1 -> v2 on one process; each step changes compute(), v2 also adds a global. */
#include <stdio.h>
#include <unistd.h>

static int __attribute__((noinline)) compute(int x)
{
    return x % 7 == 0 ? 7 : x * 2;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d result %d\n", tick, compute(tick));
        usleep(20000);
    }
}
