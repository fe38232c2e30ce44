/* new-function: in v1 compute() calls bonus(), a static function v0 does not have. */
#include <stdio.h>
#include <unistd.h>

int __attribute__((noinline)) compute(int x)
{
    return x * 2 + 1 + (x >> 3);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d result %d\n", tick, compute(tick));
        usleep(20000);
    }
}
