/* revert-busy: v1's work() never returns, so v1's code is always on the stack: revert must wait
 * and then refuse, leaving v1 running. */
#include <stdio.h>
#include <unistd.h>

static volatile int rounds;

static void __attribute__((noinline)) work(void)
{
    rounds++;
    printf("v0 round %d\n", rounds);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        work();
        usleep(20000);
    }
}
