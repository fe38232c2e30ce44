/* union-enum: union slot grows (so count moves), enum mode gains values.
 * Invariants: count == tick, slot.i == 1000 + 3 * tick, mode follows tick. */
#include <stdio.h>
#include <unistd.h>

enum mode { IDLE, RUN, STOP };

union slot {
    int i;
    short s[2];
};

struct box {
    enum mode mode;
    union slot slot;
    int count;
};

struct box box = { RUN, { .i = 1000 }, 0 };
enum mode last_mode = IDLE;

void __attribute__((noinline)) step(int tick)
{
    last_mode = box.mode;
    box.count++;
    box.slot.i += 3;
    box.mode = tick % 2 ? RUN : STOP;
}

void __attribute__((noinline)) report(int tick)
{
    printf("tick %d mode %d last %d slot %d count %d v0\n", tick, (int)box.mode, (int)last_mode,
           box.slot.i, box.count);
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
