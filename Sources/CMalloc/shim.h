// glibc's malloc.h (malloc_trim): not part of the Glibc Swift module.
#include <malloc.h>
