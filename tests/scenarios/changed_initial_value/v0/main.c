/* changed-initial-value: limit starts at 5 in v0 and at 6 in v1, and step() changes its tag. The
 * live value must win: limit == 5 + tick before and after the patch. */
#include <stdio.h>
#include <unistd.h>

int limit = 5;

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
