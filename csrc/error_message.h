// Error messages of the extension's checks, built without C++ streams.
//
// TORCH_CHECK(cond, a, b, c) formats its arguments with std::ostringstream. On a build whose process holds a second
// C++ runtime (a CUDA wheel loads libraries globally), the stream's number formatting (locale facets such as
// std::num_put) can bind to another copy of libstdc++ and crash; a check whose message is one ready string never
// touches a stream (c10::str returns it as is). So every check of the extension passes one string: a literal, or
// one built here with vsnprintf from the C library. Checks are also raised outside AT_DISPATCH lambdas and OpenMP
// regions, so an exception never unwinds through either.
#pragma once

#include <cstdarg>
#include <cstdio>
#include <string>

namespace opmask_fast {

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
inline std::string format_message(const char* format, ...) {
  char buf[512];
  va_list args;
  va_start(args, format);
  const int n = std::vsnprintf(buf, sizeof(buf), format, args);
  va_end(args);
  return std::string(buf, n < 0 ? 0 : (n < static_cast<int>(sizeof(buf)) ? n : sizeof(buf) - 1));
}

}  // namespace opmask_fast
