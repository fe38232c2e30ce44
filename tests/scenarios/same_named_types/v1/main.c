/* same-named-types: a.c and b.c each have their own struct foo; both grow, differently.
 * Invariants: x == tick + 1, y == 2 * tick + 2, p == 100 * tick + 100, q == tick + 200. */
#include <stdio.h>
#include <unistd.h>

void update_a(void);
void update_b(void);
void report_a(int tick);
void report_b(int tick);

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        update_a();
        update_b();
        report_a(tick);
        report_b(tick);
        usleep(20000);
    }
}
