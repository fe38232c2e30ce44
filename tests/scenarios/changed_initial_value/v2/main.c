/* changed-initial-value, v2: only the initial value of limit changes (5 -> 6), no code. The
 * running process keeps its live value: there is nothing to patch. */
#include <stdio.h>
#include <unistd.h>

int limit = 6;

const char *__attribute__((noinline)) step(void)
{
    limit += 1;
    return "v0";
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        const char *tag = step();

        printf("tick %d limit %d %s\n", tick, limit, tag);
        usleep(20000);
    }
}
