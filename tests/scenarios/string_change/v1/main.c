/* string-change: only a string literal of greet() changes. */
#include <stdio.h>
#include <unistd.h>

void __attribute__((noinline)) greet(int tick)
{
    printf("tick %d says HOWDY from v1\n", tick);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        greet(tick);
        usleep(20000);
    }
}
