/* stacked-transform: v1 adds a global struct and code that uses it; v2 grows the struct. The
 * v1 code that v2 leaves alone (add_a) must follow the struct into its new storage. */
#include <stdio.h>
#include <unistd.h>

static int __attribute__((noinline)) step(int tick)
{
    return tick % 3;
}

static void __attribute__((noinline)) report(int tick)
{
    printf("tick %d V0\n", tick);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        step(tick);
        report(tick);
        usleep(20000);
    }
}
