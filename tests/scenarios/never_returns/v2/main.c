/* never-returns: main's loop and serve(), a thread's start routine, both loop forever. v1
 * changes main's loop (a patch that can never apply: refused by katana generate); v2 changes
 * serve() only (generated, but apply must wait for a return that never comes). */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static volatile long served;

int __attribute__((noinline)) scale(int x)
{
    return x * 2;
}

void *__attribute__((noinline)) serve(void *arg)
{
    (void)arg;
    for (;;) {
        served += 2;
        usleep(10000);
    }
    return NULL;
}

int main(void)
{
    pthread_t tid;

    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_create(&tid, NULL, serve, NULL);
    for (int tick = 1;; tick++) {
        printf("tick %d result %d served %ld\n", tick, scale(tick), served);
        fflush(stdout);
        usleep(20000);
    }
}
