/* prog: one thread inside the library's busy_work, the main thread printing */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

long busy_work(long x);

static void *worker(void *arg)
{
    for (long n = 0;; n++)
        busy_work(n);
    return arg;
}

int main(void)
{
    pthread_t thread;
    pthread_create(&thread, NULL, worker, NULL);
    for (long tick = 1;; tick++) {
        printf("tick %ld\n", tick);
        fflush(stdout);
        usleep(20000);
    }
}
