#include "parts.h"

int __attribute__((noinline)) part_d(int x)
{
    return x * 400 + (x >> 2);
}
