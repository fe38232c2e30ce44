/* library-data: v1 reads stdout, a libc object the program has as a copy relocation (its .symtab spells it stdout@GLIBC_2.2.5). */
#include <stdio.h>
#include <unistd.h>
void __attribute__((noinline)) report(int tick)
{
    printf("tick %d V0\n", tick);
}
int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        report(tick);
        usleep(20000);
    }
}
