/* libbusy.so: a function a thread is always inside (it sleeps for an hour per call) */
#include <unistd.h>

long busy_work(long x)
{
    sleep(3600);
    return x;
}
