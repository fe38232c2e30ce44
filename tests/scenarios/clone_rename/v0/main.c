/* clone-rename (built with -fipa-cp-clone, as -O3 does): weigh() has a clone specialised for
 * k == 3, weigh.constprop.0. In v1 weigh's body changes and new callers with k == 7 get a clone
 * that GCC numbers first: the k == 3 clone becomes weigh.constprop.1. Clones must be paired by
 * what they are, not by their number. */
#include <stdio.h>
#include <unistd.h>

static int __attribute__((noinline)) weigh(int x, int k)
{
    return x * k + (x >> 2) + k * k;
}

int __attribute__((noinline)) left(int x)
{
    return weigh(x, 3) + 1;
}

int __attribute__((noinline)) right(int x)
{
    return weigh(x, 3) + 2;
}

int __attribute__((noinline)) mid(int x)
{
    return weigh(x, 9) + 2;
}

void __attribute__((noinline)) report(int tick)
{
    printf("tick %d left %d right %d mid %d seven %d\n", tick, left(tick), right(tick), mid(tick),
           0);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        report(tick);
        usleep(20000);
    }
}
