#ifndef TLSRELAY_CPOSTGRESQL_SHIM_H
#define TLSRELAY_CPOSTGRESQL_SHIM_H
#include <libpq-fe.h>
#endif
