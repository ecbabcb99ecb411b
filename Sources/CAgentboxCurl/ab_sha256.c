// SHA-256 for workspace checkpoints (content addresses an agent cannot forge a collision for), from
// OpenSSL's libcrypto loaded at first use, like libcurl (ab_curl.c): it is on every machine that has
// libcurl4-openssl, and linking it would make every command pay for loading it. No OpenSSL headers are
// needed: only the five EVP functions below, whose ABI is stable across OpenSSL 1.1 and 3.
#include "ab_curl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

static struct {
    void *lib;
    void *(*ctx_new)(void);
    void (*ctx_free)(void *);
    const void *(*sha256)(void);
    int (*init)(void *, const void *, void *);
    int (*update)(void *, const void *, size_t);
    int (*final)(void *, unsigned char *, unsigned int *);
    char error[256];
} api;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;

static void load(void) {
    const char *names[] = {"libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so", NULL};
    for (const char **n = names; *n && !api.lib; n++) api.lib = dlopen(*n, RTLD_NOW | RTLD_LOCAL);
    if (!api.lib) {
        snprintf(api.error, sizeof api.error, "libcrypto is not installed (%s); install libssl3", dlerror());
        return;
    }
#define SYM(field, name) *(void **)(&api.field) = dlsym(api.lib, name); if (!api.field) { snprintf(api.error, sizeof api.error, "libcrypto lacks %s", name); api.lib = NULL; return; }
    SYM(ctx_new, "EVP_MD_CTX_new")
    SYM(ctx_free, "EVP_MD_CTX_free")
    SYM(sha256, "EVP_sha256")
    SYM(init, "EVP_DigestInit_ex")
    SYM(update, "EVP_DigestUpdate")
    SYM(final, "EVP_DigestFinal_ex")
#undef SYM
}

const char *ab_sha256_unavailable(void) {
    pthread_once(&load_once, load);
    return api.lib ? NULL : api.error;
}

void *ab_sha256_new(void) {
    if (ab_sha256_unavailable()) return NULL;
    void *ctx = api.ctx_new();
    if (ctx && api.init(ctx, api.sha256(), NULL) != 1) { api.ctx_free(ctx); return NULL; }
    return ctx;
}

int ab_sha256_update(void *ctx, const void *bytes, size_t count) { return api.update(ctx, bytes, count) == 1 ? 0 : -1; }

int ab_sha256_final(void *ctx, unsigned char out[32]) {
    unsigned int n = 0;
    int ok = api.final(ctx, out, &n) == 1 && n == 32;
    api.ctx_free(ctx);
    return ok ? 0 : -1;
}

void ab_sha256_free(void *ctx) { if (ctx) api.ctx_free(ctx); }
