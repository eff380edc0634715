#ifndef TLSRELAY_COPENSSL_SHIM_H
#define TLSRELAY_COPENSSL_SHIM_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/evp.h>
#include <openssl/bio.h>

/* Function-like macros are not imported by Swift: wrap them. */
static inline long tlsrelay_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}
static inline long tlsrelay_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_min_proto_version(ctx, version);
}
static inline long tlsrelay_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_mode(ctx, mode);
}
static inline long tlsrelay_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_session_cache_mode(ctx, mode);
}
/* RelayTLS server context: no renegotiation, the server's cipher order. */
static inline uint64_t tlsrelay_SSL_CTX_set_server_options(SSL_CTX *ctx) {
    return SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
}
static inline long tlsrelay_BIO_pending(BIO *bio) {
    return (long)BIO_pending(bio);
}
static inline long tlsrelay_BIO_set_mem_eof_return(BIO *bio, long value) {
    return BIO_set_mem_eof_return(bio, value);
}
static inline int tlsrelay_BIO_should_retry(BIO *bio) {
    return BIO_should_retry(bio);
}
static inline void tlsrelay_OPENSSL_free(void *p) {
    OPENSSL_free(p);
}
/* RelayTLS: RFC 2253 name printing flags (a composite macro Swift does not import), UTF-8 kept. */
static inline unsigned long tlsrelay_XN_FLAG_RFC2253_UTF8(void) {
    return XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB;
}
#endif
