// libcurl through non-variadic wrappers (Swift cannot call curl_easy_setopt). One global init.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void ab_curl;
/// Called with each piece of the body as it arrives; return 0 to abort the transfer.
typedef int (*ab_curl_data_fn)(const char *data, size_t len, void *userdata);
/// Called once per header line (status line included).
typedef void (*ab_curl_header_fn)(const char *line, size_t len, void *userdata);
/// Called periodically; return nonzero to cancel.
typedef int (*ab_curl_cancel_fn)(void *userdata);

struct ab_curl_request {
    const char *url;
    const char *method;            // "POST" or "GET"
    const char *const *headers;    // "Name: value", NULL-terminated
    const void *body;
    size_t body_len;
    long connect_timeout_ms;
    long total_timeout_ms;         // 0: none
    long idle_timeout_s;           // abort when no byte arrives for this long (0: none)
    ab_curl_data_fn on_data;
    ab_curl_header_fn on_header;
    ab_curl_cancel_fn should_cancel;
    void *userdata;
    const char *ca_bundle;         // PEM file of trusted CAs, or NULL for the system's
};

/// Performs one request (blocking). Returns the CURLcode; *status gets the HTTP status (0 if none);
/// *os_errno the errno of the last failed connect (0 if none: ECONNREFUSED says "connection refused"
/// where curl only says "couldn't connect"); errbuf (at least 256 bytes) gets curl's message.
int ab_curl_perform(const struct ab_curl_request *req, long *status, long *os_errno, char *errbuf);

/// What a failed transfer means for the caller (ab_curl_classify).
enum ab_curl_failure {
    AB_CURL_TRANSIENT = 0,  // connection refused, reset, DNS, ...: worth another attempt
    AB_CURL_TIMEOUT,        // the connect, idle or total timeout fired: worth another attempt
    AB_CURL_ABORTED,        // a callback stopped the transfer (cancelled, or the body was refused)
    AB_CURL_TLS,            // the certificate or the TLS setup failed: cannot heal by retrying
    AB_CURL_BAD_URL,        // malformed URL or a scheme libcurl does not speak: cannot heal
    AB_CURL_UNUSABLE,       // libcurl missing or lacking a feature: cannot heal
};
/// Classifies a CURLcode other than CURLE_OK.
int ab_curl_classify(int code);
/// curl's short text for a CURLcode ("Couldn't resolve host name"), or a fixed one when libcurl is missing.
const char *ab_curl_strerror(int code);
const char *ab_curl_version(void);

/// SHA-256 from libcrypto, loaded at first use (ab_sha256.c). NULL when it can be used, else why not.
const char *ab_sha256_unavailable(void);
/// A new digest context (NULL when libcrypto is missing); ab_sha256_final frees it.
void *ab_sha256_new(void);
int ab_sha256_update(void *ctx, const void *bytes, size_t count);
int ab_sha256_final(void *ctx, unsigned char out[32]);
void ab_sha256_free(void *ctx);

#ifdef __cplusplus
}
#endif
