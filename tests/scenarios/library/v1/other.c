/* other: a second program of the project using the same library */
#include <stdio.h>
#include <unistd.h>
#include "kv.h"

int main(void)
{
    for (long tick = 1;; tick++) {
        long value = kv_compute(tick);
        printf("other tick %ld value %ld calls %ld\n", tick, value, kv_calls());
        fflush(stdout);
        usleep(20000);
    }
}
