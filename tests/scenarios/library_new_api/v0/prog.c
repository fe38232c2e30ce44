/* prog: prints what the library computes, once a tick. v1 adds the library's new kv_bonus. */
#include <stdio.h>
#include <unistd.h>

int kv_value(int tick);

int __attribute__((noinline)) compute(int tick)
{
    return kv_value(tick);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d value %d\n", tick, compute(tick));
        usleep(20000);
    }
}
