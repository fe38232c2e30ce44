#include "common.h"

int __attribute__((noinline)) scale_a(int x)
{
    return x * scale;
}
