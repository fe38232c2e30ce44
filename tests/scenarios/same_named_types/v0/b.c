#include <stdio.h>

struct foo {
    long p;
    long q;
};

struct foo fb = { 100, 200 };

void __attribute__((noinline)) update_b(void)
{
    fb.p += 100;
    fb.q += 1;
}

void __attribute__((noinline)) report_b(int tick)
{
    printf("tick %d b p %ld q %ld v0\n", tick, fb.p, fb.q);
}
