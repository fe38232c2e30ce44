/* inline-callers: the static inline helper() changes; GCC inlined it into left() and right(),
 * so both callers must be in the patch. */
#include <stdio.h>
#include <unistd.h>

static inline int helper(int x)
{
    return x * 500 + (x >> 1);
}

int __attribute__((noinline)) left(int x)
{
    return helper(x) + 1;
}

int __attribute__((noinline)) right(int x)
{
    return helper(x) - 1;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d left %d right %d\n", tick, left(tick), right(tick));
        usleep(20000);
    }
}
