/* plain-rodata: built with -fno-merge-constants, so every string shares one plain .rodata; only
 * greet()'s string grows, which moves the strings of farewell() and main() after it. */
#include <stdio.h>
#include <unistd.h>

static const double ratio = 2.5;  /* a constant of its own, after the strings */

void __attribute__((noinline)) greet(int tick)
{
    printf("tick %d greet hello there, a longer string\n", tick);
}

void __attribute__((noinline)) farewell(int tick)
{
    if (tick % 2 == 0)
        printf("tick %d farewell bye\n", tick);
}

double __attribute__((noinline)) scaled(int tick)
{
    return tick * ratio;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        greet(tick);
        farewell(tick);
        printf("tick %d scaled %.1f\n", tick, scaled(tick));
        usleep(20000);
    }
}
