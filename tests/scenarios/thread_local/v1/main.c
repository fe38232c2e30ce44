/* thread-local: step() reads and writes existing __thread variables (a global and a static one,
 * each thread its own copy); v1 changes step(). Two threads must keep their own counts. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

__thread int tl;
static __thread int tl2 = 100;

static void __attribute__((noinline)) step(int who, int tick)
{
    tl++;
    tl2++;
    printf("who %d tick %d tl %d tl2 %d v1\n", who, tick, tl, tl2);
}

static void *run(void *arg)
{
    int who = (int)(long)arg;
    for (int tick = 1;; tick++) {
        step(who, tick);
        usleep(20000);
    }
    return NULL;
}

int main(void)
{
    pthread_t other;
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_create(&other, NULL, run, (void *)2L);
    run((void *)1L);
}
