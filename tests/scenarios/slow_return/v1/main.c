/* slow-return: work() sleeps SLEEP_US (0.4 s unless -D'd) per call and returns; it is on the
 * stack at almost every instant, but returns every call. Without -DTHREADS main calls it in its
 * loop; with -DTHREADS=N, N threads call it in theirs while main prints a tick every 0.1 s. v1
 * changes work()'s result. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#ifndef SLEEP_US
#define SLEEP_US 400000
#endif

int __attribute__((noinline)) work(int x)
{
    usleep(SLEEP_US);
    return x + 200000;
}

#ifdef THREADS
static void *worker(void *arg)
{
    int me = (int)(long)arg;

    for (int n = 1;; n++) {
        int r = work(n);

        printf("thread %d call %d result %d\n", me, n, r);
        fflush(stdout);
    }
    return NULL;
}
#endif

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("started\n");
    fflush(stdout);
#ifdef THREADS
    for (long i = 0; i < THREADS; i++) {
        pthread_t tid;

        pthread_create(&tid, NULL, worker, (void *)i);
    }
    for (int tick = 1;; tick++) {
        printf("tick %d\n", tick);
        fflush(stdout);
        usleep(100000);
    }
#else
    for (int tick = 1;; tick++) {
        int r = work(tick);

        printf("tick %d result %d\n", tick, r);
        fflush(stdout);
    }
#endif
}
