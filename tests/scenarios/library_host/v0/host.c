/* host: the program; host_scale is its API, which its plugin may call */
#include <stdio.h>
#include <unistd.h>

long plug_run(long x);

__attribute__((noipa)) long host_scale(long x)
{
    return x * 10;
}

int main(void)
{
    for (long tick = 1;; tick++) {
        printf("tick %ld value %ld\n", tick, plug_run(tick));
        fflush(stdout);
        usleep(20000);
    }
}
