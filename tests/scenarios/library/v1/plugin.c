/* plugin: loads libkv.so with dlopen() from its own directory, as a plugin host does */
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    char exe[PATH_MAX] = "", path[PATH_MAX + 16];
    if (readlink("/proc/self/exe", exe, sizeof exe - 1) < 0)
        return 1;
    snprintf(path, sizeof path, "%s/libkv.so", dirname(exe));
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("dlopen: %s\n", dlerror());
        return 1;
    }
    long (*compute)(long) = (long (*)(long))dlsym(lib, "kv_compute");
    long (*calls)(void) = (long (*)(void))dlsym(lib, "kv_calls");
    for (long tick = 1;; tick++) {
        long value = compute(tick);
        printf("plugin tick %ld value %ld calls %ld\n", tick, value, calls());
        fflush(stdout);
        usleep(20000);
    }
}
