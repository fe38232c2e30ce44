/* stacked-transform: v1 adds a global struct and code that uses it; v2 grows the struct. The
 * v1 code that v2 leaves alone (add_a) must follow the struct into its new storage. */
#include <stdio.h>
#include <unistd.h>

struct acc {
    long a;
    long b;
};

struct acc acc;

void __attribute__((noinline)) add_a(void)
{
    acc.a += 1;
}

void __attribute__((noinline)) add_b(void)
{
    acc.b += 2;
}

static int __attribute__((noinline)) step(int tick)
{
    add_a();
    add_b();
    return tick % 3;
}

static void __attribute__((noinline)) report(int tick)
{
    printf("tick %d a %ld b %ld V1\n", tick, acc.a, acc.b);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        step(tick);
        report(tick);
        usleep(20000);
    }
}
