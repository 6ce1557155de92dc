// How a shim's entry point reports failure to Rust: C++ exceptions must
// not cross into Rust, so `guarded` runs the body, copies an exception's
// message into the caller's buffer (NUL-terminated, cut to fit) and
// returns non-zero; 0 means success.
#pragma once

#include <c10/util/Exception.h>

#include <cstring>
#include <exception>

namespace cairn {
inline int fail(const char* what, char* err, int err_len) {
  if (err_len > 0) {
    std::strncpy(err, what, err_len - 1);
    err[err_len - 1] = '\0';
  }
  return 1;
}

template <class Body>
int guarded(Body&& body, char* err, int err_len) {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    return fail(e.what_without_backtrace(), err, err_len);
  } catch (const std::exception& e) {
    return fail(e.what(), err, err_len);
  }
}
}  // namespace cairn
