/* new-constructor: v1 adds a constructor. It would only run when the program starts, so no
 * patch can bring it to a running process: generation refuses, naming .init_array. */
#include <stdio.h>
#include <unistd.h>

int limit = 5;

static void __attribute__((constructor)) raise_limit(void)
{
    limit = 50;
}

int __attribute__((noinline)) step(int tick)
{
    return tick + limit;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d value %d\n", tick, step(tick));
        usleep(20000);
    }
}
