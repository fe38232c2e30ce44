#include "common.h"

int __attribute__((noinline)) scale_b(int x)
{
    return x + scale;
}
