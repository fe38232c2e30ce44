/* busy-forever: serve() is the loop and never returns; v1 changes it, so no safe point comes. */
#include <stdio.h>
#include <unistd.h>

void __attribute__((noinline)) serve(void)
{
    for (int tick = 1;; tick++) {
        printf("tick %d serving v0\n", tick);
        usleep(20000);
    }
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    serve();
    return 0;
}
