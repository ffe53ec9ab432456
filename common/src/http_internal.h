// Pieces shared by http_server.cc and http_client.cc; not part of the public API.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <type_traits>

#include <boost/asio/io_context.hpp>
#include <boost/system/error_code.hpp>

#include "hyb/common/status.h"

namespace hyb::http::internal {

struct OpResult {
  boost::system::error_code ec;
  size_t bytes = 0;  // bytes transferred, where the operation reports them
};

// Starts one asynchronous operation with `start(handler)` and runs `ioc` on the calling thread
// until every operation on it has completed: the operation itself, the beast::tcp_stream timer
// that bounds it, and any handler another thread posted meanwhile (Server::Shutdown's close).
// `ioc` must be driven by no other thread.
template <class Start>
OpResult Await(boost::asio::io_context& ioc, Start&& start) {
  OpResult result;
  start([&result](const boost::system::error_code& ec, auto&&... more) {
    result.ec = ec;
    if constexpr (sizeof...(more) == 1) {
      if constexpr ((std::is_convertible_v<std::decay_t<decltype(more)>, size_t> && ...)) {
        result.bytes = static_cast<size_t>((more, ...));
      }
    }
  });
  ioc.restart();
  ioc.run();
  return result;
}

// Decodes %XX escapes (and '+' as a space when `plus_is_space`). False on a malformed escape.
bool PercentDecode(std::string_view in, bool plus_is_space, std::string* out);

// Splits an origin-form request target ("/a%20b?x=1&y") into its decoded path and query
// parameters (a key without '=' maps to ""; a repeated key keeps its last value).
// InvalidArgument naming the target when it does not start with '/' or has a bad escape.
Status ParseTarget(const std::string& target, std::string* path,
                   std::map<std::string, std::string>* query);

}  // namespace hyb::http::internal
