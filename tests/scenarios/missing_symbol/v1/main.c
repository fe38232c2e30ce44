/* missing-symbol: v1 calls cbrt() from libm, which v0 never linked: a process of v0 has no
 * library that defines it, so the patch cannot be linked there (check and apply refuse it). */
#include <math.h>
#include <stdio.h>
#include <unistd.h>

int __attribute__((noinline)) compute(int x)
{
    return (int)cbrt((double)x * x * x) * 3;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d result %d\n", tick, compute(tick));
        usleep(20000);
    }
}
