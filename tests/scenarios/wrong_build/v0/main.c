/* wrong-build: v0 is built twice, with and without -DFLAVOR=...; a patch made from one build must
 * be refused by a process running the other. */
#include <stdio.h>
#include <unistd.h>

#ifndef FLAVOR
#define FLAVOR "plain"
#endif

int __attribute__((noinline)) compute(int x)
{
    return x % 7 == 0 ? 7 : x * 2;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d result %d flavor %s\n", tick, compute(tick), FLAVOR);
        usleep(20000);
    }
}
