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
/// errbuf (at least 256 bytes) gets curl's message.
int ab_curl_perform(const struct ab_curl_request *req, long *status, char *errbuf);
/// Whether a CURLcode means the idle/total timeout fired, the callback aborted, or a connection problem.
int ab_curl_is_timeout(int code);
int ab_curl_is_aborted(int code);
/// Whether a CURLcode is a TLS/certificate failure (not worth retrying).
int ab_curl_is_tls(int code);
const char *ab_curl_version(void);

#ifdef __cplusplus
}
#endif
