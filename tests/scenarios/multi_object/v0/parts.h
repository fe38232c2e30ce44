/* multi-object: five objects; v1 changes part_b (b.c) and part_d (d.c) only. */
int part_a(int x);
int part_b(int x);
int part_c(int x);
int part_d(int x);
