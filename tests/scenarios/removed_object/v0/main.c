/* removed-object: v0 links unused.c, which v1 drops; compute() changes too. */
#include <stdio.h>
#include <unistd.h>

int __attribute__((noinline)) compute(int x)
{
    return x * 2 + (x >> 3);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d result %d\n", tick, compute(tick));
        usleep(20000);
    }
}
