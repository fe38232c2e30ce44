/* const-change: scale (consts.c) changes from 3 to 5; scale_a and scale_b read it. */
#include <stdio.h>
#include <unistd.h>
#include "common.h"

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d a %d b %d\n", tick, scale_a(tick), scale_b(tick));
        usleep(20000);
    }
}
