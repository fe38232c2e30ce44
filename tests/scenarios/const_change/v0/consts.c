#include "common.h"

const int scale = 3;
