/* one-past-end: cursor compares against arr + 16, a pointer one past the array, where no symbol lies. */
#include <stdio.h>
#include <unistd.h>
int arr[16];
int *cursor = arr;
void __attribute__((noinline)) advance(void)
{
    cursor++; arr[0]++;
    if (cursor >= arr + 16)
        cursor = arr;
}
int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        advance();
        printf("tick %d index %ld v0\n", tick, (long)(cursor - arr));
        usleep(20000);
    }
}
