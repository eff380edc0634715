#ifndef TLSRELAY_CIDN2_SHIM_H
#define TLSRELAY_CIDN2_SHIM_H
#include <idn2.h>
#include <stdlib.h>
#endif
