// libcurl is loaded at first use (dlopen), not linked: linking it makes every agentbox command pay
// ~10 ms of dynamic loading for libcurl and its ~25 dependencies, also the ones that never talk to a
// model (exec). The headers come from libcurl4-openssl-dev; the library from libcurl4 at run time.
#include "ab_curl.h"

// CURLOPT_PROTOCOLS is the fallback for a libcurl older than 7.85 (loaded at run time).
#define CURL_DISABLE_DEPRECATION 1
#include <curl/curl.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static struct {
    void *lib;
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_perform)(CURL *);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    const char *(*easy_strerror)(CURLcode);
    void (*easy_cleanup)(CURL *);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
    char *(*version)(void);
    char error[256];
} api;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;

static void load(void) {
    const char *names[] = {"libcurl.so.4", "libcurl-gnutls.so.4", "libcurl.so", NULL};
    for (const char **n = names; *n && !api.lib; n++) api.lib = dlopen(*n, RTLD_NOW | RTLD_LOCAL);
    if (!api.lib) {
        snprintf(api.error, sizeof api.error, "libcurl is not installed (%s); install libcurl4", dlerror());
        return;
    }
#define SYM(field, name) *(void **)(&api.field) = dlsym(api.lib, name); if (!api.field) { snprintf(api.error, sizeof api.error, "libcurl lacks %s", name); api.lib = NULL; return; }
    SYM(global_init, "curl_global_init")
    SYM(easy_init, "curl_easy_init")
    SYM(easy_setopt, "curl_easy_setopt")
    SYM(easy_perform, "curl_easy_perform")
    SYM(easy_getinfo, "curl_easy_getinfo")
    SYM(easy_strerror, "curl_easy_strerror")
    SYM(easy_cleanup, "curl_easy_cleanup")
    SYM(slist_append, "curl_slist_append")
    SYM(slist_free_all, "curl_slist_free_all")
    SYM(version, "curl_version")
#undef SYM
    api.global_init(CURL_GLOBAL_DEFAULT);  // once per process
}

struct ctx { const struct ab_curl_request *req; int aborted; };

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata) {
    struct ctx *c = userdata;
    size_t n = size * nmemb;
    if (c->req->on_data && !c->req->on_data(ptr, n, c->req->userdata)) { c->aborted = 1; return 0; }
    return n;
}

static size_t header_cb(char *ptr, size_t size, size_t nmemb, void *userdata) {
    struct ctx *c = userdata;
    size_t n = size * nmemb;
    if (c->req->on_header) c->req->on_header(ptr, n, c->req->userdata);
    return n;
}

static int progress_cb(void *userdata, curl_off_t a, curl_off_t b, curl_off_t c2, curl_off_t d) {
    (void)a; (void)b; (void)c2; (void)d;
    struct ctx *c = userdata;
    if (c->req->should_cancel && c->req->should_cancel(c->req->userdata)) { c->aborted = 1; return 1; }
    return 0;
}

int ab_curl_perform(const struct ab_curl_request *req, long *status, long *os_errno, char *errbuf) {
    pthread_once(&load_once, load);
    *status = 0;
    *os_errno = 0;
    errbuf[0] = 0;
    if (!api.lib) { strncpy(errbuf, api.error, 255); return CURLE_FAILED_INIT; }
    CURL *h = api.easy_init();
    if (!h) { strcpy(errbuf, "curl_easy_init failed"); return CURLE_FAILED_INIT; }
    struct ctx c = {req, 0};
    struct curl_slist *list = NULL;
    for (const char *const *p = req->headers; p && *p; p++) list = api.slist_append(list, *p);
    api.easy_setopt(h, CURLOPT_URL, req->url);
    // A model endpoint speaks HTTP: any other scheme (ftp://, file://) fails at once with
    // CURLE_UNSUPPORTED_PROTOCOL, however libcurl was built.
    if (api.easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK)
        api.easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    api.easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    api.easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    api.easy_setopt(h, CURLOPT_HTTPHEADER, list);
    api.easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);  // HTTP/2 when the server offers it
    api.easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
    api.easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb);
    api.easy_setopt(h, CURLOPT_WRITEDATA, &c);
    api.easy_setopt(h, CURLOPT_HEADERFUNCTION, header_cb);
    api.easy_setopt(h, CURLOPT_HEADERDATA, &c);
    api.easy_setopt(h, CURLOPT_XFERINFOFUNCTION, progress_cb);
    api.easy_setopt(h, CURLOPT_XFERINFODATA, &c);
    api.easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    if (req->ca_bundle) api.easy_setopt(h, CURLOPT_CAINFO, req->ca_bundle);
    if (req->connect_timeout_ms > 0) api.easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms);
    if (req->total_timeout_ms > 0) api.easy_setopt(h, CURLOPT_TIMEOUT_MS, req->total_timeout_ms);
    if (req->idle_timeout_s > 0) {
        api.easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        api.easy_setopt(h, CURLOPT_LOW_SPEED_TIME, req->idle_timeout_s);
    }
    if (req->method && strcmp(req->method, "POST") == 0) {
        api.easy_setopt(h, CURLOPT_POST, 1L);
        api.easy_setopt(h, CURLOPT_POSTFIELDS, req->body);
        api.easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    }
    // Proxies come from the environment (http_proxy, https_proxy, no_proxy): libcurl's default.
    CURLcode rc = api.easy_perform(h);
    api.easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    if (rc != CURLE_OK) api.easy_getinfo(h, CURLINFO_OS_ERRNO, os_errno);
    if (rc != CURLE_OK && errbuf[0] == 0) strncpy(errbuf, api.easy_strerror(rc), 255);
    if (c.aborted && rc == CURLE_OK) rc = CURLE_ABORTED_BY_CALLBACK;
    api.slist_free_all(list);
    api.easy_cleanup(h);
    return (int)rc;
}

int ab_curl_classify(int code) {
    switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
        return AB_CURL_TIMEOUT;
    case CURLE_ABORTED_BY_CALLBACK:
    case CURLE_WRITE_ERROR:
        return AB_CURL_ABORTED;
    case CURLE_PEER_FAILED_VERIFICATION:  // also CURLE_SSL_CACERT, its old name
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
        return AB_CURL_TLS;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return AB_CURL_BAD_URL;
    case CURLE_FAILED_INIT:  // also: libcurl could not be loaded
    case CURLE_NOT_BUILT_IN:
    case CURLE_UNKNOWN_OPTION:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_FUNCTION_NOT_FOUND:
        return AB_CURL_UNUSABLE;
    default:
        return AB_CURL_TRANSIENT;
    }
}

const char *ab_curl_strerror(int code) {
    pthread_once(&load_once, load);
    return api.lib ? api.easy_strerror((CURLcode)code) : "libcurl is not loaded";
}

const char *ab_curl_version(void) {
    pthread_once(&load_once, load);
    return api.lib ? api.version() : api.error;
}
