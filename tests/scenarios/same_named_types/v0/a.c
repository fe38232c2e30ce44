#include <stdio.h>

struct foo {
    int x;
    int y;
};

struct foo fa = { 1, 2 };

void __attribute__((noinline)) update_a(void)
{
    fa.x += 1;
    fa.y += 2;
}

void __attribute__((noinline)) report_a(int tick)
{
    printf("tick %d a x %d y %d v0\n", tick, fa.x, fa.y);
}
