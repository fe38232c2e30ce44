/* threads: three threads call the library, each counting its own calls in the library's
   thread-local counter: "tls" equals the thread's own tick, whichever code counted them */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include "kv.h"

static void *run(void *arg)
{
    long id = (long)arg;
    for (long tick = 1;; tick++) {
        long value = kv_compute(tick);
        printf("thread %ld tick %ld value %ld tls %ld\n", id, tick, value, kv_thread_calls());
        fflush(stdout);
        usleep(20000 + 5000 * id);
    }
    return NULL;
}

int main(void)
{
    pthread_t threads[3];
    for (long id = 0; id < 3; id++)
        pthread_create(&threads[id], NULL, run, (void *)id);
    for (long id = 0; id < 3; id++)
        pthread_join(threads[id], NULL);
    return 0;
}
