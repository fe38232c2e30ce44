#include <stdio.h>
#include <unistd.h>
#include "parts.h"

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d a %d b %d c %d d %d\n", tick, part_a(tick), part_b(tick), part_c(tick),
               part_d(tick));
        usleep(20000);
    }
}
