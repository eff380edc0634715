#ifndef TLSRELAY_CUNBOUND_SHIM_H
#define TLSRELAY_CUNBOUND_SHIM_H
#include <unbound.h>
#endif
