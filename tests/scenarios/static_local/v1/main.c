/* static-local: next_id() changes its body; its static counter (and the other function's static
 * of the same name) must keep counting. */
#include <stdio.h>
#include <unistd.h>

int __attribute__((noinline)) next_id(void)
{
    static int counter;

    counter += 1;
    return counter + 1000000;
}

int __attribute__((noinline)) next_odd(void)
{
    static int counter = 1;

    counter += 2;
    return counter;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        int id = next_id();

        printf("tick %d id %d odd %d\n", tick, id, next_odd());
        usleep(20000);
    }
}
