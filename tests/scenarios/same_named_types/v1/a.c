#include <stdio.h>

struct foo {
    int x;
    int w;
    int y;
};

struct foo fa = { 1, 0, 2 };

void __attribute__((noinline)) update_a(void)
{
    fa.x += 1;
    fa.w += 5;
    fa.y += 2;
}

void __attribute__((noinline)) report_a(int tick)
{
    printf("tick %d a x %d y %d w %d v1\n", tick, fa.x, fa.y, fa.w);
}
