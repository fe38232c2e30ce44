/* new-object: v1 adds extra.c, whose function the changed compute() calls. */
#include <stdio.h>
#include <unistd.h>

int extra_value(int x);

int __attribute__((noinline)) compute(int x)
{
    return extra_value(x) + 1;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d result %d\n", tick, compute(tick));
        usleep(20000);
    }
}
