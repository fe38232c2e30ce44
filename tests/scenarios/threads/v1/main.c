/* threads: 8 threads call compute() nonstop; main prints each thread's last result and call
 * count. v0 results are 2 * (thread + 1), v1 results are 1000 + thread. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#define NTHREADS 8

static volatile int last[NTHREADS];
static volatile long calls[NTHREADS];

int __attribute__((noinline)) compute(int x)
{
    return 1000 + x + (x >> 3);
}

static void *worker(void *arg)
{
    int me = (int)(long)arg;

    for (;;) {
        last[me] = compute(me);
        calls[me]++;
        /* some work outside compute(), so that a safe point comes soon */
        for (volatile int spin = 0; spin < 200; spin++)
            ;
    }
    return NULL;
}

int main(void)
{
    pthread_t tid;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (long i = 0; i < NTHREADS; i++)
        pthread_create(&tid, NULL, worker, (void *)i);
    for (int tick = 1;; tick++) {
        printf("tick %d", tick);
        for (int i = 0; i < NTHREADS; i++)
            printf(" %d:%ld", last[i], calls[i]);
        printf("\n");
        usleep(20000);
    }
}
