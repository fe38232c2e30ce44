/* const-change: scale is a const global of consts.c, read by code in two other objects. */
extern const int scale;
int scale_a(int x);
int scale_b(int x);
