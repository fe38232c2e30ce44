/* busy-thread: a helper thread calls compute(-1), which never returns; main calls compute()
 * normally. v1 changes compute(), so no safe point comes. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static volatile long progress;

int __attribute__((noinline)) compute(int x)
{
    if (x < 0) {
        for (;;) {
            progress++;
            usleep(10000);
        }
    }
    return x * 2;
}

static void *stuck(void *arg)
{
    (void)arg;
    return (void *)(long)compute(-1);
}

int main(void)
{
    pthread_t tid;

    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_create(&tid, NULL, stuck, NULL);
    for (int tick = 1;; tick++) {
        printf("tick %d result %d progress %ld\n", tick, compute(tick), progress);
        usleep(20000);
    }
}
