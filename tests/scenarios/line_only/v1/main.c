/* line-only: v1 moves every function down by a few lines; nothing else changes. */
#include <stdio.h>
#include <unistd.h>

/* a comment that only moves the code below it */


int __attribute__((noinline)) compute(int x)
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
