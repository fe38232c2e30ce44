/* nested-struct: struct inner gains a field, struct outer (which holds one) gains a field too.
 * Invariants: id == 7, in.a == tick, in.b == 2 * tick, sum == tick * (tick + 1) / 2. */
#include <stdio.h>
#include <unistd.h>

struct inner {
    int a;
    int b;
};

struct outer {
    int id;
    struct inner in;
    long sum;
};

struct outer state = { 7, { 0, 0 }, 0 };

void __attribute__((noinline)) update(int tick)
{
    state.in.a += 1;
    state.in.b += 2;
    state.sum += tick;
}

void __attribute__((noinline)) report(int tick)
{
    printf("tick %d id %d a %d b %d sum %ld v0\n", tick, state.id, state.in.a, state.in.b,
           state.sum);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        update(tick);
        report(tick);
        usleep(20000);
    }
}
