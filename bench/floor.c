/* The floor of a stop: PTRACE_SEIZE + PTRACE_INTERRUPT every thread of a process, one write of
 * /proc/PID/mem (the bytes already at ADDR, written back), PTRACE_DETACH every thread.
 * Usage: floor PID ADDR SIZE. Prints the time from the first interrupt to the last detach. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXT 4096

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    int pid = atoi(argv[1]), n = 0, tids[MAXT];
    unsigned long addr = strtoul(argv[2], NULL, 0);
    size_t size = strtoul(argv[3], NULL, 0);
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    for (struct dirent *e; d && (e = readdir(d)) && n < MAXT;)
        if (e->d_name[0] != '.' && ptrace(PTRACE_SEIZE, atoi(e->d_name), 0, 0) == 0)
            tids[n++] = atoi(e->d_name);
    closedir(d);
    snprintf(path, sizeof path, "/proc/%d/mem", pid);
    int mem = open(path, O_RDWR);
    if (mem < 0 || pread(mem, buf, size, addr) != (ssize_t)size)
        return 1;
    double t0 = now();
    for (int i = 0; i < n; i++)
        ptrace(PTRACE_INTERRUPT, tids[i], 0, 0);
    for (int i = 0; i < n; i++)
        waitpid(tids[i], NULL, __WALL);
    if (pwrite(mem, buf, size, addr) != (ssize_t)size)
        return 1;
    for (int i = 0; i < n; i++)
        ptrace(PTRACE_DETACH, tids[i], 0, 0);
    printf("floor %d threads %.3f ms\n", n, (now() - t0) * 1e3);
    return 0;
}
