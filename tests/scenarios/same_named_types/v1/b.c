#include <stdio.h>

struct foo {
    long r;
    long p;
    long q;
};

struct foo fb = { 0, 100, 200 };

void __attribute__((noinline)) update_b(void)
{
    fb.p += 100;
    fb.q += 1;
    fb.r += 7;
}

void __attribute__((noinline)) report_b(int tick)
{
    printf("tick %d b p %ld q %ld r %ld v1\n", tick, fb.p, fb.q, fb.r);
}
