// Files compiled into chorusd (api/http/embed-files.py writes their bytes
// into a generated source at build time), served by the HTTP front end.
#pragma once

#include <string_view>

namespace chorus::api::http {

struct EmbeddedFile {
  std::string_view path;         // the URL path it is served at
  std::string_view contentType;  // "text/html; charset=utf-8", ...
  std::string_view bytes;
};

// The cluster dashboard (api/http/dashboard/): "/dashboard/index.html",
// "/dashboard/app.js", "/dashboard/style.css"; nullptr for any other path.
// Static data: any thread.
const EmbeddedFile* dashboardFile(std::string_view path);

}  // namespace chorus::api::http
