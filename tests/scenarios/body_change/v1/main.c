/* body-change: compute() returns something else in v1; the counter in main keeps counting. */
#include <stdio.h>
#include <unistd.h>

int __attribute__((noinline)) compute(int x)
{
    return x * 3 + 1;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d result %d\n", tick, compute(tick));
        usleep(20000);
    }
}
