#include "ab_curl.h"

#include <curl/curl.h>
#include <pthread.h>
#include <string.h>

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static void global_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

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

int ab_curl_perform(const struct ab_curl_request *req, long *status, char *errbuf) {
    pthread_once(&init_once, global_init);
    *status = 0;
    errbuf[0] = 0;
    CURL *h = curl_easy_init();
    if (!h) { strcpy(errbuf, "curl_easy_init failed"); return CURLE_FAILED_INIT; }
    struct ctx c = {req, 0};
    struct curl_slist *list = NULL;
    for (const char *const *p = req->headers; p && *p; p++) list = curl_slist_append(list, *p);
    curl_easy_setopt(h, CURLOPT_URL, req->url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);  // HTTP/2 when the server offers it
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &c);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &c);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, progress_cb);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &c);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    if (req->ca_bundle) curl_easy_setopt(h, CURLOPT_CAINFO, req->ca_bundle);
    if (req->connect_timeout_ms > 0) curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms);
    if (req->total_timeout_ms > 0) curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, req->total_timeout_ms);
    if (req->idle_timeout_s > 0) {
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, req->idle_timeout_s);
    }
    if (req->method && strcmp(req->method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    }
    // Proxies come from the environment (http_proxy, https_proxy, no_proxy): libcurl's default.
    CURLcode rc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    if (rc != CURLE_OK && errbuf[0] == 0) strncpy(errbuf, curl_easy_strerror(rc), 255);
    if (c.aborted && rc == CURLE_OK) rc = CURLE_ABORTED_BY_CALLBACK;
    curl_slist_free_all(list);
    curl_easy_cleanup(h);
    return (int)rc;
}

int ab_curl_is_timeout(int code) { return code == CURLE_OPERATION_TIMEDOUT; }
int ab_curl_is_aborted(int code) { return code == CURLE_ABORTED_BY_CALLBACK || code == CURLE_WRITE_ERROR; }
const char *ab_curl_version(void) { return curl_version(); }

int ab_curl_is_tls(int code) {
    return code == CURLE_PEER_FAILED_VERIFICATION || code == CURLE_SSL_CONNECT_ERROR || code == CURLE_SSL_CACERT_BADFILE ||
           code == CURLE_SSL_CERTPROBLEM || code == CURLE_SSL_CIPHER || code == CURLE_SSL_ISSUER_ERROR;
}
